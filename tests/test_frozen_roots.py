"""The frozen tree in foreign roots (SPEC "Images and libcs", "Exec"): it runs the image's own
iptables with the image's own libraries, and the program it runs sees the caller's environment,
exactly.

Roots: bullseye's iptables 1.8.7 and trixie's 1.8.11 (the debootstrap minbase trees of
tests/images, never written: each test root is an overlay over one, its upper layer under
tmp_path). The frozen tree is copied in at /opt/iptables-shim and installed into /usr/local/sbin
by itself, inside the root. Every call runs as a container runtime would start it: a private
mount, PID and network namespace, the overlay, /proc and /dev mounted inside, then chroot; the
machine's own rules are never touched. The caller is `env -i VARS... iptables ...`, so its
environment is exactly VARS.

What the real binary got is read from outside: `strace -ff -e trace=execve,openat -v` on the whole
chrooted call. In the traced process that execs the shim, the caller's execve into
/usr/local/sbin/iptables carries the caller's envp; the last successful execve of that process is
the real binary, with its own envp, and the openat calls after it show which libc it loaded.
Both roots are merged-/usr (/sbin -> usr/sbin): `install --alternatives` is run there too, with
callers of /sbin/iptables and /usr/sbin/iptables by full path.
Mark `images` (the frozen build); about 10 s once the trees and the build are cached.
"""

import atexit
import codecs
import glob
import os
import re
import shutil
import subprocess

import pytest

from images import CONTAINER_PATH, Workspace

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts, namespaces, chroot"),
    pytest.mark.skipif(shutil.which("strace") is None, reason="strace shows what the real binary got"),
]

SUITES = {"bullseye": "1.8.7", "trixie": "1.8.11"}
SHIM_DIR = "/opt/iptables-shim"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6" if os.uname().machine == "x86_64" else "/lib/aarch64-linux-gnu/libc.so.6"

# Runs as PID 1 of the new PID namespace, in the private mount (and network) namespace, on the
# host's root: the overlay, /proc and /dev inside it, then chroot. $1-$4: lower, upper, work, merged.
ENTER = r"""
set -e
lower=$1 upper=$2 work=$3 root=$4; shift 4
/usr/bin/mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
/usr/bin/mount -t proc proc "$root/proc"
/usr/bin/mount --rbind /dev "$root/dev"
exec /usr/sbin/chroot "$root" "$@"
"""

# The caller's environment in every call: a few variables of the usual kinds, and awkward values.
CALLER_ENV = {
    "PATH": CONTAINER_PATH,
    "HOME": "/root",
    "LC_ALL": "C",
    "TERM": "dumb",
    "KUBE_NODE_NAME": "node a=b",
    "EMPTY": "",
}
CASES = {
    "plain": {},  # LD_LIBRARY_PATH deliberately unset
    "LD_LIBRARY_PATH": {"LD_LIBRARY_PATH": "/somewhere"},  # the caller's own: passed on unchanged
    "PYTHON": {"PYTHONPATH": "/somewhere/python", "PYTHONHOME": "/somewhere"},  # a Python caller's
}


class Root(object):
    """An overlay root over a cached minbase tree, with the frozen tree in it."""

    __slots__ = ("suite", "lower", "upper", "work", "merged", "base")

    def __init__(self, suite, lower, base):
        self.suite, self.lower, self.base = suite, lower, str(base)
        self.upper, self.work, self.merged = (os.path.join(self.base, d) for d in ("upper", "work", "merged"))
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d)

    def run(self, argv, env, input=None, trace=None, timeout=60):
        """argv in the root with exactly env (through `env -i`); trace: a prefix for strace -ff."""
        cmd = ["/usr/bin/unshare", "--mount", "--pid", "--fork", "--net", "--propagation", "private",
               "/bin/sh", "-c", ENTER, "enter", self.lower, self.upper, self.work, self.merged,
               "/usr/bin/env", "-i"] + ["%s=%s" % kv for kv in sorted(env.items())] + list(argv)
        if trace:
            cmd = ["strace", "-ff", "-qq", "-o", trace, "-e", "trace=execve,openat", "-v", "-s", "65536"] + cmd
        return subprocess.run(cmd, env={"PATH": HOST_PATH}, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)

    def ok(self, script, env=None, **kw):
        r = self.run(["/bin/sh", "-c", script], env or CALLER_ENV, **kw)
        assert r.returncode == 0, (self.suite, script, r.stdout, r.stderr)
        return r.stdout.decode()


_SHARED = {}


def workspace(trees=()):
    """(Workspace, frozen tree) once per test process, for this module and tests/test_frozen_tree.py
    (in CI each Workspace.open() is a fresh cache: one frozen build, not two); `trees` are made in
    it while the build runs. Closed at exit."""
    if "ws" not in _SHARED:
        ws = Workspace.open()
        atexit.register(ws.close)
        _SHARED["ws"] = ws
    ws = _SHARED["ws"]
    runs = [ws.start_tree(s) for s in trees]
    try:
        if "tree" not in _SHARED:
            _SHARED["tree"] = os.path.join(ws.frozen()[0], "iptables-shim")
    finally:
        for run in runs:
            ws.finish_tree(run)
    return ws, _SHARED["tree"]


def root_with_tree(suite, base):
    """A new overlay root of `suite` with the frozen tree copied in at /opt/iptables-shim."""
    ws, tree = workspace(SUITES)
    root = Root(suite, ws.tree_path(suite), base)
    shutil.copytree(tree, os.path.join(root.upper, SHIM_DIR.lstrip("/")), symlinks=True)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for suite in SUITES:
        root = root_with_tree(suite, tmp_path_factory.mktemp(suite))
        installed = root.ok(SHIM_DIR + "/iptables-shim install /usr/local/sbin")
        assert [l.rpartition(": ")[2] for l in installed.splitlines()] == ["link created"] * 7, installed
        out[suite] = root
    return out


# -- strace's record --------------------------------------------------------------------------------

STRING = r'"((?:[^"\\]|\\.)*)"'
EXECVE = re.compile(r'^execve\(%s, \[(.*?)\], \[(.*)\]\) = (-?\d+)' % STRING)
OPENAT = re.compile(r'^openat\([^,]+, %s, [^)]*\) = (-?\d+)' % STRING)


def unquote(s):
    """strace's C escapes (\\n, \\", \\ooo, \\xNN) back to the bytes."""
    return codecs.escape_decode(s.encode("latin-1"))[0]


def strings(listing):
    return [unquote(m) for m in re.findall(STRING, listing)]


class Exec(object):
    __slots__ = ("path", "argv", "envp", "ok", "opened")

    def __init__(self, path, argv, envp, ok):
        self.path, self.argv, self.envp, self.ok = path, argv, envp, ok
        self.opened = []  # [(path, fd)] of the openat calls after it, in that process


def execs_of(trace_prefix, caller_path):
    """[Exec] of the traced process that execve'd caller_path, in order."""
    for name in sorted(glob.glob(trace_prefix + ".*")):
        execs = []
        with open(name, encoding="latin-1") as f:
            for line in f:
                m = EXECVE.match(line)
                if m:
                    execs.append(Exec(unquote(m.group(1)), strings(m.group(2)), strings(m.group(3)),
                                      m.group(4) == "0"))
                    continue
                m = OPENAT.match(line)
                if m and execs:
                    execs[-1].opened.append((unquote(m.group(1)), int(m.group(2))))
        if any(e.path == caller_path.encode() and e.ok for e in execs):
            return execs
    raise AssertionError("no traced process executed %s" % caller_path)


def env_dict(envp):
    return dict(e.partition(b"=")[::2] for e in envp)


# -- the tests ------------------------------------------------------------------------------------

UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def check_hand_over(root, trace, env, prefix, want_real):
    """Run `iptables -V` in root as env + prefix; the real binary's Exec, after checking its output,
    argv, environment and libraries."""
    r = root.run(prefix + ["iptables", "-V"], env, trace=trace)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert (r.returncode, out, err) == (0, "iptables v%s (nf_tables)\n" % SUITES[root.suite], "")
    execs = execs_of(trace, "/usr/local/sbin/iptables")
    caller = next(e for e in execs if e.path == b"/usr/local/sbin/iptables")
    real = [e for e in execs if e.ok][-1]
    # The caller is `env -i ...`: its envp is what the test gave, nothing added on the way.
    assert sorted(caller.envp) == sorted(("%s=%s" % kv).encode() for kv in env.items())
    assert (real.path, real.argv) == (want_real.encode(), [os.path.basename(want_real).encode(), b"-V"]), \
        [(e.path, e.ok) for e in execs]
    added = sorted(set(real.envp) - set(caller.envp))
    lost = sorted(set(caller.envp) - set(real.envp))
    tree_vars = [k for k in env_dict(real.envp) if k.startswith((b"_MEI", b"_PYI_", b"PYTHON"))
                 and k.decode() not in env]
    assert (added, lost, tree_vars) == ([], [], []), "the real binary's environment differs from the caller's"
    assert sorted(real.envp) == sorted(caller.envp)
    if "LD_LIBRARY_PATH" not in env:
        assert b"LD_LIBRARY_PATH" not in env_dict(real.envp)
    # Its libraries: the root's own libc (inside the chroot: the root's file), nothing of the tree.
    libs = [p for p, fd in real.opened if fd >= 0 and b".so" in p]
    assert LIBC.encode() in libs, libs
    assert not [p for p in libs if p.startswith(SHIM_DIR.encode())], libs
    return real


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_real_binary_runs_with_the_roots_libraries_and_the_callers_environment(roots, tmp_path, suite, case):
    check_hand_over(roots[suite], str(tmp_path / "strace"), dict(CALLER_ENV, **CASES[case]), [],
                    "/usr/sbin/iptables-nft")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_unprivileged_caller_gets_the_alias_with_its_own_environment(roots, tmp_path, suite):
    """No CAP_NET_ADMIN: the shim runs the default alias, as a direct call would (SPEC "The policy")."""
    check_hand_over(roots[suite], str(tmp_path / "strace"), CALLER_ENV, UNPRIVILEGED, "/usr/sbin/iptables")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_save_piped_into_restore_passes_stdin_through(roots, suite):
    """`iptables-save | ... | iptables-restore` through the shim: the rule comes back changed as the
    text said, read back with the root's own real iptables-nft-save."""
    root = roots[suite]
    out = root.ok("iptables -A INPUT -s 192.0.2.9/32 -j ACCEPT && iptables-save | sed 's/192.0.2.9/192.0.2.10/' "
                  "| iptables-restore && echo '--- real' && iptables-nft-save -t filter")
    lines = out.split("--- real\n")[1].splitlines()
    assert [l for l in lines if l.startswith("-A ")] == ["-A INPUT -s 192.0.2.10/32 -j ACCEPT"], out
    # stdin from a file, not only a pipe: the rules the restore applied are the text it was given.
    r = root.run(["/bin/sh", "-c", "iptables-restore && iptables-nft-save -t filter"], CALLER_ENV,
                 input=b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.11/32 -j DROP\nCOMMIT\n")
    assert r.returncode == 0 and r.stderr == b"", r
    assert [l for l in r.stdout.decode().splitlines() if l.startswith("-A ")] == ["-A INPUT -s 192.0.2.11/32 -j DROP"]


# What update-alternatives keeps, and the directories it writes links in, listed without times
# (it re-creates the links it manages: their times are new even where nothing else is).
QUERY = ("for g in iptables ip6tables; do update-alternatives --query $g; done; "
         "ls -la --time-style=+ /usr/sbin/ /sbin/ /etc/alternatives/")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_alternatives_in_a_merged_root(tmp_path, suite):
    """Debian's roots are merged-/usr (/sbin -> usr/sbin): with `install --alternatives`, a caller
    that runs /sbin/iptables or /usr/sbin/iptables by full path with its own PATH reaches the shim,
    which runs the root's iptables-nft, not itself; uninstall gives back the same alternatives and
    the same listing."""
    root = root_with_tree(suite, tmp_path)
    # Copied up into the overlay's upper layer first: a directory copied up lists as nlink 1.
    root.ok("for d in /usr/sbin /etc/alternatives; do touch $d/.up && rm $d/.up; done")
    before = root.ok(QUERY)
    out = root.ok(SHIM_DIR + "/iptables-shim install --alternatives")
    assert out.splitlines() == ["ip6tables alternative: %s/ip6tables (registered)" % SHIM_DIR,
                                "iptables alternative: %s/iptables (registered)" % SHIM_DIR], out
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IPTABLES_SHIM_DEBUG": "1"}
    for path in ("/sbin/iptables", "/usr/sbin/iptables"):
        r = root.run([path, "-V"], env)
        assert r.stdout.decode() == "iptables v%s (nf_tables)\n" % SUITES[suite], (path, r)
        assert r.stderr.decode().startswith("iptables-shim: iptables -> /usr/sbin/iptables-nft: nft"), (path, r)
    out = root.ok(SHIM_DIR + "/iptables-shim uninstall --alternatives")
    assert out.splitlines() == ["ip6tables alternative: /usr/sbin/ip6tables-nft (restored)",
                                "iptables alternative: /usr/sbin/iptables-nft (restored)"], out
    assert root.ok(QUERY) == before
