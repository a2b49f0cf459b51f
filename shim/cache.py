"""The per-netns cache: one small file per network namespace holding a backend name and why.

Never a path to execute. Trusted only when it and its directory are what this user alone could have
written; anything else is ignored and, for entries, replaced.
"""

import os
import stat

DEFAULT_DIR = "/run/iptables-shim"  # tmpfs: cleared at reboot, like the rules it describes
BACKENDS = ("nft", "legacy")
MAX_ENTRY = 4096
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def cache_dir(env):
    """The cache directory for this environment, or None when the cache is off."""
    if env.get("IPTABLES_SHIM_CACHE", "").lower() == "off":
        return None
    return env.get("IPTABLES_SHIM_CACHE_DIR") or DEFAULT_DIR


def _trusted(st, want_dir):
    kind_ok = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_dir(directory):
    try:
        return _trusted(os.lstat(directory), want_dir=True)
    except OSError:
        return False


def parse_entry(data):
    """(backend, step, reason) from an entry's bytes, or None if it is not a whole valid entry."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n") or text.count("\n") != 1:
        return None  # truncated, or not written by us
    parts = text[:-1].split(" ", 2)
    if len(parts) != 3 or parts[0] not in BACKENDS or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def format_entry(backend, step, reason):
    return ("%s %d %s\n" % (backend, step, " ".join(reason.split()))).encode("utf-8")


def load(directory, key):
    """The cached (backend, step, reason) for key, or None if absent or untrusted."""
    if not _trusted_dir(directory):
        return None
    try:
        fd = os.open(os.path.join(directory, key), _OPEN_FLAGS)  # a symlink fails with ELOOP
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(fd), want_dir=False):
            return None
        return parse_entry(os.read(fd, MAX_ENTRY))
    except OSError:
        return None
    finally:
        os.close(fd)


def store(directory, key, backend, step, reason):
    """Write an entry atomically (temporary file, then rename over whatever was there).
    Returns False when the cache cannot be used; the caller works on without it."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    if not _trusted_dir(directory):
        return False
    tmp = os.path.join(directory, ".%s.%d.tmp" % (key, os.getpid()))
    try:
        os.unlink(tmp)  # left by a process that died mid-write with the same PID
    except OSError:
        pass
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            data = format_entry(backend, step, reason)
            if os.write(fd, data) != len(data):  # a file size limit or quota cut it short
                raise OSError("short write")
        finally:
            os.close(fd)
        # rename replaces a symlink or a bad file itself, never what a symlink points to.
        os.rename(tmp, os.path.join(directory, key))
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
