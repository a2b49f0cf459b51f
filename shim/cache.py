"""The per-netns cache: one small file per network namespace holding a backend name and why.

Never a path to execute. Trusted only when it and its directory are what this user alone could have
written; anything else is ignored and, for entries, replaced.

Read on every call (a cache hit), so it uses the builtin posix module, not os: importing os costs
about a millisecond, as much as the rest of the shim's own work on a hit (tests/test_hot_path.py).
What is stored, and why only that: docs/decision.md#cache.
"""

import errno  # builtin
import posix
import stat  # pure constants over the builtin _stat; imports nothing else

from shim.tools import BACKENDS

DEFAULT_DIR = "/run/iptables-shim"  # tmpfs: cleared at reboot, like the rules it describes
MAX_ENTRY = 4096  # bytes in one entry
MAX_ENTRIES = 1024  # entries in the directory before the older half is pruned
KEY_PREFIXES = ("cookie-", "netns-ino-")  # netns.netns_key(), netns.inode_key(): the only entries pruned
_OPEN_FLAGS = posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC
_DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC


def cache_dir(cache_setting, dir_setting):
    """The cache directory (IPTABLES_SHIM_CACHE_DIR or the default), or None when
    IPTABLES_SHIM_CACHE=off."""
    if cache_setting == "off":
        return None
    return dir_setting or DEFAULT_DIR


def _trusted(st, want_dir):
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == posix.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_dir(path):
    """A descriptor of the directory at path itself, never of what a symlink there leads to; OSError
    if it cannot be opened so. Trailing slashes go first: with one, the kernel follows a final
    symlink even under O_NOFOLLOW. A last component `.` or `..` names what is behind the component
    before it (a symlink, maybe): refused. Everything under it is then opened relative to the
    descriptor, so the directory checked is the one read (docs/reliability.md#what-the-shim-trusts;
    tests/test_fast_route_generated.py::test_a_symlink_or_fifo_is_trusted_by_neither_route)."""
    path = path.rstrip("/") or "/"
    if path.rpartition("/")[2] in (".", ".."):
        raise OSError(errno.EINVAL, "a directory named by . or ..", path)
    return posix.open(path, _DIR_FLAGS)


def _trusted_dir(directory):
    """open_dir(directory) when it is this user's alone, else None."""
    try:
        fd = open_dir(directory)
    except OSError:
        return None
    try:
        if _trusted(posix.fstat(fd), want_dir=True):
            return fd
    except OSError:
        pass
    posix.close(fd)
    return None


def parse_entry(data):
    """(backend, step, reason) from an entry's bytes, or None if it is not a whole valid entry."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n") or text.count("\n") != 1:
        return None  # truncated, or not written by us
    parts = text[:-1].split(" ", 2)
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses (a traceback).
    if len(parts) != 3 or parts[0] not in BACKENDS or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    return parts[0], int(parts[1]), parts[2]


def format_entry(backend, step, reason):
    return ("%s %d %s\n" % (backend, step, " ".join(reason.split()))).encode("utf-8")


def load(directory, key):
    """The cached (backend, step, reason) for key, or None if absent or untrusted."""
    dir_fd = _trusted_dir(directory)
    if dir_fd is None:
        return None
    try:
        fd = posix.open(key, _OPEN_FLAGS, dir_fd=dir_fd)  # a symlink fails with ELOOP
    except OSError:
        return None
    finally:
        posix.close(dir_fd)
    try:
        if not _trusted(posix.fstat(fd), want_dir=False):
            return None
        return parse_entry(posix.read(fd, MAX_ENTRY))
    except OSError:
        return None
    finally:
        posix.close(fd)


def store(directory, key, backend, step, reason):
    """Write an entry atomically (temporary file, then rename over whatever was there).
    Returns False when the cache cannot be used; the caller works on without it."""
    try:
        posix.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    dir_fd = _trusted_dir(directory)
    if dir_fd is None:
        return False
    try:
        return _store_in(dir_fd, key, backend, step, reason)
    finally:
        posix.close(dir_fd)


def _store_in(dir_fd, key, backend, step, reason):
    """store() in the directory checked, by its descriptor: what a rename of the directory or of
    a component above it does meanwhile changes nothing."""
    tmp = ".%s.%d.tmp" % (key, posix.getpid())
    try:
        posix.unlink(tmp, dir_fd=dir_fd)  # left by a process that died mid-write with the same PID
    except OSError:
        pass
    try:
        fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC,
                        0o600, dir_fd=dir_fd)
    except OSError:
        return False
    from shim.writes import write_whole  # the cold path only

    try:
        try:
            # A file-size limit (EFBIG, never SIGXFSZ's death) or a quota cuts it short: removed below.
            if not write_whole(fd, format_entry(backend, step, reason)):
                raise OSError("short write")
        finally:
            posix.close(fd)
        # rename replaces a symlink or a bad file itself, never what a symlink points to.
        posix.rename(tmp, key, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        try:
            posix.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        return False
    prune(dir_fd)
    return True


def prune(dir_fd, limit=MAX_ENTRIES):
    """Past `limit` entries, delete the older half. A node that churns pods leaves one entry per
    dead netns (cookies are never reused, so those are never read again); an entry deleted while
    its netns lives costs that netns one cold decision, nothing more. Called after a store: the
    cold path, once per netns."""
    try:
        names = [n for n in posix.listdir(dir_fd) if n.startswith(KEY_PREFIXES)]
    except OSError:
        return
    if len(names) <= limit:
        return
    aged = []
    for name in names:
        try:
            aged.append((posix.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime, name))
        except OSError:
            pass
    aged.sort()
    for _, name in aged[:len(aged) - limit // 2]:
        try:
            posix.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
