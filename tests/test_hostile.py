"""Hostile input: planted cache entries and binaries, awkward PATH entries, argv at the kernel's
limits, garbage on stdin, invalid UTF-8 in argv. The basic cache-trust cases (symlinked, foreign,
writable, truncated entries and directories) are tests/test_cache.py's; here an attacker moves while
the shim runs, and the shim is compared with the real binary it runs.

What the shim does with each kind of PATH entry (the shim runs as root):
- relative (`bin`, `.`) and empty (`::`, a leading or trailing `:`, the working directory):
  skipped: where the caller stands is not where root's binaries come from.
- world-writable directories (mode o+w, even sticky ones such as /tmp) and world-writable files:
  skipped: any local user could have planted or rewritten them.
- missing, not a directory, a symlink loop, unreadable: skipped silently, as execvp does: nothing
  can be found there. (Root reads a mode-000 directory anyway: it is searched.)
"""

import errno
import os
import random
import shutil
import stat
import subprocess
import threading

import pytest

from conftest import BIN, REPO, SYSTEM_PATH, bin_for_other_users, cache_files, shim_env
from namespaces import Netns, call
from shim.tools import SHIM_NAMES, all_variant_names
from shim_output import shim_error_line
from shim.cache import parse_entry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, rules, chown")

CONTAINER = {"IPTABLES_SHIM_CONTEXT": "container"}
ALL_NAMES = all_variant_names() + sorted(SHIM_NAMES)
MAX_ARG_STRLEN = 32 * 4096  # include/uapi/linux/binfmts.h: one argv or envp string, NUL included


def evil_dir(directory, marker, mode=0o755, file_mode=0o755):
    """A directory of executables named like every real binary; each leaves `marker` if run."""
    os.makedirs(str(directory), exist_ok=True)
    for name in ALL_NAMES:
        path = os.path.join(str(directory), name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho \"$0\" >> %s\nexit 0\n" % marker)
        os.chmod(path, file_mode)
    os.chmod(str(directory), mode)
    return str(directory)


def rules_with(netns, backend, text):
    return [l for l in netns.rules(backend) if text in l]


# --- hostile PATH entries -------------------------------------------------------------------------

def test_hostile_path_entries_are_skipped(netns, tmp_path):
    """Every kind of hostile or broken PATH entry sits before the system directories, each holding
    (or pointing at) binaries that leave a marker: the rule lands in the kernel through the real
    binary, and nothing planted ever runs, not even as a probe."""
    marker = tmp_path / "planted-ran"
    cwd = evil_dir(tmp_path / "cwd", marker)
    evil_dir(tmp_path / "cwd" / "bin", marker)  # the relative entry `bin`
    world = evil_dir(tmp_path / "world", marker, mode=0o777)
    sticky = evil_dir(tmp_path / "sticky", marker, mode=0o1777)
    loose_files = evil_dir(tmp_path / "loose", marker, file_mode=0o777)  # root's dir, o+w files
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    loop = tmp_path / "loop"
    os.symlink(str(loop), str(loop))
    entries = ["", ".", "bin", "./bin", world, sticky, loose_files, str(tmp_path / "missing"), str(a_file),
               str(loop), str(a_file) + "/sub", ""]
    path = ":".join([BIN] + entries + [SYSTEM_PATH])
    env = shim_env(tmp_path / "cache", path=path, IPTABLES_SHIM_DEBUG="1", **CONTAINER)
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    for argv in (["iptables", "-A", "FORWARD", "-s", "192.0.2.2", "-j", "DROP"],
                 ["ip6tables-save"], ["iptables-restore", "--noflush"]):
        proc, _ = call(netns, argv, env, cwd=cwd,
                       input=b"*filter\n-A FORWARD -s 192.0.2.3 -j DROP\nCOMMIT\n" if "restore" in argv[0] else None)
        assert proc.returncode == 0, proc.stderr
        assert "-> /usr/sbin/%s-legacy" % argv[0].split("-")[0] in proc.stderr.decode(), proc.stderr
    assert not marker.exists(), marker.read_text()
    assert len(netns.rules("legacy")) == 3 and netns.rules("nft") == []
    # explain lists what is searched: none of the skipped entries.
    import json

    proc, _ = call(netns, [os.path.join(BIN, "iptables-shim"), "explain", "--json"], env, cwd=cwd)
    report = json.loads(proc.stdout)
    for skipped in ("", ".", "bin", "./bin", world, sticky):
        assert skipped not in report["path"]
    assert all(not p.startswith(cwd) for p in report["binaries"].values())
    assert not marker.exists()


def test_only_world_writable_copies_is_a_clear_error(netns, tmp_path):
    """If the only binaries are in a world-writable directory, the shim says it found none and runs
    nothing, rather than running what anyone could have put there."""
    marker = tmp_path / "planted-ran"
    world = evil_dir(tmp_path / "world", marker, mode=0o777)
    env = shim_env(tmp_path / "cache", path=BIN + ":" + world + ":/usr/bin:/bin", **CONTAINER)
    proc, _ = call(netns, ["iptables", "-S"], env)
    shim_error_line(proc)
    assert not marker.exists()


@pytest.mark.parametrize("path", [None, "", ":", ".:bin"], ids=["unset", "empty", "colon", "relative only"])
def test_no_usable_path_at_all_is_a_clear_error(netns, tmp_path, path):
    """PATH unset, empty or relative only (the shim reached by its absolute path): one line naming
    what is missing, exit 127, nothing run, whatever the working directory holds."""
    marker = tmp_path / "planted-ran"
    cwd = evil_dir(tmp_path / "cwd", marker)
    evil_dir(tmp_path / "cwd" / "bin", marker)
    env = shim_env(tmp_path / "cache", **CONTAINER)
    if path is None:
        del env["PATH"]
    else:
        env["PATH"] = path
    proc, _ = call(netns, [os.path.join(BIN, "iptables"), "-S"], env, cwd=cwd)
    assert "PATH" in shim_error_line(proc)
    assert not marker.exists()


def test_unreadable_path_entry_for_an_unprivileged_caller(netns, tmp_path):
    """A directory the caller cannot search (mode 000, caller not root) is skipped like a missing
    one, and the next entry answers."""
    top = "/tmp/shim-h5-" + os.urandom(4).hex()  # tmp_path is 0700: nobody could not reach the shim
    os.mkdir(top, 0o711)
    try:
        marker = os.path.join(top, "marker")
        closed = evil_dir(os.path.join(top, "closed"), marker, mode=0o000)
        env = shim_env(os.path.join(top, "cache"), path=bin_for_other_users() + ":" + closed + ":" + SYSTEM_PATH,
                       IPTABLES_SHIM_MODE="nft", IPTABLES_SHIM_DEBUG="1")
        proc, _ = call(netns, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "iptables", "--version"], env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(b"iptables v") and b"(nf_tables)" in proc.stdout
        assert b"-> /usr/sbin/iptables-nft:" in proc.stderr
        assert not os.path.exists(marker)
    finally:
        subprocess.run(["rm", "-rf", top], check=False)


# --- planted cache entries, while the shim runs -----------------------------------------------------

WRONG = b"nft 4 nft holds rules\n"


def test_fifo_or_device_as_entry_never_blocks(netns, cache_dir, tmp_path):
    """An entry that is a FIFO (opening it for reading would block) or a character device: the
    shim neither hangs nor trusts it, and the call lands right."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    key = netns.cache_key()
    os.mkdir(str(cache_dir), 0o700)
    env = shim_env(cache_dir, **CONTAINER)
    for kind in ("fifo", "chardev"):
        entry = str(cache_dir / key)
        if os.path.lexists(entry):
            os.unlink(entry)
        if kind == "fifo":
            os.mkfifo(entry, 0o600)
        else:
            os.mknod(entry, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # like /dev/zero
        proc, elapsed = call(netns, ["iptables", "-A", "FORWARD", "-s", "192.0.2.9", "-j", "DROP"], env, timeout=10)
        assert proc.returncode == 0 and elapsed < 5, (kind, proc.stderr, elapsed)
        assert parse_entry(open(entry, "rb").read()) is not None  # replaced by a whole entry
    assert netns.rules("nft") == [] and len(netns.rules("legacy")) == 3


def test_fifos_in_place_of_what_the_shim_reads(netns, tmp_path):
    """A FIFO as the install record (/var/lib bind-mounted in a private mount namespace) and as the
    configuration file: no call blocks. The record is not trusted (no default alias from it) and the
    call lands in the backend its rules chose; the configuration file is refused in one line. Failed
    before for the record (opened blocking: every call that read it hung). The C route's side, and a
    candidate binary swapped for a FIFO after its stat: tests/test_fast_route_generated.py."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    variants = tmp_path / "variants"  # no plain names on PATH: the default alias is the record's
    os.makedirs(str(variants))
    for name in all_variant_names():
        if os.path.exists("/usr/sbin/" + name):
            os.symlink("/usr/sbin/" + name, str(variants / name))
    state = tmp_path / "varlib" / "iptables-shim"
    os.makedirs(str(state))
    os.mkfifo(str(state / "alternatives"), 0o644)
    os.mkfifo(str(tmp_path / "shim.conf"), 0o644)
    env = shim_env(tmp_path / "cache", path=BIN + ":" + str(variants), **CONTAINER)
    private = ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
               '/usr/bin/mount --bind "$0" /var/lib && exec "$@"', str(tmp_path / "varlib")]
    proc, _ = call(netns, private + [os.path.join(BIN, "iptables"), "-A", "FORWARD", "-s", "192.0.2.9", "-j", "DROP"],
                   env, timeout=20)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert len(netns.rules("legacy")) == 2 and netns.rules("nft") == []
    proc, _ = call(netns, [os.path.join(BIN, "iptables"), "-S"], dict(env, IPTABLES_SHIM_CONFIG=str(tmp_path / "shim.conf")),
                   timeout=20)
    assert "is not a regular file" in shim_error_line(proc)


def test_fifos_in_place_of_the_files_the_verbs_read(tmp_path):
    """A FIFO as an alternatives group's file (install --alternatives) or as a netns file given to
    doctor: refused or not a namespace, at once. Failed before (opened blocking: the verb hung)."""
    import signal

    from shim.doctor.namespaces import namespace_type
    from shim.errors import ShimError
    from shim.install import read_group

    os.mkfifo(str(tmp_path / "iptables"), 0o644)

    def hung(*_):
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(ShimError, match="not a regular file"):
            read_group(str(tmp_path), "iptables")
        assert namespace_type(str(tmp_path / "iptables")) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.slow
def test_entry_swapped_by_an_attacker_while_calls_run(netns, cache_dir, tmp_path):
    """An attacker keeps replacing the entry (atomically, by rename) with a symlink to an entry
    naming the wrong backend, a symlink to an executable, a foreign-owned entry naming the wrong
    backend, and a hard link to one, while 40 calls run: every call lands in the right backend,
    nothing planted runs, nothing the symlinks point to is written."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    key = netns.cache_key()
    os.mkdir(str(cache_dir), 0o700)
    marker = tmp_path / "planted-ran"
    evil = tmp_path / "evil"
    evil.write_text("#!/bin/sh\ntouch %s\n" % marker)
    evil.chmod(0o755)
    wrong = tmp_path / "wrong-entry"
    wrong.write_bytes(WRONG)
    wrong.chmod(0o600)
    foreign = tmp_path / "foreign-entry"
    foreign.write_bytes(WRONG)
    foreign.chmod(0o600)
    os.chown(str(foreign), 65534, 65534)
    entry = str(cache_dir / key)
    stop = threading.Event()
    swaps = [0]

    def attack():
        rng = random.Random(5)
        while not stop.is_set():
            tmp = str(cache_dir / ".attacker")
            kind = rng.randrange(4)
            try:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                if kind == 0:
                    os.symlink(str(wrong), tmp)
                elif kind == 1:
                    os.symlink(str(evil), tmp)
                elif kind == 2:
                    with open(tmp, "wb") as f:
                        f.write(WRONG)
                    os.chmod(tmp, 0o600)
                    os.chown(tmp, 65534, 65534)
                else:
                    os.link(str(foreign), tmp)
                os.rename(tmp, entry)
                swaps[0] += 1
            except OSError:
                pass

    t = threading.Thread(target=attack)
    t.start()
    try:
        env = shim_env(cache_dir, IPTABLES_SHIM_DEBUG="1", **CONTAINER)
        results = [call(netns, ["iptables", "-w", "-A", "FORWARD", "-s", "198.51.100.%d" % i, "-j", "DROP"],
                        env)[0] for i in range(1, 41)]
    finally:
        stop.set()
        t.join()
    assert swaps[0] > 40
    for proc in results:
        assert proc.returncode == 0, proc.stderr
        assert b"-> /usr/sbin/iptables-legacy: legacy" in proc.stderr, proc.stderr
    assert not marker.exists()
    assert wrong.read_bytes() == WRONG and foreign.read_bytes() == WRONG
    assert evil.read_text().startswith("#!/bin/sh\ntouch")
    assert netns.rules("nft") == [] and len(netns.rules("legacy")) == 41
    assert [n for n in cache_files(cache_dir) if n.endswith(".tmp")] == []


# --- comparing with the real binary --------------------------------------------------------------

def direct_and_shim(netns, argv, env, input=None, direct_name=None):
    """(direct, through the shim) results of the same argv; the direct call runs the real variant."""
    real = [direct_name or argv[0]] + list(argv[1:])
    d, _ = call(netns, real, env, input=input)
    s, _ = call(netns, argv, env, input=input)
    return d, s


def test_invalid_utf8_argv_reaches_the_kernel_byte_exact(netns, cache_dir):
    """Python decodes argv with surrogateescape; the bytes the real binary receives (and writes into
    the kernel, and echoes in its errors) must be the caller's bytes, not a re-encoding."""
    env = shim_env(cache_dir, **CONTAINER)
    netns.ok("iptables-nft -N VIA-SHIM && iptables-nft -N DIRECT")
    comment = b"\xff\xfe\x80 caf\xc3 \xed\xa0\x80 \xc3\xa9 ok"
    d, _ = call(netns, [b"iptables-nft", b"-A", b"DIRECT", b"-m", b"comment", b"--comment", comment], env)
    s, _ = call(netns, [b"iptables", b"-A", b"VIA-SHIM", b"-m", b"comment", b"--comment", comment], env)
    assert d.returncode == s.returncode == 0, (d.stderr, s.stderr)
    save = netns.run(["iptables-nft-save"]).stdout
    lines = [l for l in save.split(b"\n") if l.startswith(b"-A ")]
    assert [l.replace(b"VIA-SHIM", b"DIRECT") for l in lines if b"VIA-SHIM" in l] == \
        [l for l in lines if b"DIRECT" in l]
    assert any(b"\xff\xfe\x80" in l for l in lines), lines
    # Errors that echo the argument: the same bytes on stderr, whatever locale Python starts in
    # (C and POSIX switch it to UTF-8 mode; unset is the same; ISO-8859-1 decodes every byte).
    for lc in ("C", "C.UTF-8", "POSIX", "en_US.ISO-8859-1", None):
        env = dict(env)
        env.pop("LC_ALL", None)
        if lc:
            env["LC_ALL"] = lc
        check_echoed_bytes(netns, env)


def check_echoed_bytes(netns, env):
    for argv in ([b"iptables", b"-A", b"\xff\xfeNO-SUCH-CHAIN\x80", b"-j", b"ACCEPT"],
                 [b"iptables", b"-A", b"INPUT", b"-j", b"\xc3\x28TARGET"],
                 [b"iptables", b"-A", b"INPUT", b"--\xff\xfe"]):
        d, s = direct_and_shim(netns, argv, env, direct_name=b"iptables-nft")
        assert (s.returncode, s.stdout, s.stderr) == (d.returncode, d.stdout, d.stderr), argv
        assert d.returncode != 0


def test_one_argument_of_the_maximum_length(netns, cache_dir):
    """An argument of MAX_ARG_STRLEN - 1 bytes (the kernel's per-string limit) passes through
    whole: the real binary answers as when called directly, and writes the same rule. One byte
    more and the caller's own exec fails, shim or not."""
    env = shim_env(cache_dir, **CONTAINER)
    netns.ok("iptables-nft -N VIA-SHIM && iptables-nft -N DIRECT")
    big = b"x" * (MAX_ARG_STRLEN - 1)
    tail = [b"-m", b"comment", b"--comment", big, b"-j", b"ACCEPT"]
    d, _ = call(netns, [b"iptables-nft", b"-A", b"DIRECT"] + tail, env)
    s, _ = call(netns, [b"iptables", b"-A", b"VIA-SHIM"] + tail, env)
    assert (s.returncode, s.stdout, s.stderr) == (d.returncode, d.stdout, d.stderr)
    lines = [l for l in netns.run(["iptables-nft-save"]).stdout.split(b"\n") if l.startswith(b"-A ")]
    assert [l.replace(b"VIA-SHIM", b"DIRECT") for l in lines if b"VIA-SHIM" in l] == \
        [l for l in lines if b"DIRECT" in l]
    for name in (b"iptables-nft", b"iptables"):
        with pytest.raises(OSError) as err:
            call(netns, [name, b"-A", b"INPUT", b"--comment", big + b"x"], env)
        assert err.value.errno == errno.E2BIG


FILLER = [b"y" * (MAX_ARG_STRLEN - 1)] * 15  # 15 strings of the per-string maximum: ~1.9 MiB


def total_limit_call(netns, argv0, env, n):
    """`argv0 -S INPUT z*n` + FILLER, whose total size is near ARG_MAX (a quarter of the stack
    limit); None when the caller's own exec is refused (E2BIG)."""
    try:
        return call(netns, [argv0, b"-S", b"INPUT", b"z" * n] + FILLER, env)[0]
    except OSError as e:
        assert e.errno == errno.E2BIG
        return None


def largest_accepted(netns, argv0, env):
    lo, hi = 0, MAX_ARG_STRLEN - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total_limit_call(netns, argv0, env, mid) is None:
            hi = mid - 1
        else:
            lo = mid
    return lo


@pytest.mark.slow
def test_argv_at_the_total_limit(netns, cache_dir):
    """At the total limit (ARG_MAX) the shim passes argv whole: the largest argv the caller can
    exec at all reaches the real binary unchanged (its error echoes the whole argument), and one
    byte more is refused by the kernel at the caller's own exec, as a direct call is. The bytes lost
    against a direct call are printed (the interpreter line and argv[0] of the variant count)."""
    env = shim_env(cache_dir, **CONTAINER)
    direct_max = largest_accepted(netns, b"iptables-nft", env)
    shim_max = largest_accepted(netns, b"iptables", env)
    lost = max(0, direct_max - shim_max)
    print("argv total limit: direct %d, through the shim %d, lost %d bytes" % (direct_max, shim_max, lost))
    assert direct_max > MAX_ARG_STRLEN // 2 and lost < 200, (direct_max, shim_max)
    at = total_limit_call(netns, b"iptables", env, shim_max)
    if at.returncode == 127:  # the shim's own execv was refused: one clear line, nothing ran
        line = shim_error_line(at)
        assert line.startswith("iptables-shim: cannot execute") and "too long" in line, line
    else:
        assert at.returncode == 2 and b"z" * shim_max + b"'" in at.stderr, at.stderr[:200]
    assert total_limit_call(netns, b"iptables", env, shim_max + 1) is None
    n = min(direct_max, shim_max)
    d, s = (total_limit_call(netns, name, env, n) for name in (b"iptables-nft", b"iptables"))
    assert (s.returncode, s.stdout, s.stderr) == (d.returncode, d.stdout, d.stderr)


@pytest.mark.parametrize("name,direct", [("iptables-restore", "iptables-nft-restore"),
                                          ("ip6tables-restore", "ip6tables-nft-restore")])
def test_binary_garbage_on_stdin_to_restore(netns, cache_dir, name, direct):
    """Random bytes (NULs, invalid UTF-8, very long lines) and garbage after a valid header, fed to
    the real binary directly in one fresh netns and through the shim in another: the same stdout,
    stderr and exit code, and the same kernel state afterwards (whatever the binary made of it)."""
    with Netns.create("shimtwin-") as twin:
        env = shim_env(cache_dir, **CONTAINER)
        rng = random.Random(1234)
        inputs = [bytes(rng.randrange(256) for _ in range(65536)),
                  b"*filter\n" + bytes(rng.randrange(256) for _ in range(4096)) + b"\nCOMMIT\n",
                  b"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT " + b"\x00\xff" * 3000 + b"\nCOMMIT\n",
                  b"*filter\n-A INPUT -s " + b"1" * 200000 + b"\nCOMMIT\n",
                  b"\n" * 100000]
        for data in inputs:
            d, _ = call(netns, [direct], env, input=data)
            s, _ = call(twin, [name], env, input=data)
            assert (s.returncode, s.stdout, s.stderr) == (d.returncode, d.stdout, d.stderr), data[:40]
            assert twin.snapshot() == netns.snapshot()
        assert netns.legacy_tables() == []
