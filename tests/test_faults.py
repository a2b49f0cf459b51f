"""Faults: the cache directory broken in every way, netns recycled, the binary vanishing under the
shim, kernel probes refused, a reader closing the pipe. Each call either does exactly what the real
binary would have done in the right backend, or stops with one `iptables-shim:` line and writes
nothing. Never a wrong backend.

Rules are read back from the kernel with the real save binaries; every netns is fresh.
"""

import os
import subprocess
import threading
import time

import pytest

from conftest import BIN, SYSTEM_PATH, cache_files, shim_env
from namespaces import Netns
from rootfs import sbin_dir
from shim.cache import parse_entry
from shim_output import debug_line, debug_lines, shim_error_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, mounts, rules")

NO_SBIN = "/usr/bin:/bin"  # nsenter, sh, grep; no iptables binary lives there


def shim_call(netns, env, *argv, **kw):
    return netns.run(list(argv), env=env, **kw)


# --- the cache directory --------------------------------------------------------------------------

def in_private_mount(netns, script, env):
    """Run a shell script in a private mount namespace (mounts vanish with it) inside netns."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "nsenter", "--net=" + netns.path,
                           "/bin/sh", "-ec", script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_cache_on_a_full_or_read_only_filesystem_costs_only_speed(netns, tmp_path, how):
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")  # grounded: the shim tries to store
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if how == "full":
        prepare = ("mount -t tmpfs -o size=4k,mode=0700 shimfull %s\n"
                   "dd if=/dev/zero of=%s/fill bs=4096 count=2 2>/dev/null || true\n"
                   "[ \"$(df --output=avail %s | tail -1 | tr -d ' ')\" = 0 ]\n") % (mnt, mnt, mnt)
    else:
        prepare = "mount -t tmpfs -o size=64k,mode=0700 shimro %s\nmount -o remount,ro %s\n" % (mnt, mnt)
    script = prepare + (
        "iptables -A FORWARD -s 192.0.2.2 -j DROP\n"
        "iptables -A FORWARD -s 192.0.2.3 -j DROP\n"
        "echo files: $(ls -A %s)\n" % mnt
    )
    env = shim_env(str(mnt), IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    r = in_private_mount(netns, script, env)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    # Both calls decided legacy, tried the cache, and said it could not be used.
    assert err.count("-> /usr/sbin/iptables-legacy: legacy") == 2, err
    assert err.count("unusable, not cached") == 2, err
    # Nothing half-written was left on the full filesystem: no temporary file, no entry.
    assert r.stdout.decode().split() == ["files:"] + (["fill"] if how == "full" else [])
    assert netns.rules("legacy") == ["-A FORWARD -s 192.0.2.%d/32 -j DROP" % i for i in (1, 2, 3)]
    assert netns.rules("nft") == []


def test_cache_short_write_leaves_no_truncated_entry(netns, tmp_path):
    """A file size limit cuts the entry's write short: it must not be renamed into place."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    for limit in ("5", "0"):
        r = netns.run(["prlimit", "--fsize=" + limit, "iptables", "-A", "FORWARD", "-s",
                       "192.0.2.%d" % (10 + int(limit)), "-j", "DROP"], env=env)
        assert r.returncode == 0, r.stderr  # SIGXFSZ did not kill the shim either
        assert debug_line(r)["backend"] == "legacy"
        assert "unusable, not cached" in debug_line(r)["how"]
        assert os.listdir(str(cache)) == []
    assert len(netns.rules("legacy")) == 3 and netns.rules("nft") == []


def test_cache_dir_deleted_between_calls_is_recreated(netns, tmp_path):
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j DROP")
    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1",
                   PATH=BIN + ":" + sbin_dir(str(tmp_path / "alias"), aliases="legacy") + ":" + SYSTEM_PATH)
    first = debug_line(shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP"))
    assert first["backend"] == "nft" and first["how"].startswith("cached in")
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    second = debug_line(shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "192.0.2.3", "-j", "DROP"))
    assert second["backend"] == "nft" and second["how"].startswith("cached in")
    third = debug_line(shim_call(netns, env, "iptables", "-S"))
    assert third["how"].startswith("cache hit")
    (name,) = os.listdir(str(cache))
    assert parse_entry((cache / name).read_bytes())[0] == "nft"
    assert len(netns.rules("nft")) == 3 and netns.rules("legacy") == []


def test_cache_dir_replaced_by_a_file_is_left_alone(netns, tmp_path):
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    cache = tmp_path / "cache"
    cache.write_bytes(b"nft 4 a file where the directory was\n")
    os.chmod(str(cache), 0o600)
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    for i in (2, 3):
        r = shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "192.0.2.%d" % i, "-j", "DROP")
        assert r.returncode == 0, r.stderr
        d = debug_line(r)
        assert d["backend"] == "legacy" and "unusable" in d["how"]
    assert cache.read_bytes() == b"nft 4 a file where the directory was\n"
    assert len(netns.rules("legacy")) == 3 and netns.rules("nft") == []


def test_cache_entry_rewritten_between_calls(netns, tmp_path):
    """Rewritten with anything that is not a whole entry: ignored and replaced, right backend.
    Rewritten by the owner (root) with a whole entry: obeyed, by design (the cache *is* the
    decision, as trusted as the binaries root installs); `explain` shows the fresh decision beside
    the entry, and deleting the entry re-decides."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    key = debug_line(shim_call(netns, env, "iptables", "-S"))["netns"]
    entry = cache / key
    assert parse_entry(entry.read_bytes())[0] == "legacy"
    for junk in (b"nft 4 nft holds rules", b"nft 4 nft\nholds rules\n", b"\x00" * 64, b"",
                 b"nft 4 " + b"x" * 5000 + b"\n", b"nft four nft holds rules\n", b"/usr/sbin/iptables-nft\n"):
        with open(str(entry), "wb") as f:  # rewritten in place, as a careless writer would
            f.write(junk)
        r = shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP")
        assert r.returncode == 0 and debug_line(r)["backend"] == "legacy", (junk, r.stderr)
        assert parse_entry(entry.read_bytes())[0] == "legacy", junk  # replaced with a whole entry
    assert netns.rules("nft") == []
    assert len(netns.rules("legacy")) == 8

    entry.write_bytes(b"nft 4 rewritten by root\n")
    r = shim_call(netns, env, "iptables", "-S")
    assert debug_line(r)["backend"] == "nft" and debug_line(r)["how"].startswith("cache hit")
    import json

    report = json.loads(netns.run([os.path.join(BIN, "iptables-shim"), "explain", "--json"], env=env).stdout)
    assert report["decision"]["backend"] == "legacy" and report["cache"]["entry"]["backend"] == "nft"
    entry.unlink()
    assert debug_line(shim_call(netns, env, "iptables", "-S"))["backend"] == "legacy"


def test_entry_rewritten_concurrently_never_misleads(netns, tmp_path):
    """A writer keeps rewriting the entry in place with partial and garbage content while calls run."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    key = debug_line(shim_call(netns, env, "iptables", "-S"))["netns"]
    stop = threading.Event()

    def scribble():
        junk = [b"nft", b"nft 4", b"nft 4 nft holds", b"\xff\xfe", b"nft 4 a\nb\n"]
        i = 0
        while not stop.is_set():
            try:
                with open(str(cache / key), "wb") as f:
                    f.write(junk[i % len(junk)])
            except OSError:
                pass
            i += 1

    t = threading.Thread(target=scribble)
    t.start()
    try:
        results = [shim_call(netns, env, "iptables", "-w", "-A", "FORWARD", "-s", "198.51.100.%d" % i,
                             "-j", "DROP") for i in range(1, 41)]
    finally:
        stop.set()
        t.join()
    for r in results:
        assert r.returncode == 0, r.stderr
        assert debug_line(r)["backend"] == "legacy"
    assert len(netns.rules("legacy")) == 41 and netns.rules("nft") == []


# --- netns recycled -------------------------------------------------------------------------------

# The start of both seccomp helper scripts below: one BPF instruction (struct sock_filter).
BPF = r'''
import ctypes, os, platform, struct, sys
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)'''

# Their end: load the BPF program `prog` (no new privileges first, as an unprivileged filter must),
# then exec the command under it.
INSTALL_FILTER = r'''
buf = ctypes.create_string_buffer(b"".join(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()'''

NO_COOKIE = r'''%(bpf)s
# A seccomp filter refusing getsockopt(..., SO_NETNS_COOKIE=71) with ENOPROTOOPT, as a kernel
# older than 5.14 answers, then exec argv.
ARCH = {"x86_64": (0xC000003E, 55), "aarch64": (0xC00000B7, 209)}
audit, nr = ARCH[platform.machine()]
prog = [ins(0x20, 0, 0, 4), ins(0x15, 0, 5, audit), ins(0x20, 0, 0, 0), ins(0x15, 0, 3, nr),
        ins(0x20, 0, 0, 32), ins(0x15, 0, 1, 71), ins(0x06, 0, 0, 0x00050000 | 92),
        ins(0x06, 0, 0, 0x7FFF0000)]
%(install_filter)s
os.execvp(sys.argv[1], sys.argv[1:])
''' % {'bpf': BPF, 'install_filter': INSTALL_FILTER}


@pytest.mark.slow
@pytest.mark.parametrize("cookie", [True, False], ids=["netns cookie", "no cookie (kernel < 5.14)"])
def test_recycled_netns_never_inherit_a_decision(tmp_path, cookie):
    """Create and delete netns many times with one shared cache, seeding each with rules in a
    randomly chosen backend: the nsfs inode is reused within a few cycles, so a decision keyed by it
    would carry over into the wrong backend. With the cookie (never reused) as the key, none does;
    an entry planted under the inode key (what a st_dev:st_ino key would look up) is not consulted.
    Without a cookie (SO_NETNS_COOKIE refused as an older kernel does), decisions are stored under
    the inode but consulted only where no backend holds a rule
    (docs/decision.md#kernels-without-a-netns-cookie): a wrong entry planted under it changes
    nothing here, where every netns holds rules.
    A plain st_dev:st_ino key the shim once had made new netns inherit dead ones' decisions."""
    import random

    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1",
                   PATH=BIN + ":" + sbin_dir(str(tmp_path / "alias"), aliases="legacy") + ":" + SYSTEM_PATH)
    wrap = []
    if not cookie:
        script = tmp_path / "no-cookie.py"
        script.write_text(NO_COOKIE)
        wrap = ["/usr/bin/python3", str(script)]
    rng = random.Random(11)
    inodes, keys = [], []
    for cycle in range(30):
        with Netns.create("shimcycle-") as ns:
            seeded = rng.choice(("nft", "legacy"))
            ns.ok("iptables-%s -A FORWARD -s 192.0.2.1 -j DROP" % seeded)
            st = os.stat(ns.path)
            inodes.append(st.st_ino)
            other = "legacy" if seeded == "nft" else "nft"
            stale = cache / ("netns-ino-%d-%d" % (st.st_dev, st.st_ino))
            if cache.exists():
                stale.write_bytes(("%s 4 planted under the inode key\n" % other).encode())
                os.chmod(str(stale), 0o600)
            for i in (2, 3):
                r = ns.run(wrap + ["iptables", "-A", "FORWARD", "-s", "192.0.2.%d" % i, "-j", "DROP"], env=env)
                assert r.returncode == 0, r.stderr
                d = debug_line(r)
                assert d["backend"] == seeded, (cycle, d)
                if not cookie:
                    assert d["netns"] == "None", d
            keys.append(d["netns"])
            assert len(ns.rules(seeded)) == 3
            assert ns.rules(other) == []
    # The situation the cookie exists for did happen: an inode came back for a new netns.
    assert len(set(inodes)) < len(inodes), inodes
    if cookie:
        assert len(set(keys)) == len(keys), "a cookie was reused"
    else:
        assert all(name.startswith("netns-ino-") for name in cache_files(cache))
    print("netns recycled (%s): %d cycles, %d distinct nsfs inodes, %d distinct keys"
          % ("cookie" if cookie else "no cookie", len(inodes), len(set(inodes)), len(set(keys))))


@pytest.mark.parametrize("cookie", [True, False], ids=["netns cookie", "no cookie (kernel < 5.14)"])
def test_flushed_then_restored_ruleset_stays_in_its_backend(netns, tmp_path, cookie):
    """What netfilter-persistent reload does: save, flush (-F, -X), restore. Between the flush and
    the restore no backend holds a rule, and the image's alias (nft) would answer; the netns's
    backend must be remembered. With the cookie the cache entry does it; without one, the entry
    stored under the nsfs inode, trusted because the emptied legacy tables remain. Failed before
    that memory existed: on a kernel without the cookie the restore went into nft."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP; iptables-legacy -N KEEP; "
             "iptables-legacy -A KEEP -j RETURN")
    env = shim_env(tmp_path / "cache", IPTABLES_SHIM_CONTEXT="container")
    wrap = []
    if not cookie:
        script = tmp_path / "no-cookie.py"
        script.write_text(NO_COOKIE)
        wrap = ["/usr/bin/python3", str(script)]
    saved = tmp_path / "rules.v4"
    for cmd in (["iptables-save"], ["iptables", "-F"], ["iptables", "-X"]):
        r = netns.run(wrap + cmd, env=env)
        assert r.returncode == 0, (cmd, r.stderr)
        if cmd == ["iptables-save"]:
            saved.write_bytes(r.stdout)
    assert netns.rules("legacy") == [] and netns.rules("nft") == []
    r = netns.run(wrap + ["iptables-restore"], env=env, input=saved.read_bytes())
    assert r.returncode == 0, r.stderr
    assert sorted(netns.rules("legacy")) == ["-A FORWARD -s 192.0.2.1/32 -j DROP", "-A KEEP -j RETURN"]
    assert netns.rules("nft") == []


def test_memory_without_a_cookie_needs_the_backends_trace(tmp_path):
    """A remembered decision (no cookie) is trusted only while the netns shows that backend's
    tables: a new netns on the same inode, with no table anywhere, gets the alias, not the memory."""
    script = tmp_path / "no-cookie.py"
    script.write_text(NO_COOKIE)
    wrap = ["/usr/bin/python3", str(script)]
    cache = tmp_path / "cache"
    env = shim_env(cache, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    with Netns.create("shimmem-") as ns:
        ns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
        assert ns.run(wrap + ["iptables", "-S"], env=env).returncode == 0  # decided legacy, stored
        st = os.stat(ns.path)
        key = "netns-ino-%d-%d" % (st.st_dev, st.st_ino)
        assert parse_entry((cache / key).read_bytes())[0] == "legacy"
    # A netns with no table at all, its inode forced to the remembered one by planting the entry
    # under its own key: the memory must not answer (the image's alias, nft, does).
    with Netns.create("shimmem-") as fresh:
        st = os.stat(fresh.path)
        planted = cache / ("netns-ino-%d-%d" % (st.st_dev, st.st_ino))
        planted.write_bytes(b"legacy 5 legacy holds rules\n")
        os.chmod(str(planted), 0o600)
        r = fresh.run(wrap + ["iptables", "-A", "FORWARD", "-s", "192.0.2.9", "-j", "DROP"], env=env)
        assert r.returncode == 0, r.stderr
        assert debug_line(r)["backend"] == "nft"
        assert fresh.rules("legacy") == []


# --- the binary vanishing between decision and exec ------------------------------------------------

def variants_dir(root, broken=None):
    """A PATH directory holding every variant (symlinks to the real multi-call binaries) and
    default aliases that run legacy; `broken` is replaced by an executable that cannot be executed,
    as a binary removed after the shim found it."""
    sbin_dir(root, aliases="legacy", variants=("nft", "legacy"))
    if broken:
        path = os.path.join(root, broken)
        os.unlink(path)
        with open(path, "w") as f:
            f.write("#!/nonexistent/removed-after-the-shim-found-it\n")
        os.chmod(path, 0o755)
    return root


def test_binary_gone_at_exec_is_a_clear_error_and_writes_nothing(netns, tmp_path):
    """execv of the chosen binary fails as it does when the file vanished after the PATH search
    (ENOENT): one line, exit 127, and no fallback to the legacy alias sitting next to it."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j DROP")
    d = variants_dir(str(tmp_path / "bin"), broken="iptables-nft")
    env = shim_env(tmp_path / "cache", path=BIN + ":" + d + ":" + NO_SBIN, IPTABLES_SHIM_CONTEXT="container")
    before = netns.snapshot()
    r = shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP")
    shim_error_line(r)
    assert "cannot execute %s/iptables-nft" % d in r.stderr.decode()
    assert netns.snapshot() == before


@pytest.mark.slow
def test_binary_removed_and_restored_while_calls_run(netns, tmp_path):
    """The real race: a thread removes and restores the nft variant while calls run. Each call
    either writes its rule into nft, or stops with one line having written nothing; the legacy
    alias in the same directory is never used."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j DROP")
    d = variants_dir(str(tmp_path / "bin"))
    env = shim_env(tmp_path / "cache", path=BIN + ":" + d + ":" + NO_SBIN, IPTABLES_SHIM_CONTEXT="container")
    link = os.path.join(d, "iptables-nft")
    stop = threading.Event()

    def flap():
        while not stop.is_set():
            os.unlink(link)
            time.sleep(0.002)
            os.symlink("/usr/sbin/xtables-nft-multi", link)
            time.sleep(0.002)

    t = threading.Thread(target=flap)
    t.start()
    try:
        results = [shim_call(netns, env, "iptables", "-A", "FORWARD", "-s", "198.51.100.%d" % i, "-j", "DROP")
                   for i in range(1, 81)]
    finally:
        stop.set()
        t.join()
    rules = netns.rules("nft")
    ok = 0
    for i, r in enumerate(results, 1):
        rule = "-A FORWARD -s 198.51.100.%d/32 -j DROP" % i
        if r.returncode == 0:
            ok += 1
            assert rule in rules
        else:
            shim_error_line(r)
            assert rule not in rules
    assert len(rules) == ok + 1
    print("binary flapping: %d of %d calls ran, %d stopped with one line" % (ok, len(results), len(results) - ok))
    assert netns.rules("legacy") == [] and netns.ok("cat /proc/net/ip_tables_names || true") == ""


# --- kernel probes refused ------------------------------------------------------------------------

SECCOMP = r'''%(bpf)s
# A seccomp filter refusing socket(domain, type, ...) with EACCES for the given domains (all of
# them, or with "cloexec" only those asking for SOCK_CLOEXEC), then exec argv.
ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
audit, nr = ARCH[platform.machine()]
domains = [int(d) for d in sys.argv[1].split(",")]
cloexec_only = sys.argv[2] == "cloexec"
ALLOW, ERRNO = ins(0x06, 0, 0, 0x7FFF0000), ins(0x06, 0, 0, 0x00050000 | 13)
n = len(domains)
prog = [ins(0x20, 0, 0, 4), ins(0x15, 0, 3 + n, audit), ins(0x20, 0, 0, 0), ins(0x15, 0, 1 + n, nr),
        ins(0x20, 0, 0, 16)]
for i, d in enumerate(domains):
    prog.append(ins(0x15, n - i, 0, d))
prog.append(ALLOW)
if cloexec_only:  # type (args[1]) & SOCK_CLOEXEC
    prog += [ins(0x20, 0, 0, 24), ins(0x45, 0, 1, 0o2000000), ERRNO, ALLOW]
else:
    prog.append(ERRNO)
%(install_filter)s
os.execvp(sys.argv[3], sys.argv[3:])
''' % {'bpf': BPF, 'install_filter': INSTALL_FILTER}

AF_INET, AF_INET6, AF_NETLINK = 2, 10, 16

REFUSALS = {
    # name: (wrapper argv prefix, what it refuses)
    "seccomp: no netlink": lambda tmp: ["/usr/bin/python3", seccomp_script(tmp), str(AF_NETLINK), "all"],
    "seccomp: no inet sockets": lambda tmp: ["/usr/bin/python3", seccomp_script(tmp),
                                             "%d,%d" % (AF_INET, AF_INET6), "all"],
    # The shim's own kernel probes open their sockets with SOCK_CLOEXEC (Python always does); the
    # real binaries, which the fallback save probe runs, do not: only the kernel probes are refused.
    "seccomp: kernel probes only": lambda tmp: ["/usr/bin/python3", seccomp_script(tmp),
                                                "%d,%d,%d" % (AF_NETLINK, AF_INET, AF_INET6), "cloexec"],
    "no CAP_NET_ADMIN/NET_RAW": lambda tmp: ["capsh", "--drop=cap_net_admin,cap_net_raw", "--", "-c",
                                             'exec "$0" "$@"'],
}


def seccomp_script(tmp):
    path = os.path.join(str(tmp), "seccomp.py")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(SECCOMP)
    return path


def test_seccomp_wrapper_really_refuses(netns, tmp_path):
    """The fault is real: under the filter the real binaries themselves fail."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j DROP")
    wrap = REFUSALS["seccomp: no netlink"](tmp_path)
    r = netns.run(wrap + ["iptables-nft-save"])
    assert r.returncode != 0
    r = netns.run(wrap + ["iptables-nft", "-S"])
    assert r.returncode != 0
    # The kernel-probes-only filter leaves the real binaries (the fallback) working.
    r = netns.run(REFUSALS["seccomp: kernel probes only"](tmp_path) + ["iptables-nft-save"])
    assert r.returncode == 0 and b"-A FORWARD -s 192.0.2.1/32 -j DROP" in r.stdout, r.stderr


# (seed backend, PATH alias, expected backend): the alias always names the *other* backend, so a
# refused probe that counted as "no rules" would pick the wrong one.
SEEDS = [("nft", "legacy"), ("legacy", "nft")]


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
@pytest.mark.parametrize("seeded,alias", SEEDS, ids=["nft rules, legacy alias", "legacy rules, nft alias"])
def test_refused_probe_answers_right_or_stops(netns, tmp_path, refusal, seeded, alias):
    netns.ok("iptables-%s -A FORWARD -s 192.0.2.1 -j DROP" % seeded)
    path = BIN + ":" + SYSTEM_PATH
    if alias == "legacy":
        path = BIN + ":" + sbin_dir(str(tmp_path / "alias"), aliases="legacy") + ":" + SYSTEM_PATH
    env = shim_env(tmp_path / "cache", path=path, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_DEBUG="1")
    wrap = REFUSALS[refusal](tmp_path)
    before = netns.snapshot()
    r = netns.run(wrap + ["iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP"], env=env)
    err = r.stderr.decode("utf-8", "replace")
    debug = debug_lines(err)
    if debug and debug[0]["step"] == 0:
        # No CAP_NET_ADMIN: the shim runs the alias as a direct call would; the kernel refuses it.
        assert debug[0]["backend"] == alias and r.returncode != 0, err
        assert netns.snapshot() == before
    elif debug:
        # The probe (or its fallback) answered: it must have answered right.
        assert debug[0]["backend"] == seeded, err
        if r.returncode == 0:
            assert netns.rules(seeded) == ["-A FORWARD -s 192.0.2.%d/32 -j DROP" % i for i in (1, 2)]
        else:
            assert netns.snapshot() == before  # the real binary itself was refused
    else:
        shim_error_line(r)
        assert "could not read" in err and "IPTABLES_SHIM_MODE" in err
        assert netns.snapshot() == before
    other = "legacy" if seeded == "nft" else "nft"
    assert netns.rules(other) == []
    # explain names which probe answered for each backend.
    rep = netns.run(wrap + [os.path.join(BIN, "iptables-shim"), "explain", "--json"], env=env)
    if rep.returncode == 0:
        import json

        report = json.loads(rep.stdout)
        assert all(report["backends"][b]["source"] for b in ("nft", "legacy"))
        if report["decision"] is None:  # undecided: explain still shows every fact, and why
            assert report["runs"].startswith("error: could not read")
        elif report["decision"]["step"] == 0:
            assert report["decision"]["backend"] == alias
        else:
            assert report["decision"]["backend"] == seeded
    else:
        assert "could not read" in rep.stderr.decode()
    if refusal == "seccomp: kernel probes only":
        # The fallback answered, right, and explain says so.
        assert r.returncode == 0 and rep.returncode == 0, (err, rep.stderr)
        assert "kernel probe unavailable" in report["backends"][seeded]["source"], report["backends"]


def test_host_context_is_unaffected_by_a_refused_probe(netns, tmp_path):
    """Host context with an alias reads no rules at all (step 2): a refused probe changes nothing."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    env = shim_env(tmp_path / "cache", IPTABLES_SHIM_CONTEXT="host", IPTABLES_SHIM_DEBUG="1")
    wrap = REFUSALS["seccomp: no inet sockets"](tmp_path)
    r = netns.run(wrap + ["iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP"], env=env)
    assert r.returncode == 0, r.stderr
    assert debug_line(r)["backend"] == "nft"
    assert netns.rules("nft") == ["-A FORWARD -s 192.0.2.2/32 -j DROP"]


# --- a reader that stops reading -------------------------------------------------------------------

def test_reader_closing_the_pipe_kills_the_real_binary_as_it_would_directly(netns, tmp_path):
    """Python ignores SIGPIPE and SIGXFSZ, and SIG_IGN survives execv: the shim must restore them,
    or `iptables-save | head -1` exits 0 where the real binary dies of SIGPIPE (141)."""
    netns.ok("(echo '*filter'; for i in $(seq 1 3000); do echo \"-A INPUT -s 10.0.$((i/250)).$((i%250+1)) "
             "-j ACCEPT\"; done; echo COMMIT) | iptables-nft-restore")
    env = shim_env(tmp_path / "cache", IPTABLES_SHIM_CONTEXT="container")
    script = "%s | head -c 10 >/dev/null; echo ${PIPESTATUS[0]}; grep SigIgn /proc/self/status"
    direct = netns.run(["/bin/bash", "-c", script % "iptables-nft-save"], env=env)
    shimmed = netns.run(["/bin/bash", "-c", script % "iptables-save"], env=env)
    assert direct.stdout.split()[0] == b"141"
    assert shimmed.stdout == direct.stdout
    # What the real binary sees: no signal ignored that the caller did not ignore.
    probe = tmp_path / "bin"
    probe.mkdir()
    (probe / "iptables-nft").write_text("#!/bin/sh\nexec /bin/grep SigIgn /proc/self/status\n")
    os.chmod(str(probe / "iptables-nft"), 0o755)
    r = netns.run(["iptables"], env=shim_env(tmp_path / "cache", path=BIN + ":" + str(probe) + ":" + NO_SBIN,
                                             IPTABLES_SHIM_MODE="nft"))
    # Compared with what the caller itself ignores (a job started in the background with `&` by a
    # non-interactive shell ignores SIGINT and SIGQUIT, and passes that on to everything it runs).
    caller = netns.run(["/bin/grep", "SigIgn", "/proc/self/status"])
    assert r.stdout.split()[0] == b"SigIgn:" and r.stdout == caller.stdout, (r.stdout, caller.stdout)
