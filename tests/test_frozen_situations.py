"""The frozen tree in the caller's situation (SPEC "Two routes, one decider": any call means any
caller's situation): each case runs the real frozen tree with its C route on and off
(IPTABLES_SHIM_FAST_ROUTE), and the two must agree with each other and with what a direct call
of the real binary would see, or refuse in one `iptables-shim:` line.

- the tree at `/` (/iptables-shim beside a root-owned /iptables-shim.conf), in a chroot;
- an address-space limit too small for Python (`ulimit -v 8192`): the C route answers, Python
  refuses naming the limit;
- a file-size limit of 0 (`ulimit -f 0`): the shim's own writes (log, cache) fail, the call runs,
  nothing is left behind;
- a caller that ignores SIGPIPE or blocks signals: the real binary sees the same dispositions,
  mask and pending signals as when called directly (a fake binary prints them);
- a set-user-ID or file-capability copy run by nobody refuses (AT_SECURE);
- a binary that cannot be executed (ENOEXEC): one log line for the one call;
- `explain` with a PATH directory whose name is not UTF-8;
- a log file's path too long for the C route: handed over for that reason.

Mark `images` (the frozen build); a few seconds once it is cached.
"""

import os
import shutil
import subprocess

import pytest

import croute
from conftest import NOBODY
from namespaces import NSENTER, Netns
from test_callers import shared_root  # noqa: F401 (a fixture: a 0755 directory under /var/tmp)
from test_fast_route import tree  # noqa: F401 (a fixture: a copy of the run's frozen tree under /var/tmp)
from shim.log import parse_line

pytestmark = [pytest.mark.images,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, chroot, the frozen build")]

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
SIX = ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore")


def write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


def log_lines(path):
    if not os.path.exists(path):
        return []
    lines = open(path).read().splitlines()
    assert all(parse_line(l) for l in lines), lines
    return [parse_line(l) for l in lines]


def both_routes(run):
    """run(route_env) -> comparable result, for the C route on and off."""
    return {route: run({"IPTABLES_SHIM_FAST_ROUTE": route}) for route in ("on", "off")}


# -- the tree at / ----------------------------------------------------------------------------------

# Runs as PID 1 of a new PID namespace in a private mount namespace: the host's /usr read-only,
# /proc and /dev inside the root, then chroot. $1: the root.
ENTER = r"""
set -e
root=$1; shift
/usr/bin/mount --bind -o ro /usr "$root/usr"
/usr/bin/mount -t proc proc "$root/proc"
/usr/bin/mount --bind /dev "$root/dev"
exec /usr/sbin/chroot "$root" "$@"
"""


def root_with_tree_at_slash(tree, root):
    """A root whose / is the frozen tree: /iptables-shim, the six names, its marker and, while the
    tree has one, its lib/ as /lib (with the host's multiarch libraries linked in it); the host's
    /usr for the real binaries and their libraries."""
    for d in ("usr", "proc", "dev", "run", "tmp", "etc"):
        os.makedirs(os.path.join(root, d))
    for name in os.listdir(tree):
        src, dst = os.path.join(tree, name), os.path.join(root, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    os.makedirs(os.path.join(root, "lib"), exist_ok=True)
    arch = os.uname().machine + "-linux-gnu"
    os.symlink("/usr/lib/" + arch, os.path.join(root, "lib", arch))
    for name in ("bin", "sbin", "lib64"):
        os.symlink("usr/" + name, os.path.join(root, name))
    for name in ("passwd", "group", "protocols", "services", "nsswitch.conf"):
        if os.path.exists("/etc/" + name):
            shutil.copy("/etc/" + name, os.path.join(root, "etc", name))


def test_the_tree_at_the_root_reads_its_own_file_in_both_routes(tree, shared_root):
    """/iptables-shim with a root-owned /iptables-shim.conf saying legacy, nft holding a rule: both
    routes run legacy (step 1), the rule lands there, and the log lines are the same. Failed
    before: Python got "" as the tree's directory and skipped the file (nft, step 4)."""
    root = os.path.join(shared_root, "root")
    root_with_tree_at_slash(tree, root)
    write(os.path.join(root, "iptables-shim.conf"), "IPTABLES_SHIM_MODE=legacy\n")

    def run(route_env):
        for name in ("run/shim.log",):
            if os.path.exists(os.path.join(root, name)):
                os.unlink(os.path.join(root, name))
        with Netns.create() as ns:
            ns.ok("iptables-nft -A INPUT -j ACCEPT")
            env = dict({"PATH": SBIN, "IPTABLES_SHIM_LOG": "/run/shim.log"}, **route_env)
            enter = [NSENTER, "--net=" + ns.path, "/usr/bin/unshare", "--mount", "--pid", "--fork",
                     "--propagation", "private", "/bin/sh", "-c", ENTER, "enter", root, "/usr/bin/env", "-i"]
            enter += ["%s=%s" % kv for kv in sorted(env.items())]
            r = subprocess.run(enter + ["/iptables", "-A", "INPUT", "-s", "192.0.2.9", "-j", "DROP"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            explain = subprocess.run(enter + ["/iptables-shim", "explain"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, timeout=60).stdout.decode()
            lines = [{k: v for k, v in l.items() if k != "netns"} for l in log_lines(root + "/run/shim.log")]
            return {"rc": r.returncode, "stderr": r.stderr, "legacy": ns.rules("legacy"), "nft": ns.rules("nft"),
                    "log": lines, "route": [l.split()[1] for l in explain.splitlines() if l.startswith("route:")]}

    got = both_routes(run)
    assert got["on"]["route"] == ["launcher"], got
    assert got["off"]["route"] == ["python"], got
    for route in ("on", "off"):
        assert (got[route]["rc"], got[route]["stderr"]) == (0, b""), got
        assert got[route]["legacy"] == ["-A INPUT -s 192.0.2.9/32 -j DROP"], (route, got)
        assert got[route]["nft"] == ["-A INPUT -j ACCEPT"], (route, got)
        assert [(l["backend"], l["step"]) for l in got[route]["log"]] == [("legacy", 1)], got
    assert got["on"]["log"] == got["off"]["log"]


# -- rlimits ----------------------------------------------------------------------------------------

def test_an_address_space_limit_is_named(tree, netns):
    """ulimit -v 8192: the C route runs a settled call (it needs no more); Python cannot start in
    8 MiB (the executable alone maps most of it) and says so in one line naming the limit, the
    same for a call only Python answers. Never the other backend. Failed before: "Python
    initialisation failed: is tree/lib whole?"."""
    netns.ok("iptables-nft -A INPUT -j ACCEPT")
    env = {"PATH": tree + ":" + SBIN, "IPTABLES_SHIM_MODE": "legacy"}
    limit = ["/usr/bin/prlimit", "--as=%d" % (8192 * 1024)]
    on = netns.run(limit + [tree + "/iptables", "-S"], env=env)
    assert (on.returncode, on.stderr) == (0, b""), on
    assert on.stdout == netns.run(["iptables-legacy", "-S"]).stdout
    for extra in ({"IPTABLES_SHIM_FAST_ROUTE": "off"}, {"IPTABLES_SHIM_MODE": "", "IPTABLES_SHIM_CONTEXT": "container",
                                                        "IPTABLES_SHIM_CACHE": "off"}):
        r = netns.run(limit + [tree + "/iptables", "-S"], env=dict(env, **extra))
        err = r.stderr.decode()
        assert r.returncode == 127 and r.stdout == b"", (extra, r)
        assert err.count("\n") == 1 and err.startswith("iptables-shim: out of memory: "), err
        assert "address-space limit (ulimit -v 8192)" in err and "lib" not in err, err


@pytest.mark.parametrize("kind", ["settled, with a log", "first call of a netns, with a log and the cache"])
def test_a_file_size_limit_of_0_stops_nothing_and_leaves_nothing(tree, shared_root, kind):
    """ulimit -f 0: every write of the shim's own fails (EFBIG; SIGXFSZ would kill), the call runs
    in the backend it would have, and the cache directory holds no temporary file. Failed before:
    both routes died of SIGXFSZ (153) writing the log, or the cache entry (leaving a 0-byte
    .cookie-N.PID.tmp)."""
    def run(route_env):
        tag = route_env["IPTABLES_SHIM_FAST_ROUTE"]
        cache, log = os.path.join(shared_root, "cache-" + tag), os.path.join(shared_root, "log-" + tag)
        env = dict({"PATH": tree + ":" + SBIN, "IPTABLES_SHIM_CACHE_DIR": cache, "IPTABLES_SHIM_LOG": log},
                   **route_env)
        if kind.startswith("settled"):
            env["IPTABLES_SHIM_MODE"] = "legacy"
        else:
            env["IPTABLES_SHIM_CONTEXT"] = "container"
        with Netns.create() as ns:
            ns.ok("iptables-nft -A INPUT -j ACCEPT")
            r = ns.run(["/usr/bin/prlimit", "--fsize=0", tree + "/iptables", "-A", "INPUT", "-s", "192.0.2.5",
                        "-j", "DROP"], env=env)
            return {"rc": r.returncode, "out": r.stdout, "err": r.stderr, "legacy": ns.rules("legacy"),
                    "nft": ns.rules("nft"), "cache": sorted(os.listdir(cache)) if os.path.isdir(cache) else None,
                    "log": open(log, "rb").read() if os.path.exists(log) else None}

    got = both_routes(run)
    assert got["on"] == got["off"], got
    r = got["on"]
    assert (r["rc"], r["out"], r["err"]) == (0, b"", b""), r
    want = "legacy" if kind.startswith("settled") else "nft"
    assert r[want][-1] == "-A INPUT -s 192.0.2.5/32 -j DROP", r
    assert r["cache"] in (None, []), r  # nothing cached, nothing half-written
    assert r["log"] in (None, b""), r


# -- signals ----------------------------------------------------------------------------------------

# The caller: sets the dispositions and mask it is asked for (python3 ignored SIGPIPE and SIGXFSZ
# itself: back to default first), then execs the rest of its argv.
CALLER = r"""
import os, signal, sys
how = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
signal.signal(signal.SIGPIPE, signal.SIG_IGN if "ignore" in how else signal.SIG_DFL)
if "block" in how:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGXFSZ])
os.execv(sys.argv[2], sys.argv[2:])
"""
STATUS = b"#!/bin/sh\nexec /bin/grep -E '^(SigIgn|SigBlk|SigPnd|ShdPnd):' /proc/self/status\n"


@pytest.mark.parametrize("fsize", ["unlimited", "0"])
@pytest.mark.parametrize("how", ["default", "ignore SIGPIPE", "ignore SIGPIPE, block SIGUSR1 and SIGXFSZ"])
def test_the_callers_signals_reach_the_real_binary_as_in_a_direct_call(tree, shared_root, netns, how, fsize):
    """The real binary (a fake printing its SigIgn, SigBlk and pending sets) sees what it sees when
    the caller runs it directly, through both routes, with the shim's own log write failing on a
    file-size limit too (that write's SIGXFSZ ignored or discarded, never left pending). Failed
    before: the frozen tree set SIGPIPE and SIGXFSZ to default before exec."""
    fake = os.path.join(shared_root, "fake")
    os.makedirs(fake)
    write(os.path.join(fake, "iptables-nft"), STATUS, 0o755)
    caller = os.path.join(shared_root, "caller.py")
    write(caller, CALLER)
    limit = ["/usr/bin/prlimit", "--fsize=" + fsize]

    def call(target, route_env):
        env = dict({"PATH": tree + ":" + fake + ":" + SBIN, "IPTABLES_SHIM_MODE": "nft",
                    "IPTABLES_SHIM_LOG": os.path.join(shared_root, "shim.log")}, **route_env)
        r = netns.run(limit + ["/usr/bin/python3", "-I", caller, how, target], env=env)
        assert (r.returncode, r.stderr) == (0, b""), r
        return r.stdout.decode()

    direct = call(os.path.join(fake, "iptables-nft"), {"IPTABLES_SHIM_FAST_ROUTE": "on"})
    assert direct.count("\n") == 4, direct
    for route, seen in both_routes(lambda e: call(tree + "/iptables", e)).items():
        assert seen == direct, (route, seen, direct)


def test_a_set_user_id_or_capability_copy_refuses(tree, shared_root, netns):
    """A copy of the executable set-user-ID root, or with a file capability, run by nobody: one
    line, 127, nothing run (AT_SECURE). Failed before: it ran the caller's PATH as root."""
    copy = os.path.join(shared_root, "tree")
    shutil.copytree(tree, copy, symlinks=True)
    exe = os.path.join(copy, "iptables-shim")
    nobody = ["/usr/bin/setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
    env = {"PATH": copy + ":" + SBIN, "IPTABLES_SHIM_MODE": "nft"}
    plain = netns.run(nobody + [copy + "/iptables", "-S"], env=env)
    assert plain.returncode != 127, plain  # the alias's own refusal: nobody cannot list
    setups = [("set-user-ID", lambda: os.chmod(exe, 0o4755))]
    if shutil.which("setcap"):
        setups.append(("capability", lambda: (os.chmod(exe, 0o755),
                                              subprocess.run(["setcap", "cap_net_admin+ep", exe], check=True))))
    for what, setup in setups:
        setup()
        r = netns.run(nobody + [copy + "/iptables", "-S"], env=env)
        err = r.stderr.decode()
        assert (r.returncode, r.stdout) == (127, b""), (what, r)
        assert err.count("\n") == 1 and err.startswith("iptables-shim: started set-user-ID"), (what, err)


# -- one call, one line -------------------------------------------------------------------------------

def test_a_binary_that_cannot_be_executed_gives_one_log_line(tree, shared_root, netns):
    """ENOEXEC: the C route writes its line, its execv fails, Python decides again and fails the
    same way: one line in the log for the one call, as with the C route off, and one error line.
    Failed before: two identical lines every time."""
    bad = os.path.join(shared_root, "bad")
    os.makedirs(bad)
    write(os.path.join(bad, "iptables-legacy"), b"\x01\x02 not a program\n", 0o755)

    def run(route_env):
        log = os.path.join(shared_root, "log-" + route_env["IPTABLES_SHIM_FAST_ROUTE"])
        env = dict({"PATH": tree + ":" + bad + ":" + SBIN, "IPTABLES_SHIM_MODE": "legacy", "IPTABLES_SHIM_LOG": log},
                   **route_env)
        r = netns.run([tree + "/iptables", "-S"], env=env)
        return {"rc": r.returncode, "err": r.stderr, "log": [(l["binary"], l["step"]) for l in log_lines(log)]}

    got = both_routes(run)
    assert got["on"] == got["off"], got
    assert got["on"]["rc"] == 127 and got["on"]["err"].decode().startswith("iptables-shim: cannot execute "), got
    assert got["on"]["log"] == [(os.path.join(bad, "iptables-legacy"), 1)], got


# -- explain, paths as bytes ------------------------------------------------------------------------

def test_explain_with_a_path_that_is_not_utf8(tree, shared_root, netns):
    """A PATH directory named with bytes that are not UTF-8: explain names the route and prints the
    binary as the file system spells it. Failed before: "damaged or half-replaced
    (UnicodeDecodeError ...)" from the C route's answer."""
    odd = os.path.join(shared_root.encode(), b"caf\xe9")
    os.makedirs(odd)
    os.symlink(b"/usr/sbin/xtables-legacy-multi", os.path.join(odd, b"iptables-legacy"))
    env = {b"PATH": tree.encode() + b":" + odd + b":" + SBIN.encode(), b"IPTABLES_SHIM_MODE": b"legacy"}
    r = netns.run([tree + "/iptables-shim", "explain"], env=env)
    assert (r.returncode, r.stderr) == (0, b""), r
    lines = r.stdout.splitlines()
    assert b"runs:          " + odd + b"/iptables-legacy" in lines, r.stdout
    assert [l.split()[1] for l in lines if l.startswith(b"route:")] == [b"launcher"], r.stdout


def test_a_log_path_too_long_is_handed_over_for_that(shared_root):
    """A log file's path longer than PATH_MAX: the C route hands the call over naming the path, not
    the line (Python then fails to open it and the call goes on)."""
    exe = os.path.join(shared_root, "tree", "iptables-shim")
    os.makedirs(os.path.dirname(exe))
    write(exe, b"\x7fELF" + b"\0" * 70000, 0o755)
    env = {"PATH": SBIN, "IPTABLES_SHIM_MODE": "nft", "IPTABLES_SHIM_LOG": "/" + "l" * 5000,
           "IPTABLES_SHIM_CONFIG": os.path.join(shared_root, "none.conf")}
    r = subprocess.run([croute.probe(), exe, "iptables", "-S"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 3 and r.stderr == b"", r
    assert croute.parse_probe(r.stdout)["handover"].startswith("the log file's path is longer"), r.stdout
