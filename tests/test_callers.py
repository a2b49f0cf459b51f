"""One backend per network namespace, whoever calls: the callers a node really has.

Every other test calls the shim as full root, one caller per netns, with the host's full Python.
Here the caller varies — root; a non-root process holding CAP_NET_ADMIN+CAP_NET_RAW (ambient), as
CNI plugins and node agents run; a process with no capability at all (`runuser -u nobody`,
iptables' own `0008-unprivileged_0` test); root of a user namespace that owns the netns (rootless
engines) — and so do the cache (off, private, shared with the other callers) and the context (host
and container in one netns, one cache directory, both orders).

Each netns holds rules in one backend while the caller's default alias runs the other, so that the
naive answer is wrong. Every outcome must be one of:
- *landed*: the rule is in the netns's backend, nothing of it in the other;
- *as the alias*: a caller without the privilege to change anything gets exactly what a direct
  call of its default alias gives (stdout, stderr, exit code);
- *refused*: exit 127, ONE line on stderr starting `iptables-shim:`, nothing written anywhere;
never the other backend. Rules are read back from the kernel as root with the real save binaries.

The callers' PATH is a "layout" directory (symlinks to the host's multi binaries under the names an
image would carry) rather than a chroot, because a user namespace cannot be created from inside a
chroot; IPTABLES_SHIM_CONTEXT=container makes them container callers. Layout directories live
under /var/tmp (mode 0755) since pytest's tmp_path is not readable by uid 65534.

Also here: the log file (IPTABLES_SHIM_LOG: one whole line per call, nothing on the caller's
streams) and the system log (IPTABLES_SHIM_SYSLOG_SOCKET, /dev/log by default: one message per new
decision, with netns, backend, step, reason and the caller's command), and `explain` agreeing with
what a call runs.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest

from conftest import bin_for_other_users
from namespaces import Netns
from rootfs import sbin_dir
from shim_output import SyslogSink, is_shim_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, setpriv, user namespaces")

NOBODY = 65534
# Every caller runs bin/ where uid 65534 can read it (a copy when the checkout sits under /root).
BIN = bin_for_other_users() if os.geteuid() == 0 else ""
OTHER = {"nft": "legacy", "legacy": "nft"}
SHIM = os.path.join(BIN, "iptables-shim")
TOOLS_PATH = "/usr/bin:/bin"  # sh, setpriv, nsenter, ...: no iptables name lives there on this host
ADDR = "198.51.100.7"
MARK = "iptables-shim-callers"
WRITE = ["iptables", "-A", "INPUT", "-s", ADDR, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]
SEED = {  # what the netns already holds, written as root with the real binaries
    "legacy": "iptables-legacy -A FORWARD -s 192.0.2.1 -j ACCEPT",
    "nft": "iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT",
}

CALLERS = {
    "root": [],
    "caps": ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
             "--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"],
    "nobody": ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"],
}
PRIVILEGED = {"root": True, "caps": True, "nobody": False, "userns": True, "userns-nested": True}


# -- where callers find their binaries -------------------------------------------------------------

class Layout(object):
    """A directory standing for an image's sbin: the variant names of both backends, and the
    default names (`iptables`, `iptables-save`, ...) pointing at `alias`'s variant. Also a lock
    directory owned by uid 65534: iptables-legacy takes /run/xtables.lock, root's 0600 file there
    cannot be opened by a non-root caller, so every caller gets XTABLES_LOCKFILE in a place it can use."""

    def __init__(self, root, alias, backends=("nft", "legacy"), default_names=None):
        self.dir = os.path.join(root, "sbin-" + uuid.uuid4().hex[:6])
        os.mkdir(self.dir, 0o755)  # reached by uid 65534 too
        sbin_dir(self.dir, aliases=alias, variants=backends, names=default_names, via_variant=True)
        self.alias = alias
        self.locks = os.path.join(root, "locks")
        if not os.path.isdir(self.locks):
            os.mkdir(self.locks, 0o755)
            os.chown(self.locks, NOBODY, NOBODY)

    def env(self, caller, shim=True, **extra):
        e = {
            "PATH": (BIN + ":" if shim else "") + self.dir + ":" + TOOLS_PATH,
            "LC_ALL": "C",
            "XTABLES_LOCKFILE": os.path.join(self.locks, caller + ".lock"),
        }
        e.update({k: v for k, v in extra.items() if v is not None})
        return e


@pytest.fixture
def shared_root():
    """A 0755 directory under /var/tmp for layouts, cache and log files that uid 65534 may reach."""
    d = tempfile.mkdtemp(prefix="shim-callers-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def cache_dir_for(root, uid, name="cache"):
    d = os.path.join(root, name + "-" + uuid.uuid4().hex[:6])
    os.mkdir(d, 0o700)
    os.chown(d, uid, uid)
    return d


# -- running callers in a netns --------------------------------------------------------------------

def run_in(ns_path, prefix, cmd, env, userns_pid=None, timeout=60):
    if userns_pid is not None:
        # Root of the user namespace that owns the netns: nsenter joins both and becomes uid 0
        # inside (uid 65534 outside), with every capability over that netns and none elsewhere.
        full = ["nsenter", "-t", str(userns_pid), "--user", "--net"] + list(cmd)
    else:
        full = ["nsenter", "--net=" + ns_path] + list(prefix) + list(cmd)
    return subprocess.run(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)


def marked(ns):
    """{backend: [rule lines carrying MARK]}, read as root; legacy only where its tables exist."""
    out = {}
    for b in ("nft", "legacy"):
        out[b] = [l for l in ns.rules(b) if MARK in l]
    return out


def classify(ns, rules_backend, r, direct=None):
    """The outcome of a write through the shim: 'landed', 'as the alias', 'refused' — or an
    AssertionError naming what went wrong."""
    where = marked(ns)
    other = OTHER[rules_backend]
    assert where[other] == [], ("the rule went into %s, the backend this netns does not use" % other,
                                where, r.returncode, r.stderr)
    if is_shim_error(r):
        assert where[rules_backend] == [], ("refused, yet something was written", where)
        return "refused"
    if direct is not None and (r.returncode, r.stdout, r.stderr) == direct:
        return "as the alias"
    assert r.returncode == 0, ("neither landed, refused, nor what the alias gives", r.returncode,
                               r.stdout, r.stderr, direct)
    assert len(where[rules_backend]) == 1 and ADDR in where[rules_backend][0], where
    return "landed"


def userns_holder(root, rules_backend, nested):
    """A process (uid 65534 outside) in a new user namespace and a netns that namespace owns,
    seeded there with the real binaries; returns (Popen, pid of the netns holder).

    nested=False: `unshare -U -r -n` in one step, as the issue's reproduction does. The netns is
    made before the uid map is written, so its /proc/net files belong to the real root and are
    unreadable to the namespace's own root (EACCES on ip_tables_names: an unknown fact).
    nested=True: the netns is made after the map, so they belong to the namespace's root."""
    lock = os.path.join(root, "locks", "userns-setup.lock")
    script = "export XTABLES_LOCKFILE=%s PATH=/usr/sbin:/usr/bin:/bin; %s && echo ready && exec sleep 600" % (
        lock, SEED[rules_backend])
    base = CALLERS["nobody"] + ["unshare", "--user", "--map-root-user"]
    if nested:
        cmd = base + ["sh", "-c", 'exec unshare --net sh -c "$0"', script]
    else:
        cmd = base + ["--net", "sh", "-c", script]
    p = subprocess.Popen(cmd, env={"PATH": TOOLS_PATH + ":/usr/sbin"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    line = p.stdout.readline()
    if line.strip() != b"ready":
        p.kill()
        err = p.stderr.read().decode("utf-8", "replace")
        p.wait()
        pytest.skip("cannot set up rules in a user namespace's netns here: %s" % err.strip())
    return p, p.pid


def pid_netns(pid):
    """The netns of a running process, read from the host as root."""
    return Netns("pid-%d" % pid, "/proc/%d/ns/net" % pid)


# -- the caller matrix -----------------------------------------------------------------------------

CACHES = ["off", "private", "shared"]


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("caller", ["root", "caps", "nobody", "userns", "userns-nested"])
@pytest.mark.parametrize("rules_backend", ["legacy", "nft"])
def test_caller_matrix_never_writes_into_the_other_backend(netns, shared_root, rules_backend, caller, cache):
    """Rules in one backend, the caller's alias on the other, container context: the caller's
    write lands in the netns's backend, or gives what the alias gives (no privilege), or is refused
    in one line with nothing written. `shared`: the same cache directory was first used by the
    other callers (root, capability-only, unprivileged) reading the same netns."""
    layout = Layout(shared_root, OTHER[rules_backend])
    holder = None
    if caller.startswith("userns"):
        holder, pid = userns_holder(shared_root, rules_backend, nested=caller == "userns-nested")
        ns, prefix, uid, upid = pid_netns(pid), [], NOBODY, pid
    else:
        netns.ok(SEED[rules_backend])
        ns, prefix, uid, upid = netns, CALLERS[caller], (0 if caller == "root" else NOBODY), None
    try:
        extra = {"IPTABLES_SHIM_CONTEXT": "container"}
        if cache == "off":
            extra["IPTABLES_SHIM_CACHE"] = "off"
        else:
            extra["IPTABLES_SHIM_CACHE_DIR"] = cache_dir_for(shared_root, uid)
        if cache == "shared":
            for other in ("root", "caps", "nobody"):
                if other != caller:
                    run_in(ns.path, CALLERS[other], ["iptables", "-S"], layout.env(other, **extra))
        before_other = ns.rules(OTHER[rules_backend])
        direct = None
        if not PRIVILEGED[caller]:
            d = run_in(ns.path, prefix, WRITE, layout.env(caller, shim=False), userns_pid=upid)
            direct = (d.returncode, d.stdout, d.stderr)
            assert d.returncode != 0, "a caller without CAP_NET_ADMIN wrote a rule: the test set-up is wrong"
        r = run_in(ns.path, prefix, WRITE, layout.env(caller, **extra), userns_pid=upid)
        outcome = classify(ns, rules_backend, r, direct)
        print("%s rules, %s caller, cache %s: %s" % (rules_backend, caller, cache, outcome))
        assert ns.rules(OTHER[rules_backend]) == before_other
        if not PRIVILEGED[caller]:
            assert outcome in ("as the alias", "refused"), outcome
        else:
            assert outcome in ("landed", "refused"), outcome
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


# -- "What is wrong today", one test each ----------------------------------------------------------

def test_capability_only_caller_never_splits_the_netns(netns, shared_root):
    """Item 1: uid 65534 with CAP_NET_ADMIN cannot read the 0440 /proc/net/ip_tables_names. That
    EACCES is an unknown fact, never "legacy holds nothing": the write lands in legacy (where the
    rules are) or is refused; it never reaches nft."""
    layout = Layout(shared_root, "nft")
    netns.ok("iptables-legacy -A INPUT -j ACCEPT")
    env = layout.env("caps", IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE="off")
    r = run_in(netns.path, CALLERS["caps"], WRITE, env)
    assert classify(netns, "legacy", r) in ("landed", "refused")
    assert netns.rules("nft") == []


@pytest.mark.parametrize("args", [["--version"], ["-h"], ["-L"], ["-S"], ["-t", "nat", "-S"],
                                  ["-N", "FOO"], WRITE[1:]], ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("alias", ["legacy", "nft"])
def test_unprivileged_caller_gets_exactly_what_the_alias_gives(netns, shared_root, alias, args):
    """Item 2: a caller with no capability cannot split anything, so it must get what a direct
    call of its default alias gives — version, help, that binary's own "Permission denied" and exit
    code — byte for byte, whatever the rules (here: rules in the other backend, container context,
    the cache on)."""
    layout = Layout(shared_root, alias)
    netns.ok(SEED[OTHER[alias]])
    cache = cache_dir_for(shared_root, NOBODY)
    snapshot = netns.snapshot()
    direct = run_in(netns.path, CALLERS["nobody"], ["iptables"] + args, layout.env("nobody", shim=False))
    shim = run_in(netns.path, CALLERS["nobody"], ["iptables"] + args,
                  layout.env("nobody", IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE_DIR=cache))
    assert (shim.returncode, shim.stdout, shim.stderr) == (direct.returncode, direct.stdout, direct.stderr)
    assert netns.snapshot() == snapshot


@pytest.mark.parametrize("first", ["host", "container"])
def test_host_and_container_callers_in_one_netns_do_not_share_an_answer(netns, shared_root, first):
    """Item 3: legacy holds the netns's rules; the host's PATH aliases nft. A host-context caller
    gets the host alias (step 2), a container-context caller the rules' backend (step 5), with one
    cache directory, in either order: an answer resting on the caller's context never serves a
    caller in the other context."""
    host_layout = Layout(shared_root, "nft")
    image_layout = Layout(shared_root, "nft")
    netns.ok("iptables-legacy -A INPUT -j ACCEPT")
    cache = cache_dir_for(shared_root, 0)
    host_env = host_layout.env("root", IPTABLES_SHIM_CONTEXT="host", IPTABLES_SHIM_CACHE_DIR=cache)
    cont_env = image_layout.env("root", IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE_DIR=cache)
    host_direct = run_in(netns.path, [], ["iptables", "-S"], host_layout.env("root", shim=False))

    def host_call():
        r = run_in(netns.path, [], ["iptables", "-S"], host_env)
        assert (r.returncode, r.stdout, r.stderr) == (host_direct.returncode, host_direct.stdout,
                                                      host_direct.stderr), "host caller did not get its alias (nft)"

    def container_call():
        r = run_in(netns.path, [], WRITE, cont_env)
        assert r.returncode == 0, r.stderr
        assert classify(netns, "legacy", r) == "landed"

    for call in ((host_call, container_call) if first == "host" else (container_call, host_call)):
        call()
    host_call()  # and once more each, now that both may have left an entry
    r = run_in(netns.path, [], ["iptables", "-C"] + WRITE[2:], cont_env)
    assert r.returncode == 0, ("the container caller's rule is not where its next call looks", r.stderr)


@pytest.mark.parametrize("args", [["-N", "DOCKER"], ["-t", "nat", "-N", "DOCKER"], ["-S"], ["--version"],
                                  ["-t", "filter", "-L", "NOPE"]], ids=lambda a: " ".join(a))
def test_with_the_log_on_the_callers_streams_are_the_real_binarys(netns, shared_root, args):
    """Item 4: dockerd treats any output of `iptables -N` as failure, and many callers parse
    stderr. With IPTABLES_SHIM_LOG set, a call through the shim gives byte for byte what a direct
    call of the image's alias (legacy, where the rules are) gives in a twin netns — and the log file
    holds one line for it."""
    layout = Layout(shared_root, "legacy")
    with Netns.create() as twin:
        for ns in (netns, twin):
            ns.ok(SEED["legacy"])
        log = os.path.join(shared_root, "shim.log")
        direct = run_in(twin.path, [], ["iptables"] + args, layout.env("root", shim=False))
        shim = run_in(netns.path, [], ["iptables"] + args,
                      layout.env("root", IPTABLES_SHIM_LOG=log, IPTABLES_SHIM_SYSLOG_SOCKET="off",
                                 IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE="off"))
        assert (shim.returncode, shim.stdout, shim.stderr) == (direct.returncode, direct.stdout, direct.stderr)
        assert os.path.exists(log), "IPTABLES_SHIM_LOG=%s: no log file written" % log
        lines = open(log, "rb").read().decode().splitlines()
        assert len(lines) == 1 and "legacy" in lines[0], lines


def test_log_file_gets_one_whole_line_per_call_under_concurrency(netns, shared_root):
    """50 concurrent calls (three names) append to one IPTABLES_SHIM_LOG: exactly 50 lines, each
    whole — one name, one `->`, ending where it should — never two calls' text on one line."""
    layout = Layout(shared_root, "legacy")
    netns.ok(SEED["legacy"])
    log = os.path.join(shared_root, "concurrent.log")
    names = ["iptables", "ip6tables", "iptables-save"]
    env = layout.env("root", IPTABLES_SHIM_LOG=log, IPTABLES_SHIM_SYSLOG_SOCKET="off",
                     IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE="off")
    procs = []
    for i in range(50):
        name = names[i % 3]
        cmd = [name] if name.endswith("-save") else [name, "-S"]
        procs.append(subprocess.Popen(["nsenter", "--net=" + netns.path] + cmd, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert errs == [b""] * 50
    data = open(log, "rb").read()
    assert data.endswith(b"\n")
    lines = data.decode().splitlines()
    assert len(lines) == 50, lines
    counts = {n: 0 for n in names}
    for l in lines:
        assert l.count(" -> ") == 1, l
        assert "legacy" in l, l
        called = [n for n in names if re.search(r"(^|\s)%s -> " % re.escape(n), l)]
        assert len(called) == 1, l
        counts[called[0]] += 1
    assert counts == {"iptables": 17, "ip6tables": 17, "iptables-save": 16}, counts


def netns_cookie(ns):
    """The netns cookie read with getsockopt(SO_NETNS_COOKIE = 71), not with the shim's own code."""
    return str(ns.python("import socket\ns = socket.socket()\n"
                         "print(json.dumps(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), 'little')))"))


def test_new_decisions_go_to_the_system_log_with_netns_backend_step_reason_and_caller(netns, shared_root):
    """Every new decision for a netns (cold path only) is one system log message, tag
    `iptables-shim`, carrying the netns key, backend, step, reason and the caller's command; the
    cache hit that follows sends nothing. Nothing reaches the caller's streams."""
    layout = Layout(shared_root, "nft")
    netns.ok(SEED["legacy"])
    sink = SyslogSink(os.path.join(shared_root, "log.sock"))
    try:
        cache = cache_dir_for(shared_root, 0)
        env = layout.env("root", IPTABLES_SHIM_SYSLOG_SOCKET=sink.path, IPTABLES_SHIM_CONTEXT="container",
                         IPTABLES_SHIM_CACHE_DIR=cache)
        marker = "caller-" + uuid.uuid4().hex[:8]
        # The caller is a shell whose own command line carries the marker, and so does the argv.
        script = 'iptables -A INPUT -m comment --comment %s -j ACCEPT; r=$?; : %s; exit $r' % (marker, marker)
        r = run_in(netns.path, [], ["sh", "-c", script], env)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
        msgs = sink.messages()
        assert len(msgs) == 1, msgs
        m = msgs[0]
        # RFC 3164 framing as syslog(3) sends it: <PRI>[TIMESTAMP HOST ]TAG[PID]: text
        assert re.match(r"<\d+>(\S+ ){0,4}iptables-shim(\[\d+\])?: ", m), m
        assert netns_cookie(netns) in m, ("netns key missing", m)
        assert "legacy" in m and re.search(r"step\D{0,3}5", m), ("backend/step missing", m)
        assert marker in m, ("caller's command missing", m)
        report = json.loads(run_in(netns.path, [], [SHIM, "explain", "--json"], env).stdout.decode())
        assert report["decision"]["reason"] in m, ("reason missing", report["decision"], m)
        r = run_in(netns.path, [], ["iptables", "-S"], env)
        assert r.returncode == 0
        assert sink.messages() == [], "a cache hit is not a new decision"
    finally:
        sink.close()


def test_without_a_system_log_socket_the_call_goes_on_silently(netns, shared_root):
    """No /dev/log (a container, a minimal VM): the message is skipped, the call unaffected."""
    layout = Layout(shared_root, "nft")
    netns.ok(SEED["legacy"])
    env = layout.env("root", IPTABLES_SHIM_SYSLOG_SOCKET=os.path.join(shared_root, "absent.sock"),
                     IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE="off")
    r = run_in(netns.path, [], WRITE, env)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert classify(netns, "legacy", r) == "landed"


def test_explain_and_a_call_agree_on_what_runs(netns, shared_root):
    """Item 7: an image whose only names are `iptables` and `ip6tables` -> `xtables-multi` (the
    pre-1.8 layout; here a copy of the legacy multi binary under that name), with
    IPTABLES_SHIM_MODE=legacy. `explain --family ip6tables` and `ip6tables -V` must name and run the
    same binary: one resolution, not two routes to an answer."""
    d = os.path.join(shared_root, "old-image")
    os.mkdir(d, 0o755)
    shutil.copy2("/usr/sbin/xtables-legacy-multi", os.path.join(d, "xtables-multi"))
    for n in ("iptables", "ip6tables"):
        os.symlink("xtables-multi", os.path.join(d, n))
    env = {"PATH": BIN + ":" + d + ":" + TOOLS_PATH, "LC_ALL": "C", "IPTABLES_SHIM_MODE": "legacy",
           "IPTABLES_SHIM_CACHE": "off"}
    for fam in ("iptables", "ip6tables"):
        rep = run_in(netns.path, [], [SHIM, "explain", "--json", "--family", fam], env)
        assert rep.returncode == 0, rep.stderr
        runs = json.loads(rep.stdout.decode())["runs"]
        call = run_in(netns.path, [], [fam, "-V"], env)
        if str(runs).startswith("error"):
            assert is_shim_error(call), (runs, call.returncode, call.stdout, call.stderr)
        else:
            assert call.returncode == 0, (runs, call.stderr)
            real = run_in(netns.path, [], [fam, "-V"], {"PATH": d + ":" + TOOLS_PATH, "LC_ALL": "C"})
            assert call.stdout == real.stdout and os.path.realpath(runs) == os.path.join(d, "xtables-multi"), (
                runs, call.stdout)
