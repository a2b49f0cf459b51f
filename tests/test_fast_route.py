"""The frozen tree's two routes give one answer: every case runs with the launcher's C route on and
off (IPTABLES_SHIM_FAST_ROUTE=off in the tree's own iptables-shim.conf, so the environment is the
same), each in a fresh netns seeded alike, under strace, and the two runs must agree on the binary
executed, its argv and envp, the caller's exit status, stdout and stderr, what the kernel holds
afterwards (read back with the real *-save binaries), the cache directory afterwards and the log
line. The route that answered is read from strace: Python started in the shim's process
(PYTHON_STARTED), which the C route never does; each case says which route must answer it with the
C route on.

test_the_fast_route_makes_few_system_calls: a cache hit and a host-context call start no Python
and make a few dozen system calls before the real binary starts.
"""

import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import croute
from conftest import NOBODY
from test_callers import shared_root  # noqa: F401 (a fixture: a 0755 directory under /var/tmp)
from namespaces import NSENTER, SYSTEM_PATH, Netns
from shim.log import parse_line

pytestmark = [pytest.mark.images,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, the frozen build")]

SETPRIV_NOBODY = ["/usr/bin/setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
CAPS_ONLY = SETPRIV_NOBODY + ["--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"]
NEW_PID_NS = ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc"]  # a container's context, no engine
RESTORE_INPUT = b"*filter\n-A INPUT -s 192.0.2.7/32 -j DROP\n-A OUTPUT -d 192.0.2.8/32 -j REJECT\nCOMMIT\n"
MANY_RULES = "".join("-A INPUT -s 198.51.%d.%d/32 -j DROP\n" % (i // 250, i % 250) for i in range(3000))
# Python's start in the shim's process, as strace shows it: Py_InitializeFromConfig makes sys.stdin,
# stdout and stderr and first checks each descriptor with fcntl(fd, F_GETFD) (Python/pylifecycle.c,
# is_valid_fd), unconditionally, whatever the frozen modules, the hash seed or the allocator. The C
# route calls no fcntl at all: it hands the caller's descriptors to the real binary untouched.
# (Nothing is read from a file for an import any more: the modules are inside the executable.)
PYTHON_STARTED = re.compile(r"^(\d+ +)?fcntl\(2, F_GETFD\)")


class Case(object):
    """One call: the seed of its netns, who calls and how, and the route that must answer it."""

    __slots__ = ("id", "seed", "argv", "env", "wrap", "stdin", "prime", "route", "tree_conf", "uid", "shell")

    def __init__(self, id, argv, route, seed="", env=None, wrap=(), stdin=None, prime=True, tree_conf="",
                 uid=0, shell=None):
        self.id, self.argv, self.route, self.seed = id, argv, route, seed
        self.env, self.wrap, self.stdin, self.prime = env or {}, list(wrap), stdin, prime
        self.tree_conf, self.uid, self.shell = tree_conf, uid, shell


CASES = [
    Case("container, kubelet's hint cached (step 3)", ["iptables", "-S"], "launcher",
         seed="iptables-nft -t mangle -N KUBE-IPTABLES-HINT", wrap=NEW_PID_NS),
    Case("container, legacy rules cached (step 5): a rule lands in legacy", ["iptables", "-A", "INPUT", "-s",
         "192.0.2.9", "-j", "DROP"], "launcher", seed="iptables-legacy -A INPUT -j ACCEPT", wrap=NEW_PID_NS),
    Case("container, nft rules cached (step 4): restore from stdin", ["iptables-restore", "--noflush"], "launcher",
         seed="iptables-nft -A INPUT -j ACCEPT", stdin=RESTORE_INPUT, wrap=NEW_PID_NS),
    Case("container, ip6tables-save with the log file", ["ip6tables-save"], "launcher",
         seed="ip6tables-nft -A INPUT -j ACCEPT", env={"IPTABLES_SHIM_LOG": "{log}"}, wrap=NEW_PID_NS),
    Case("host context, detected (step 2)", ["iptables", "-S"], "launcher", env={"IPTABLES_SHIM_LOG": "{log}"}),
    Case("host context from the configuration file", ["iptables-save"], "launcher",
         seed="iptables-legacy -A INPUT -j ACCEPT",
         env={"IPTABLES_SHIM_CONFIG": "CONF:IPTABLES_SHIM_CONTEXT=host\nIPTABLES_SHIM_LOG={log}\n"}, wrap=NEW_PID_NS),
    Case("no CAP_NET_ADMIN (step 0): the alias's own error", ["iptables", "-S"], "launcher",
         wrap=NEW_PID_NS + SETPRIV_NOBODY, uid=NOBODY, env={"IPTABLES_SHIM_LOG": "{log}"}),
    # Python cannot decide for this caller here (/proc/net/ip_tables_names is 0440): the entry is
    # one an earlier call of the same user wrote (shim.cache.format_entry's bytes).
    Case("CAP_NET_ADMIN only, kubelet's hint cached", ["iptables", "-S"], "launcher",
         seed="iptables-nft -t mangle -N KUBE-IPTABLES-HINT", wrap=NEW_PID_NS + CAPS_ONLY, uid=NOBODY,
         prime="nft 3 kubelet's hint chain is in nft only\n"),
    Case("root of a user namespace, host context (step 2)", ["iptables", "-S"], "launcher",
         wrap=["/usr/bin/unshare", "--user", "--map-root-user"]),
    Case("override in the environment (step 1)", ["iptables", "-A", "INPUT", "-j", "ACCEPT"], "launcher",
         seed="iptables-nft -A INPUT -j ACCEPT", env={"IPTABLES_SHIM_MODE": "legacy"}, wrap=NEW_PID_NS),
    Case("override in the tree's configuration file", ["ip6tables", "-S"], "launcher",
         tree_conf="IPTABLES_SHIM_MODE=nft\nIPTABLES_SHIM_LOG={log}\n", wrap=NEW_PID_NS),
    Case("a script alias: the re-entry mark", ["iptables", "-S"], "launcher",
         env={"PATH": "SCRIPTS", "IPTABLES_SHIM_CONTEXT": "host"}),
    Case("the caller ignores SIGPIPE: iptables-save | head sees it ignored, as a direct call", ["iptables-save"],
         "launcher", seed="iptables-nft-restore --noflush <<'EOF'\n*filter\n%sCOMMIT\nEOF" % MANY_RULES,
         wrap=NEW_PID_NS, shell="trap '' PIPE; \"$@\" | head -c 10 >/dev/null; echo \"status ${PIPESTATUS[0]}\""),
    # Python's: the first call of a netns, an emptied environment, a debug line, a new decision.
    Case("first call in a netns: no entry yet", ["iptables", "-S"], "python", prime=False, wrap=NEW_PID_NS,
         env={"IPTABLES_SHIM_LOG": "{log}"}),
    Case("an emptied environment: no PATH", ["iptables", "-S"], "python", env={"PATH": None}, wrap=NEW_PID_NS),
    Case("IPTABLES_SHIM_DEBUG=1", ["iptables", "-S"], "python", seed="iptables-nft -A INPUT -j ACCEPT",
         env={"IPTABLES_SHIM_DEBUG": "1"}, wrap=NEW_PID_NS),
    Case("an entry of another owner", ["iptables", "-S"], "python", seed="iptables-nft -A INPUT -j ACCEPT",
         wrap=NEW_PID_NS + CAPS_ONLY, uid=NOBODY),
]


@pytest.fixture(scope="module")
def tree():
    """A copy of the run's frozen tree whose iptables-shim.conf each run may write, where every
    caller can read it."""
    from test_frozen_roots import workspace

    _, built = workspace()
    top = tempfile.mkdtemp(prefix="fast-route-", dir="/var/tmp")
    os.chmod(top, 0o755)
    copy = os.path.join(top, "iptables-shim")
    shutil.copytree(built, copy, symlinks=True)
    yield copy
    shutil.rmtree(top, ignore_errors=True)


def write_root_file(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def run_once(tree, case, route, work):
    """One run of the case with the C route `route` in a netns of its own: "on", "off", or
    "sanitised": the C route alone, built with AddressSanitizer and UBSan against glibc (the probe
    of tests/croute.py, `--exec`: it settles the call as the tree's executable and execs it as the
    launcher does), in place of the tree's executable."""
    os.makedirs(work)
    os.chmod(work, 0o755)
    conf = os.path.join(tree, "iptables-shim.conf")
    conf_text = case.tree_conf.replace("{log}", work + "/shim.log")
    scripts = os.path.join(work, "scripts")
    os.makedirs(scripts)
    write_root_file(os.path.join(scripts, "iptables-nft-wrapper"), "#!/bin/sh\nexec /usr/sbin/iptables-nft \"$@\"\n",
                    0o755)
    os.symlink("iptables-nft-wrapper", os.path.join(scripts, "iptables"))
    cache = os.path.join(work, "cache")
    env = {"PATH": tree + ":" + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache, "LC_ALL": "C"}
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        elif value.startswith("CONF:"):
            write_root_file(os.path.join(work, "shim.conf"), value[5:].replace("{log}", work + "/shim.log"))
            env[name] = os.path.join(work, "shim.conf")
        else:
            env[name] = value.replace("{log}", work + "/shim.log").replace("SCRIPTS", tree + ":" + scripts)
    with Netns.create() as ns:
        if case.seed:
            ns.ok(case.seed)
        os.mkdir(cache, 0o700)
        os.chown(cache, case.uid, case.uid)
        command = [os.path.join(tree, case.argv[0])] + case.argv[1:]
        if route == "sanitised":
            command = [croute.probe(), os.path.join(tree, "iptables-shim"), "--exec"] + case.argv
        shim_path = command[0]
        if case.shell:
            command = ["/bin/bash", "-c", case.shell, "bash"] + command
        full = [NSENTER, "--net=" + ns.path] + case.wrap + command
        if isinstance(case.prime, str):  # the entry as given, the caller's own
            entry = os.path.join(cache, ns.cache_key())
            with open(entry, "w") as f:
                f.write(case.prime)
            os.chmod(entry, 0o600)
            os.chown(entry, case.uid, case.uid)
        elif case.prime:  # Python decides first (and writes the entry), with the C route off
            write_root_file(conf, conf_text + "IPTABLES_SHIM_FAST_ROUTE=off\n")
            prime = [NSENTER, "--net=" + ns.path] + case.wrap + [os.path.join(tree, "iptables"), "-S"]
            subprocess.run(prime, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            if case.id == "an entry of another owner":
                for name in os.listdir(cache):
                    os.chown(os.path.join(cache, name), 0, 0)
            if os.path.exists(work + "/shim.log"):
                os.unlink(work + "/shim.log")
        write_root_file(conf, conf_text + ("IPTABLES_SHIM_FAST_ROUTE=off\n" if route == "off" else ""))
        trace = os.path.join(work, "strace")
        r = subprocess.run(["/usr/bin/strace", "-ff", "-qq", "-v", "-s", "65536", "-e", "trace=execve,open,openat,fcntl",
                            "-e", "signal=none", "-o", trace] + full, env=env, input=case.stdin,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        kernel = {b: ns.ok("iptables-%s-save; ip6tables-%s-save" % (b, b)) if b == "nft" or ns.legacy_tables()
                  else "" for b in ("nft", "legacy")}
        key = ns.cache_key()
        # What explain says of the route, for the failure message.
        explain = subprocess.run([NSENTER, "--net=" + ns.path] + case.wrap + [os.path.join(tree, "iptables-shim"),
                                 "explain", "--family", case.argv[0].split("-")[0]], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=120).stdout.decode("utf-8", "replace")
    # The runs differ only by their work directory and their netns's key (and the probe's path, where
    # bash's `_` names the command it ran): named alike.
    pairs = [(work, "WORK"), (key, "KEY"), (shim_path, os.path.join(tree, case.argv[0]))]

    def same(text):
        for old, new in pairs:
            text = text.replace(old.encode(), new.encode()) if isinstance(text, bytes) else text.replace(old, new)
        return text

    return {
        "rc": r.returncode, "stdout": untimed(same(r.stdout)), "stderr": same(r.stderr),
        "execs": [same(e) for e in read_trace(trace, shim_path)["execs"]],
        "route": read_trace(trace, shim_path)["route"],
        "kernel": {b: normal_save(t) for b, t in kernel.items()},
        "cache": {same(name): same(open(os.path.join(cache, name), "rb").read()) for name in os.listdir(cache)},
        "explain": [l for l in explain.splitlines() if l.startswith(("route:", "iptables-shim:"))],
        "log": [{k: same(v) if isinstance(v, str) else v for k, v in f.items()} for f in read_log(work + "/shim.log")],
    }


def read_trace(path, shim_path):
    """{"execs": [the execve lines after the shim's own], "route": "python" if Python started in the
    shim's process before its exec (PYTHON_STARTED), else "launcher"}, from strace -ff's file of the
    shim's process."""
    lines = []
    for name in sorted(glob.glob(path + ".*")):
        own = open(name).read().splitlines()
        if any(l.startswith('execve("%s"' % shim_path) for l in own):
            lines = own
    shim = [i for i, l in enumerate(lines) if l.startswith('execve("%s"' % shim_path)]
    assert shim, "the shim was not executed"
    after = lines[shim[0] + 1:]
    execs = [re.sub(r", 0x[0-9a-f]+ /\*.*\*/\)", ")", l) for l in after if l.startswith("execve(")]
    # Up to the shim's next execve (the real binary's, which may call fcntl itself).
    own = after[:next((i for i, l in enumerate(after) if l.startswith("execve(")), len(after))]
    python = any(PYTHON_STARTED.match(l) for l in own)
    return {"execs": execs, "route": "python" if python else "launcher"}


def untimed(output):
    """*-save output without its timestamped comments (`# Generated by ... on DATE`, `# Completed
    on DATE`): two runs a second apart print different dates."""
    return b"\n".join(l for l in output.split(b"\n") if not l.startswith((b"# Generated by ", b"# Completed on ")))


def normal_save(text):
    return "\n".join(l for l in text.splitlines() if not l.startswith("#"))


def read_log(path):
    """The log's lines as shim.log.parse_line reads them (the time and the PID left out)."""
    if not os.path.exists(path):
        return []
    lines = open(path).read().splitlines()
    assert all(parse_line(line) for line in lines), lines
    return [parse_line(line) for line in lines]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_both_routes_give_one_answer(tree, case, shared_root):
    work = shared_root  # every caller reads it
    on = run_once(tree, case, "on", os.path.join(work, "on"))
    off = run_once(tree, case, "off", os.path.join(work, "off"))
    assert off["route"] == "python"
    assert on["route"] == case.route, on["explain"]
    assert off["explain"] == ["route:         python (IPTABLES_SHIM_FAST_ROUTE=off)"] or case.route == "python"
    if case.route == "launcher":  # explain, asked afterwards in the caller's context, names the route
        assert [l.split()[1] for l in on["explain"]] == ["launcher"], on["explain"]
    for field in ("rc", "stdout", "stderr", "execs", "kernel", "cache", "log"):
        assert on[field] == off[field], field
    if case.route == "launcher":
        assert on["execs"], "nothing was executed"
        # The same C route under the sanitizers: the same answer, and no report on stderr.
        sanitised = run_once(tree, case, "sanitised", os.path.join(work, "sanitised"))
        for field in ("rc", "stdout", "stderr", "execs", "kernel", "cache", "log"):
            assert sanitised[field] == off[field], ("sanitised", field)
        if "IPTABLES_SHIM_LOG" in str(case.env) + case.tree_conf and case.uid == 0:
            assert len(on["log"]) == 1


def test_the_fast_route_makes_few_system_calls(tree, netns, tmp_path):
    """A cache hit and a host-context call: Python never started (PYTHON_STARTED), a few dozen system
    calls between the shim's execve and the real binary's."""
    netns.ok("iptables-nft -t mangle -N KUBE-IPTABLES-HINT")
    cache = str(tmp_path / "cache")
    write_root_file(os.path.join(tree, "iptables-shim.conf"), "")
    env = {"PATH": tree + ":" + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache}
    counts = {}
    for label, extra in (("cache hit", {"IPTABLES_SHIM_CONTEXT": "container"}),
                         ("host context", {"IPTABLES_SHIM_CONTEXT": "host"})):
        run_env = dict(env, **extra)
        netns.run([os.path.join(tree, "iptables"), "-S"], env=run_env)  # the entry (cache hit's)
        trace = str(tmp_path / label.replace(" ", "-"))
        r = netns.run(["strace", "-f", "-qq", "-o", trace, os.path.join(tree, "iptables"), "-S"], env=run_env)
        assert r.returncode == 0, r.stderr
        lines = open(trace).read().splitlines()
        execs = [i for i, l in enumerate(lines) if "execve(" in l]
        shim_part = lines[execs[0]:execs[1]]
        assert not [l for l in shim_part if PYTHON_STARTED.match(l)], label
        counts[label] = len(shim_part)
    assert os.listdir(cache)
    assert all(n <= 60 for n in counts.values()), counts


# A stand-in for xtables-nft-multi that needs almost no stack (the real one needs about 60 KiB, more
# than the shim): two system calls, "ran" on stdout and exit 0.
TINY_REAL = r"""
void _start(void)
{
    static const char msg[] = "ran\n";
#if defined(__x86_64__)
    __asm__ volatile("syscall" : : "a"(1), "D"(1), "S"(msg), "d"(sizeof msg - 1) : "rcx", "r11", "memory");
    __asm__ volatile("syscall" : : "a"(60), "D"(0) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x0 __asm__("x0") = 1, x1 __asm__("x1") = (long)msg, x2 __asm__("x2") = sizeof msg - 1;
    register long x8 __asm__("x8") = 64;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x1), "r"(x2), "r"(x8) : "memory");
    x0 = 0, x8 = 93;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8) : "memory");
#endif
    for (;;) {}
}
"""


@pytest.mark.parametrize("route,stack_kib", [("launcher", 32), ("python", 48), ("python", 24)])
def test_a_small_stack_never_kills_the_call(tree, netns, tmp_path, route, stack_kib):
    """A caller's small stack limit (`ulimit -Ss 32`, host context): the call runs its binary, ten
    times out of ten. The C route runs in 24 KiB (the kernel's random offset of the stack top, up
    to 8 KiB, included; measured 20 times a size), Python's route in 40 KiB: a call the C route hands
    over needs Python's. Failed before (the C route's path buffers were nested on the stack, nine
    PATH_MAX deep from the host-context step down to the link walk: SIGSEGV under 56-64 KiB, where
    Python alone ran the call)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "tiny.c").write_text(TINY_REAL)
    subprocess.run(["gcc", "-static", "-nostdlib", "-O2", "-o", str(real / "xtables-nft-multi"),
                    str(tmp_path / "tiny.c")], check=True)
    os.symlink("xtables-nft-multi", str(real / "iptables-nft"))  # Debian's chain: the alias names nft
    os.symlink("iptables-nft", str(real / "iptables"))
    write_root_file(os.path.join(tree, "iptables-shim.conf"), "" if route == "launcher" else
                    "IPTABLES_SHIM_FAST_ROUTE=off\n")
    env = {"PATH": str(real), "IPTABLES_SHIM_CONFIG": str(tmp_path / "none.conf"),
           "IPTABLES_SHIM_CACHE_DIR": str(tmp_path / "cache")}
    for _ in range(10):
        r = netns.run(["/usr/bin/prlimit", "--stack=%d:" % (stack_kib * 1024), os.path.join(tree, "iptables"), "-S"],
                      env=env, timeout=30)
        if route == "python" and stack_kib < 48:  # one line naming the limit, never SIGSEGV
            assert (r.returncode, r.stdout) == (127, b""), (route, stack_kib, r)
            assert r.stderr.startswith(b"iptables-shim: the stack limit (ulimit -s)") and r.stderr.count(b"\n") == 1, r
            continue
        assert (r.returncode, r.stdout, r.stderr) == (0, b"ran\n", b""), (route, stack_kib, r)
