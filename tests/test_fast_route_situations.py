"""The frozen tree's two routes agree in every situation a caller can put them in.

tests/test_fast_route.py runs fixed cases both ways and tests/test_fast_route_generated.py
generates callers for the C route alone against Python's answer; here hypothesis generates the
caller's whole situation and runs the REAL frozen tree in it both ways: with the launcher's C route
on, and off (IPTABLES_SHIM_FAST_ROUTE=off in the environment: the situation may replace either
settings file), each way in a fresh netns of its own seeded alike, in a world of its own built
alike (a private root under /var/tmp, entered with chroot in a private mount namespace, or the
machine's own root for the host's context), and then the real binary the shim chose once more,
called directly in the same situation. The situations, one test per class (`-k rlimits`, ...):

- rlimits:  a small stack, address space, file size (0) or number of open files;
- signals:  signals ignored and blocked by the caller;
- streams:  stdin, stdout, stderr closed or on /dev/null;
- process:  the umask, a deleted or odd working directory;
- placement: the tree at `/`, at paths with spaces, newlines, `%s`, non-UTF-8 bytes, a symlinked
            or long directory; called through PATH or by its path; `explain` too;
- files:    FIFOs, devices, directories, symlinks, empty and non-executable files in place of
            every file the shim reads: /etc/iptables-shim.conf, the tree's iptables-shim.conf, the
            cache entry and directory, the install record, os-release, the candidate binaries;
- privilege: a set-user-ID or file-capability copy of the tree's executable run by nobody.

Each case fails on: a disagreement between the two ways (the binary executed, its argv and
environment, the exit status, stdout, stderr, the log, the cache directory, the kernel's rules
afterwards), a hang (TIMEOUT), a death by signal before anything ran, a refusal that is not one
`iptables-shim:` line, debris left in the cache directory, more than one log line for a call, or
a real binary that inherits from the shim other dispositions, signal mask, umask, working
directory, descriptors or limits than a direct call gives it; and, whatever the two ways agree
on, a set-user-ID or file-capability copy that runs anything (AT_SECURE: it must refuse) and an
entry behind a symlinked cache directory that decides (never trusted, docs/decision.md#cache).
Equal refusals pass; so does Python refusing in an address space too small for it, saying so,
where the C route (which needs none) ran the call. A class runs every case and then reports every
kind of failure with its first case.

The real binaries are reached through tests/fakes/recorder.c (installed as xtables-*-multi, it
records what it was started with on a pipe and execs the real /usr/sbin binary of its name).
Nothing here touches the machine's own files: worlds live under /var/tmp, fixed paths
(/etc/iptables-shim.conf, /var/lib/iptables-shim/alternatives, /run/iptables-shim) only inside a
private root. IPTABLES_SHIM_SITUATION_EXAMPLES=N: generated cases per class (default 30).
test_the_suite_catches_a_broken_route builds the frozen tree once with a deliberately broken C route
(relinking only) and shows the suite fails on it.
"""

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from conftest import NOBODY
from namespaces import NSENTER, REPO, Netns
from shim.log import parse_line

pytestmark = [pytest.mark.images, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, mount namespaces, chroot")]

HERE = os.path.dirname(os.path.abspath(__file__))
SITUATION = os.path.join(HERE, "fakes", "situation.py")
RECORDER = os.path.join(HERE, "fakes", "recorder.c")
TIMEOUT = 15  # seconds: a call takes well under one; a hang is a failure, bounded
EXAMPLES = int(os.environ.get("IPTABLES_SHIM_SITUATION_EXAMPLES", "30"))
FAMILIES = ("iptables", "ip6tables")
SUFFIXES = ("", "-save", "-restore")
# Each name's call: nothing is written to the kernel (the same command both ways in any case).
ARGS = {"iptables": ["-S"], "iptables-save": [], "ip6tables": ["-S"], "ip6tables-save": [],
        "iptables-restore": ["--test"], "iptables-shim": ["explain"]}
RESTORE_INPUT = b"*filter\n-A INPUT -s 192.0.2.50/32 -j DROP\nCOMMIT\n"
SEEDS = {"nft rule": "iptables-nft -A INPUT -s 192.0.2.1/32 -j DROP",
         "legacy rule": "iptables-legacy -A INPUT -s 192.0.2.2/32 -j DROP",
         "legacy hint": "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT",
         "none": ""}
STACK, ADDRESS_SPACE = "STACK", "AS"


# -- what the tests share: the tree, the recorders --------------------------------------------------

@pytest.fixture(scope="module")
def parts():
    """{"tree": the run's frozen tree (never written: worlds link its files), "bin": a directory
    holding the recorder as xtables-nft-multi and xtables-legacy-multi (two files: the shim tells
    binaries apart by identity)}."""
    from test_frozen_roots import workspace

    _, tree = workspace()
    return make_parts(tree)


_PARTS_DIRS = []


def make_parts(tree):
    top = tempfile.mkdtemp(prefix="situations-parts-", dir="/var/tmp")
    _PARTS_DIRS.append(top)
    os.chmod(top, 0o755)
    built = os.path.join(top, "recorder")
    r = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", RECORDER, "-o", built],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout.decode("utf-8", "replace")
    for backend in ("nft", "legacy"):
        shutil.copy(built, os.path.join(top, "xtables-%s-multi" % backend))
    return {"tree": tree, "bin": top}


@pytest.fixture(scope="module", autouse=True)
def _remove_parts():
    yield
    for d in _PARTS_DIRS:
        shutil.rmtree(d, ignore_errors=True)
    del _PARTS_DIRS[:]


# -- a world: the files of one way of one case ------------------------------------------------------

def b(path):
    return path if isinstance(path, bytes) else os.fsencode(path)


def write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


def link_tree(source, target):
    """A copy of the frozen tree whose files are hard links (cheap; none of them is ever written:
    what a case changes, it replaces). Into an existing directory too (the tree at `/`)."""
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        s, t = os.path.join(source, name), os.path.join(target, b(name))
        if os.path.islink(s):
            os.symlink(os.readlink(s), t)
        elif os.path.isdir(s):
            link_tree(s, t)
        else:
            try:
                os.link(s, t)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                shutil.copy2(s, t)


# The placements of the tree (class "placement"); their directory's name under the world's base.
PLACEMENTS = {"plain": b"plain", "space": b"with space", "newline": b"new\nline", "percent": b"%s%n%d",
              "non-UTF-8": b"\xff\xfe-dir", "symlinked": b"real", "long": None, "root": None}


class World(object):
    """Where one way of one case runs. Paths `inside` are as the shim sees them; `out(p)` is
    where the test writes p (the same in the machine's root, under `root` in a private one)."""

    __slots__ = ("top", "root", "base", "tree", "tree_path_entry", "layout", "cache", "conf", "log", "record",
                 "env", "mounts", "cwd")

    def __init__(self, top, private):
        self.top = b(top)
        self.root = self.top + b"/root" if private else None
        self.base = b"/opt" if private else self.top

    def out(self, inside):
        return self.root + inside if self.root is not None else inside


def build_world(case, top, parts):
    private = case["where"] == "private"
    w = World(top, private)
    placement = case.get("placement", "plain")
    if private:
        root = w.root
        os.makedirs(root)
        for d in (b"usr", b"proc", b"sys", b"dev", b"run", b"var/lib", b"var/log", b"etc/alternatives", b"opt"):
            os.makedirs(root + b"/" + d, exist_ok=True)
        os.makedirs(root + b"/tmp")
        os.chmod(root + b"/tmp", 0o1777)
        links = {b"bin": b"usr/bin", b"sbin": b"usr/sbin", b"lib64": b"usr/lib64"}
        if placement != "root":  # at `/`, the tree's own lib/ is /lib (its libraries' directory is /usr/lib)
            links[b"lib"] = b"usr/lib"
        for name, target in links.items():
            os.symlink(target, root + b"/" + name)
        for name in ("passwd", "group", "protocols", "services"):
            if os.path.exists("/etc/" + name):
                shutil.copy("/etc/" + name, root + b"/etc/" + b(name))
        write(root + b"/etc/os-release", open("/usr/lib/os-release", "rb").read())
        w.mounts = [["/usr", root + b"/usr", True], ["/proc", root + b"/proc", False],
                    ["/sys", root + b"/sys", True], ["/dev", root + b"/dev", False]]
    else:
        w.mounts = []
    # The tree, and the candidate binaries beside it (so that their paths are as odd as the tree's).
    if placement == "root":
        w.tree, w.layout = b"/", b"/opt/sbin"
    else:
        if placement == "long":  # a path of about 3,700 bytes (PATH_MAX is 4096)
            where = w.base + b"/" + b"/".join([b"d" * 200] * 18)
        else:
            where = w.base + b"/" + PLACEMENTS[placement]
        w.tree, w.layout = where + b"/iptables-shim", where + b"/sbin"
    link_tree(parts["tree"], w.out(w.tree))
    if placement == "root" and os.path.isdir(w.out(b"/lib")):
        # The tree's lib/ is /lib: the real binaries' loader and libraries stay reachable there.
        os.symlink(b"/usr/lib/x86_64-linux-gnu", w.out(b"/lib/x86_64-linux-gnu"))
    elif placement == "root":  # a tree without lib/ (its modules frozen into the executable)
        os.symlink(b"usr/lib", w.out(b"/lib"))
    w.tree_path_entry = w.tree
    if placement == "symlinked":
        os.symlink(b"real", w.out(w.base + b"/linked"))
        w.tree_path_entry = w.base + b"/linked/iptables-shim"
    # The candidate binaries: Debian's layout (the alias through /etc/alternatives in a private
    # root), or the names leading to the shim with the install record naming the aliases.
    layout = w.out(w.layout)
    os.makedirs(layout)
    for backend in ("nft", "legacy"):
        os.link(os.path.join(parts["bin"], "xtables-%s-multi" % backend), layout + b"/xtables-%s-multi" % b(backend))
    record = []
    for family in FAMILIES:
        for suffix in SUFFIXES:
            name = b(family + suffix)
            for backend in ("nft", "legacy"):
                os.symlink(b"xtables-%s-multi" % b(backend), layout + b"/%s-%s%s" % (b(family), b(backend), b(suffix)))
            alias = w.layout + b"/%s-%s%s" % (b(family), b(case["alias"]), b(suffix))
            if not private:
                os.symlink(alias, layout + b"/" + name)
                continue
            os.symlink(b"/etc/alternatives/" + name, layout + b"/" + name)
            chosen = w.tree.rstrip(b"/") + b"/" + name if case["layout"] == "alternatives to the shim" else alias
            os.symlink(chosen, w.out(b"/etc/alternatives/" + name))
            record.append(b"alias %s %s" % (name, alias))
    w.record = b"/var/lib/iptables-shim/alternatives" if private else None
    if private and case["layout"] == "alternatives to the shim":
        os.makedirs(w.out(b"/var/lib/iptables-shim"))
        groups = [b"group %s auto %s %s/%s 100" % (b(f), w.layout + b"/" + b(f) + b"-" + b(case["alias"]),
                                                  w.tree.rstrip(b"/"), b(f)) for f in FAMILIES]
        write(w.out(w.record), b"\n".join([b"# test", b"tool /usr/bin/update-alternatives"] + groups + record) + b"\n")
    # Settings, cache, log.
    layout_entry = w.layout.replace(b"/real/", b"/linked/") if placement == "symlinked" else w.layout
    w.env = {b"PATH": w.tree_path_entry + b":" + layout_entry, b"LC_ALL": b"C"}
    if private:
        w.conf, w.cache, w.log = b"/etc/iptables-shim.conf", b"/run/iptables-shim", b"/var/log/iptables-shim.log"
    else:
        w.conf, w.cache, w.log = w.top + b"/iptables-shim.conf", w.top + b"/cache", w.top + b"/shim.log"
        w.env[b"IPTABLES_SHIM_CONFIG"] = w.conf
        w.env[b"IPTABLES_SHIM_CACHE_DIR"] = w.cache
    tree_conf, etc_conf = [], []
    mode = case["mode"] or ""
    if mode.startswith("env "):
        w.env[b"IPTABLES_SHIM_MODE"] = b(mode[4:])
    elif mode.startswith("tree "):
        tree_conf.append(b"IPTABLES_SHIM_MODE=" + b(mode[5:]))
    elif mode.startswith("etc "):
        etc_conf.append(b"IPTABLES_SHIM_MODE=" + b(mode[4:]))
    if case["log"] == "env":
        w.env[b"IPTABLES_SHIM_LOG"] = w.log
    elif case["log"] == "tree":
        tree_conf.append(b"IPTABLES_SHIM_LOG=" + w.log)
    if case["context"]:
        w.env[b"IPTABLES_SHIM_CONTEXT"] = b(case["context"])
    if tree_conf:
        write(w.out(w.tree.rstrip(b"/") + b"/iptables-shim.conf"), b"\n".join(tree_conf) + b"\n")
    if etc_conf:
        write(w.out(w.conf), b"\n".join(etc_conf) + b"\n")
    w.cwd = b"/" if private else w.top
    return w


# -- the files class: what is put in place of a file the shim reads -------------------------------

def target_path(case, w):
    target, name = case["target"], case["name"]
    family, _, suffix = name.partition("-")
    suffix = "-" + suffix if suffix else ""
    backend = case["alias"]
    return {"etc conf": w.conf, "tree conf": w.tree.rstrip(b"/") + b"/iptables-shim.conf",
            "cache entry": None, "cache dir": w.cache, "install record": w.record,
            "os-release": b"/etc/os-release", "alias": w.layout + b"/" + b(name),
            "variant": w.layout + b"/%s-%s%s" % (b(family), b(backend), b(suffix)),
            "multi": w.layout + b"/xtables-%s-multi" % b(backend)}[target]


def tamper(case, w, ns):
    """Put case["kind"] in place of case["target"] (after the priming call)."""
    inside = target_path(case, w)
    if case["target"] == "cache entry":
        inside = w.cache + b"/" + b(ns.cache_key())
    path = w.out(inside)
    kind = case["kind"]
    spare = w.out(w.base) + b"/spare"
    os.makedirs(spare, exist_ok=True)
    binary = case["target"] in ("alias", "variant", "multi")
    if case["target"] == "os-release":  # an nft-only image, so that a legacy netns's refusal reads it
        for name in os.listdir(w.out(w.layout)):
            if b"-legacy" in name:
                os.unlink(w.out(w.layout) + b"/" + name)
    if case["target"] == "cache dir" and kind in ("symlink to a directory", "symlink with a trailing slash"):
        # A root-owned 0700 directory behind a link, holding an entry for this netns that contradicts
        # the netns's rules: docs/decision.md#cache, a directory behind a link is never trusted.
        real = spare + b"/planted"
        os.makedirs(real, mode=0o700)
        write(real + b"/" + b(ns.cache_key()), b"legacy 5 legacy holds rules\n", 0o600)
        if os.path.lexists(path):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        os.symlink(inside_of(w, real), path)
        if kind == "symlink with a trailing slash":
            w.env[b"IPTABLES_SHIM_CACHE_DIR"] = inside + b"/"
        return
    # What stood there, kept (under its own name: a recorder execs the binary of its name) for the
    # kind that links to it.
    keep = None
    if os.path.lexists(path):
        keep = spare + b"/" + os.path.basename(path)
        if os.path.islink(path):  # a link to what it led to, in the world
            target = resolve(w, inside)
            os.unlink(path)
            keep = w.out(target) if target is not None else None
        else:
            shutil.move(path, keep)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "FIFO":
        os.mkfifo(path, 0o644)
    elif kind == "device":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's
    elif kind == "directory":
        os.mkdir(path, 0o755)
    elif kind == "symlink to the file":
        if keep is None:
            keep = spare + b"/" + os.path.basename(path)
            write(keep, b"")
        os.symlink(inside_of(w, keep), path)
    elif kind == "symlink to /dev/null":
        os.symlink(b"/dev/null", path)
    elif kind == "symlink to a FIFO":
        os.mkfifo(spare + b"/fifo", 0o644)
        os.symlink(inside_of(w, spare + b"/fifo"), path)
    elif kind == "dangling symlink":
        os.symlink(b"/nonexistent/target", path)
    elif kind == "empty file":
        write(path, b"", 0o755 if binary else 0o644)
    elif kind == "not executable format":  # ENOEXEC from execve
        write(path, b"\x01\x02garbage\n" * 10, 0o755 if binary else 0o644)
    else:
        raise AssertionError(kind)


def resolve(w, inside):
    """Where the symlink `inside` leads in the world (None: nowhere)."""
    for _ in range(40):
        try:
            target = os.readlink(w.out(inside))
        except OSError:
            return inside if os.path.lexists(w.out(inside)) else None
        inside = target if target.startswith(b"/") else os.path.dirname(inside) + b"/" + target
    return None


def inside_of(w, outside):
    return outside[len(w.root):] if w.root is not None else outside


# -- running one way ----------------------------------------------------------------------------------

class Run(object):
    __slots__ = ("rc", "stdout", "stderr", "records", "timed_out", "log", "cache", "kernel")


def situation_spec(case, w, exe, argv, env, record_fd, bare=False):
    spec = {"mounts": [[b(s).hex(), b(t).hex(), ro] for s, t, ro in w.mounts],
            "root": w.root.hex() if w.root is not None else None, "record_fd": record_fd,
            "cwd": w.cwd.hex(), "exe": exe.hex(), "argv": [b(a).hex() for a in argv],
            "env": {k.hex(): v.hex() for k, v in env.items()}}
    if not bare:
        spec.update(situation_of(case, w))
    return spec


def situation_of(case, w):
    """The caller's own state, as tests/fakes/situation.py sets it."""
    out = {}
    if case.get("rlimits"):
        out["rlimits"] = case["rlimits"]
    out["ignore"], out["block"] = case.get("ignore", []), case.get("block", [])
    for fd, how in enumerate(case.get("streams", ())):
        if how == "closed":
            out.setdefault("close", []).append(fd)
        elif how == "/dev/null":
            out.setdefault("devnull", []).append(fd)
    if case.get("umask") is not None:
        out["umask"] = case["umask"]
    cwd = case.get("cwd")
    if cwd == "deleted":
        gone = (b"/tmp" if w.root is not None else w.top) + b"/gone"
        os.mkdir(w.out(gone))
        out["cwd"], out["delete_cwd"] = gone.hex(), True
    elif cwd == "the tree":
        out["cwd"] = w.tree.hex()
    elif cwd == "unreadable":
        d = (b"/tmp" if w.root is not None else w.top) + b"/closed"
        os.mkdir(w.out(d), 0o000)
        out["cwd"] = d.hex()
    if case.get("privilege"):
        out["uid"] = NOBODY
    return out


def run_in(case, w, ns, exe, argv, env, stdin=None, bare=False):
    """One call in the situation (bare: without it, for priming): Run."""
    r_fd, w_fd = os.pipe()
    spec = situation_spec(case, w, exe, argv, env, w_fd, bare)
    # The private mount namespace is the wrapper's: its mounts die with the call.
    cmd = [NSENTER, "--net=" + ns.path]
    if w.root is not None:
        cmd += ["/usr/bin/unshare", "--mount", "--propagation", "private"]
    cmd += ["/usr/bin/python3", "-I", "-S", SITUATION, json.dumps(spec)]
    run = Run()
    run.timed_out = False
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w_fd,), env={},
                             start_new_session=True)
    finally:
        os.close(w_fd)
    try:
        run.stdout, run.stderr = p.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        run.timed_out = True
        os.killpg(p.pid, signal.SIGKILL)
        run.stdout, run.stderr = p.communicate()
    run.rc = p.returncode
    os.set_blocking(r_fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(r_fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    os.close(r_fd)
    if not data.startswith(b"ready=\n"):  # the harness's own failure, not the shim's
        raise RuntimeError("the situation could not be set: %s" % run.stderr.decode("utf-8", "replace")[-2000:])
    run.records = parse_records(data[len(b"ready=\n"):])
    return run


def parse_records(data):
    records, current = [], {}
    for line in data.split(b"\n"):
        key, _, value = line.partition(b"=")
        if key == b"end":
            records.append(current)
            current = {}
        elif key:
            current[key.decode()] = bytes.fromhex(value.decode())
    return records


def call_of(case, w):
    """(exe, argv, stdin) of the case's call, as the caller makes it."""
    name = case["name"]
    exe = w.tree_path_entry.rstrip(b"/") + b"/" + b(name)  # as execvp makes it from PATH
    argv0 = exe if case.get("invoke") == "by path" else b(name)
    stdin = RESTORE_INPUT if name == "iptables-restore" else None
    return exe, [argv0] + ARGS[name], stdin


def run_way(case, way, parts, top):
    """One way ("on", "off", or "direct": the binary the shim ran, called directly) of a case."""
    w = build_world(case, top, parts)
    if case.get("privilege"):
        setuid_copy(case, w)
    with Netns.create() as ns:
        if SEEDS[case["seed"]]:
            ns.ok(SEEDS[case["seed"]])
        env = dict(w.env)
        if case["prime"] and way != "direct":  # an earlier call of this netns, Python's, as a caller has it
            prime = run_in(case, w, ns, w.tree.rstrip(b"/") + b"/iptables", [b"iptables", b"-S"],
                           with_fast_route_off(env), bare=True)
            if prime.timed_out:  # before the situation and the tampering: the harness's failure
                raise RuntimeError("the priming call hung")
            if os.path.exists(w.out(w.log)):
                os.unlink(w.out(w.log))
        if case.get("target"):
            tamper(case, w, ns)
            env = dict(w.env)
        if way == "off":
            env[b"IPTABLES_SHIM_FAST_ROUTE"] = b"off"
        exe, argv, stdin = call_of(case, w)
        if way == "direct":
            exe, argv = case["direct"], [case["direct"].rpartition(b"/")[2]] + argv[1:]
        run = run_in(case, w, ns, exe, argv, env, stdin)
        run.kernel = {backend: normal_save(ns.ok("iptables-%s-save; ip6tables-%s-save" % (backend, backend)))
                      if backend == "nft" or ns.legacy_tables() else "" for backend in ("nft", "legacy")}
    run.log = read_log(w.out(w.log))
    run.cache = read_cache(w.out(w.cache))
    normalise(run, w)
    return run


def with_fast_route_off(env):
    out = dict(env)
    out[b"IPTABLES_SHIM_FAST_ROUTE"] = b"off"
    return out


def setuid_copy(case, w):
    """The tree's executable copied (not linked: its mode changes) with the set-user-ID bit or
    CAP_NET_ADMIN as a file capability."""
    exe = w.out(w.tree.rstrip(b"/") + b"/iptables-shim")
    data = open(exe, "rb").read()
    os.unlink(exe)
    write(exe, data, 0o755)
    if case["privilege"] == "set-user-ID root":
        os.chmod(exe, 0o4755)
    else:
        subprocess.run(["/usr/sbin/setcap", "cap_net_admin,cap_net_raw+ep", exe], check=True)


def normal_save(text):
    return "\n".join(l for l in text.splitlines() if not l.startswith("#"))


def read_log(path):
    try:
        data = open(path, "rb").read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [parse_line(l) or l for l in data.decode("utf-8", "replace").splitlines()]


def read_cache(path):
    """{name: (mode, content)} of the cache directory, what stands there if it is no directory."""
    try:
        names = os.listdir(path)
    except OSError as e:
        return {"<%s>" % errno.errorcode.get(e.errno, e.errno): None}
    out = {}
    for name in names:
        p = os.path.join(path, name)
        st = os.lstat(p)
        data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
        out[name.decode("utf-8", "replace") if isinstance(name, bytes) else name] = (oct(st.st_mode), data)
    return out


COOKIE = re.compile(rb"(cookie|netns-ino)-[0-9]+")
TMP_PID = re.compile(rb"\.[0-9]+\.tmp")  # a temporary entry's name holds its writer's PID


def normalise(run, w):
    """The runs differ by their world's directory and their netns's key: named alike."""
    def same(data):
        if data is None:
            return None
        text = isinstance(data, str)
        data = b(data) if text else data
        data = TMP_PID.sub(b".PID.tmp", COOKIE.sub(rb"\1-N", data.replace(w.top, b"TOP")))
        return data.decode("utf-8", "replace") if text else data

    run.stdout = same(untimed(run.stdout))
    run.stderr = same(run.stderr)
    run.records = [{k: same(v) for k, v in r.items()} for r in run.records]
    run.log = [{k: same(v) if isinstance(v, str) else v for k, v in l.items()} if isinstance(l, dict) else same(l)
               for l in run.log]
    run.cache = {same(k): (v[0], same(v[1])) if v else v for k, v in run.cache.items()}


def untimed(output):
    return b"\n".join(l for l in output.split(b"\n") if not l.startswith((b"# Generated by ", b"# Completed on ")))


# -- one case, both ways, and what must hold ----------------------------------------------------------

def describe(run):
    if run.timed_out:
        return "hung (killed after %d s)" % TIMEOUT
    if run.records:
        return "ran %s (exit %s)" % (run.records[-1].get("exe"), run.rc)
    if run.rc is not None and run.rc < 0:
        return "died of %s, nothing run" % signal.Signals(-run.rc).name
    if run.rc == 0:
        return "printed %r" % run.stdout[:200]
    return "refused (exit %s): %s" % (run.rc, run.stderr.decode("utf-8", "replace").strip()[:300])


def caller_view(record):
    """What a real binary inherits from its caller, as the recorder saw it."""
    env = [e for e in record["env"].split(b"\0")
           if not e.startswith((b"IPTABLES_SHIM_FAST_ROUTE=", b"IPTABLES_SHIM_CALLER="))]
    return {"status": record["status"], "fds": record["fds"], "cwd": record["cwd"], "limits": record["limits"],
            "args": record["argv"].split(b"\0")[1:], "env": sorted(env)}


def check_case(case, parts):
    """Run case both ways (and directly): [(kind, text)] of every problem found."""
    top = tempfile.mkdtemp(prefix="situation-", dir="/var/tmp")
    os.chmod(top, 0o755)
    try:
        runs = {}
        for way in ("off", "on"):
            os.mkdir(os.path.join(top, way))
            runs[way] = run_way(case, way, parts, os.path.join(top, way))
        ran = [runs[w].records[-1]["exe"] for w in ("off", "on") if runs[w].records]
        if ran:
            case = dict(case, direct=ran[0].replace(b"TOP", b(os.path.join(top, "direct"))))
            os.mkdir(os.path.join(top, "direct"))
            runs["direct"] = run_way(case, "direct", parts, os.path.join(top, "direct"))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return judge(case, runs)


def judge(case, runs):
    """[(kind, text)]: what went wrong in this case, each kind once."""
    problems = []

    def found(kind, detail=""):
        problems.append((kind, "%s\n  case: %s\n  off: %s\n  on:  %s%s" % (
            kind, {k: v for k, v in case.items() if k != "direct"}, describe(runs["off"]), describe(runs["on"]),
            "\n  " + detail if detail else "")))

    off, on = runs["off"], runs["on"]
    for way in ("off", "on"):
        r = runs[way]
        if r.timed_out:
            found("hang: the %s way" % way)
            continue
        if r.rc < 0 and not r.records:
            found("death by %s before anything ran: the %s way" % (signal.Signals(-r.rc).name, way))
        debris = [n for n in r.cache if ".tmp" in n]
        if debris:
            found("debris in the cache directory: the %s way" % way, str(debris))
        if len(r.log) > 1:
            found("%d log lines for one call: the %s way" % (len(r.log), way), str(r.log))
        explained = case["name"] == "iptables-shim" and r.rc == 0  # explain runs nothing: it prints
        if not r.records and not explained and r.rc >= 0 and case.get("streams", ("open",) * 3)[2] == "open":
            lines = r.stderr.decode("utf-8", "replace").splitlines()
            if len(lines) != 1 or not lines[0].startswith("iptables-shim: "):
                found("a refusal that is not one iptables-shim: line: the %s way" % way)
        if case.get("privilege") and r.records:
            found("a set-user-ID or capability copy ran a binary (started with AT_SECURE, it must refuse): "
                  "the %s way" % way)
        if (case.get("target") == "cache dir" and case["kind"].startswith("symlink") and r.records
                and b"legacy" in r.records[-1]["exe"]):
            found("the entry planted behind a symlinked cache directory decided: the %s way" % way)
    if off.timed_out or on.timed_out:
        return problems
    # The two ways: one answer.
    if bool(off.records) != bool(on.records):
        if (not off.records and on.records and case.get("rlimits", {}).get(ADDRESS_SPACE)
                and re.search(rb"memory|address space|RLIMIT_AS|ulimit -v", off.stderr)):
            pass  # Python cannot start in this address space and says so; the C route needs none
        else:
            found("disagreement: one way %s, the other ran a binary" % (
                "died" if min(off.rc, on.rc) < 0 else "refused"))
    elif off.records:
        for field in ("exe", "argv", "env"):
            a, b_ = off.records[-1][field], on.records[-1][field]
            if field == "env":
                a, b_ = caller_view(off.records[-1])["env"], caller_view(on.records[-1])["env"]
            if a != b_:
                found("disagreement: %s of the binary run" % field, "off %r\n  on  %r" % (a, b_))
    if bool(off.records) == bool(on.records):
        for field in ("rc", "stdout", "stderr", "log", "cache", "kernel"):
            a, b_ = getattr(off, field), getattr(on, field)
            if field == "stdout" and case["name"] == "iptables-shim":  # explain names the route
                a, b_ = [re.sub(rb"(?m)^route: .*$", b"", x) for x in (a, b_)]
            if a != b_:
                found("disagreement: %s" % field, "off %r\n  on  %r" % (a, b_))
    # What the real binary inherits: a direct call's.
    if "direct" in runs:
        direct = runs["direct"]
        if not direct.records:
            found("the direct call ran nothing", describe(direct))
            return problems
        want = caller_view(direct.records[-1])
        for way in ("off", "on"):
            if runs[way].records:
                got = caller_view(runs[way].records[-1])
                for key in want:
                    if got[key] != want[key]:
                        found("the real binary inherits another %s than from a direct call: the %s way" % (key, way),
                              "direct %r\n  %s %r" % (want[key], way, got[key]))
    return problems


# -- the cases ---------------------------------------------------------------------------------------

BASE = {"name": "iptables", "seed": "nft rule", "prime": True, "alias": "nft", "mode": None, "log": None,
        "context": None, "where": "private", "layout": "alternatives"}

base_strategy = st.fixed_dictionaries({
    "name": st.sampled_from(["iptables", "iptables", "iptables-save", "ip6tables", "ip6tables-save",
                             "iptables-restore"]),
    "seed": st.sampled_from(sorted(SEEDS)),
    "prime": st.sampled_from([True, True, True, False]),  # mostly settled: the C route answers
    "alias": st.sampled_from(["nft", "legacy"]),
    "mode": st.sampled_from([None, None, None, None, "env nft", "env legacy", "tree legacy", "etc nft"]),
    "log": st.sampled_from([None, None, "env", "tree"]),
    "context": st.sampled_from([None, None, "container", "host"]),
    "where": st.sampled_from(["private", "private", "host"]),
    "layout": st.sampled_from(["alternatives", "alternatives", "alternatives to the shim"]),
})


def fix(case):
    """The machine's own root has no place for an install record: Debian's layout there."""
    if case["where"] == "host":
        case["layout"] = "alternatives"
    return case


SIGNALS = ["SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGALRM", "SIGCHLD"]
KINDS = ["FIFO", "device", "directory", "symlink to the file", "symlink to /dev/null", "symlink to a FIFO",
         "dangling symlink", "empty file", "not executable format"]
TARGETS = ["etc conf", "tree conf", "cache entry", "cache dir", "install record", "os-release", "alias", "variant",
           "multi"]

CLASSES = {
    "rlimits": st.fixed_dictionaries({"rlimits": st.fixed_dictionaries({}, optional={
        STACK: st.sampled_from([64 << 10, 128 << 10, 256 << 10, 1 << 20]),
        ADDRESS_SPACE: st.sampled_from([8 << 20, 16 << 20, 32 << 20, 64 << 20, 256 << 20]),
        "FSIZE": st.sampled_from([0, 0, 1]),
        "NOFILE": st.sampled_from([3, 4, 5, 8, 16])}).filter(bool)}),
    "signals": st.fixed_dictionaries({"ignore": st.lists(st.sampled_from(SIGNALS), unique=True, max_size=4),
                                      "block": st.lists(st.sampled_from(SIGNALS + ["SIGUSR2"]), unique=True,
                                                        max_size=4)}),
    "streams": st.fixed_dictionaries({"streams": st.tuples(*[st.sampled_from(["open", "closed", "/dev/null"])] * 3)}),
    "process": st.fixed_dictionaries({"umask": st.sampled_from([None, 0, 0o022, 0o077, 0o277, 0o777]),
                                      "cwd": st.sampled_from([None, "deleted", "the tree", "unreadable"])}),
    "placement": st.fixed_dictionaries({
        "placement": st.sampled_from(sorted(PLACEMENTS)),
        "invoke": st.sampled_from(["through PATH", "by path"]),
        "name": st.sampled_from(["iptables", "iptables-save", "ip6tables", "iptables-shim"])}),
    "files": st.fixed_dictionaries({"target": st.sampled_from(TARGETS), "kind": st.sampled_from(
        KINDS + ["symlink to a directory", "symlink with a trailing slash"])}),
    "privilege": st.fixed_dictionaries({"privilege": st.sampled_from(["set-user-ID root",
                                                                      "CAP_NET_ADMIN file capability"])}),
}


def applies(case):
    """Cases that cannot be made as drawn (nothing to check) are dropped before they run."""
    if case.get("placement") == "root" or case.get("target") in ("install record", "os-release"):
        if case["where"] != "private":
            return False
    if case.get("target") == "install record" and case["layout"] != "alternatives to the shim":
        return False
    if case.get("target") == "cache dir" and case["kind"].startswith("symlink"):
        if case["kind"] not in ("symlink to a directory", "symlink with a trailing slash"):
            return False
    elif case.get("kind") in ("symlink to a directory", "symlink with a trailing slash"):
        return False
    if case.get("kind") == "not executable format" and case.get("target") not in ("alias", "variant", "multi"):
        return False
    return True


# The situations of the review that found these classes, as explicit cases; and for files, every
# kind in place of every file (a cache hit, a cold call for the install record).
EXPLICIT = {
    "rlimits": [
        dict(BASE, where="host", rlimits={STACK: 64 << 10}),  # the host's context, a 64 KiB stack
        dict(BASE, rlimits={STACK: 64 << 10}, context="host"),
        dict(BASE, rlimits={ADDRESS_SPACE: 8 << 20}),
        dict(BASE, rlimits={"FSIZE": 0}, log="env"),
        dict(BASE, rlimits={"FSIZE": 0}, prime=False, context="container"),
        dict(BASE, rlimits={"NOFILE": 3}),
    ],
    "signals": [
        dict(BASE, ignore=["SIGPIPE"], block=[]),
        dict(BASE, ignore=["SIGXFSZ", "SIGINT"], block=["SIGTERM"]),
        dict(BASE, ignore=["SIGPIPE"], block=["SIGHUP"], prime=False),
    ],
    "streams": [
        dict(BASE, streams=("closed", "closed", "closed"), log="env"),
        dict(BASE, streams=("open", "closed", "open"), prime=False),
    ],
    "process": [
        dict(BASE, umask=0o777, cwd="deleted", prime=False, log="env"),
        dict(BASE, umask=0, cwd="the tree", prime=False),
    ],
    "placement": [
        dict(BASE, placement="root", mode="tree legacy", seed="nft rule"),  # the tree at `/`
        dict(BASE, placement="non-UTF-8", name="iptables-shim", invoke="through PATH"),  # explain
        dict(BASE, placement="newline", invoke="by path", log="env"),
        dict(BASE, placement="percent", mode="tree legacy", log="tree"),
    ],
    "files": [
        dict(BASE, layout="alternatives to the shim", target="install record", kind="FIFO", prime=False),
        dict(BASE, layout="alternatives to the shim", target="install record", kind="FIFO"),
        dict(BASE, target="multi", kind="not executable format", log="env"),
        dict(BASE, target="cache dir", kind="symlink with a trailing slash", context="container", seed="nft rule",
             where="host"),
        dict(BASE, target="cache dir", kind="symlink to a directory", context="container", seed="nft rule"),
        dict(BASE, target="cache entry", kind="FIFO"),
        dict(BASE, target="etc conf", kind="FIFO"),
        dict(BASE, target="tree conf", kind="device"),
        dict(BASE, target="os-release", kind="FIFO", seed="legacy rule", prime=False),
    ],
    "privilege": [
        dict(BASE, privilege="set-user-ID root", context="container"),
        dict(BASE, privilege="CAP_NET_ADMIN file capability", context="container", mode="env nft"),
    ],
}


EXPLICIT["files"] += [
    dict(BASE, target=target, kind=kind, prime=prime, log="env",
         layout="alternatives to the shim" if target == "install record" else "alternatives")
    for target in TARGETS for kind in KINDS for prime in ((True, False) if target == "install record" else (True,))
    if (target, kind, prime) != ("install record", "FIFO", False)]  # that one is above


def check_class(name, parts, examples, explicit=None):
    """(cases run, {kind of failure: [cases, the first case's text]}): every case runs, and the
    test names every kind of failure seen rather than hypothesis's first."""
    failures = {}
    seen = []

    def each(case):
        case = fix(dict(case))
        if not applies(case):
            return
        seen.append(case)
        for kind, text in check_case(case, parts):
            entry = failures.setdefault(kind, [0, text, []])
            entry[0] += 1
            if entry[0] > 1:
                entry[2].append(case)

    test = each
    for case in (EXPLICIT[name] if explicit is None else explicit):
        test = example(case)(test)
    strategy = st.tuples(base_strategy, CLASSES[name]).map(lambda t: dict(t[0], **t[1]))
    test = given(strategy)(test)
    settings(max_examples=max(examples, 1), deadline=None, derandomize=True, database=None,
             phases=[Phase.explicit, Phase.generate] if examples else [Phase.explicit],
             suppress_health_check=list(HealthCheck))(test)()
    return seen, failures


def report(failures):
    """Each kind of failure: its first case in full, a few more by what sets them apart."""
    out = []
    for kind in sorted(failures):
        n, text, more = failures[kind]
        out.append("[%d case(s)] %s" % (n, text))
        for case in more[:6]:
            out.append("    also: %s" % {k: v for k, v in case.items() if BASE.get(k, "?") != v})
    return "\n".join(out)


@pytest.mark.parametrize("situation", sorted(CLASSES))
def test_both_routes_agree_in_every_situation(parts, situation):
    # Two situations only in privilege: a few cases vary the rest.
    seen, failures = check_class(situation, parts, min(EXAMPLES, 8) if situation == "privilege" else EXAMPLES)
    print("%s: %d cases, %d kinds of failure" % (situation, len(seen), len(failures)))
    assert len(seen) >= len(EXPLICIT[situation])
    assert not failures, "\n" + report(failures)


# -- the suite can fail: a deliberately broken C route --------------------------------------------------

# Each breaks what the real binary inherits when the C route answers (the anchor: its one execv);
# each must be caught by the class named.
MUTATIONS = {
    "the C route hands the real binary its own umask": (
        "process", "        execv(a->binary, args);", "        umask(077);\n        execv(a->binary, args);",
        [dict(BASE, umask=0o022, cwd=None)]),
    "the C route blocks SIGTERM before the exec": (
        "signals", "        execv(a->binary, args);",
        "        { sigset_t b; sigemptyset(&b); sigaddset(&b, SIGTERM); sigprocmask(SIG_BLOCK, &b, NULL); }\n"
        "        execv(a->binary, args);", [dict(BASE, ignore=[], block=[])]),
}


def broken_tree(mutation):
    """The frozen tree built from a copy of this checkout with one change to route.c (the build
    cache of the workspace: a relink, seconds)."""
    from test_frozen_roots import workspace

    ws, _ = workspace()
    old, new = MUTATIONS[mutation][1:3]
    src = tempfile.mkdtemp(prefix="situations-mutant-", dir="/var/tmp")
    _PARTS_DIRS.append(src)
    for part in ("shim", "packaging", "pyproject.toml"):
        s = os.path.join(REPO, part)
        (shutil.copytree(s, os.path.join(src, part), ignore=shutil.ignore_patterns("__pycache__"))
         if os.path.isdir(s) else shutil.copy(s, src))
    route = os.path.join(src, "packaging", "launcher", "route.c")
    text = open(route).read()
    assert text.count(old) == 1, "the mutation's anchor is not once in route.c: %r" % old
    write(route, text.replace(old, new))
    import fcntl
    with open(os.path.join(ws.root, "dist.lock"), "w") as lock:  # the build cache is the workspace's
        fcntl.flock(lock, fcntl.LOCK_EX)
        ws.run([os.path.join(src, "packaging", "build.sh"), "--out", os.path.join(src, "dist")],
               what="packaging/build.sh (mutant)", timeout=3600,
               env=dict(os.environ, IPTABLES_SHIM_BUILD_CACHE=os.path.join(ws.root, "build")))
    return os.path.join(src, "dist", "iptables-shim")


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_suite_catches_a_broken_route(mutation):
    situation, _, _, cases = MUTATIONS[mutation]
    parts = make_parts(broken_tree(mutation))
    _, failures = check_class(situation, parts, 0, explicit=cases)
    assert any("the real binary inherits another" in k and "the on way" in k for k in failures), report(failures)
