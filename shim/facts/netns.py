"""Which network namespace this process is in: a cache key, and whether it is the initial one.

The key is read on every call: builtin modules only (posix, _socket), not os or socket."""

import posix

PROC_NET_INIT_INO = 0xEFFFFFF9  # inode of the initial network namespace (include/linux/proc_ns.h)
SO_NETNS_COOKIE = 71  # Linux >= 5.14; a 64-bit id never reused during a boot
SOL_SOCKET = 1


def netns_key():
    """A string naming this netns for the cache, or None when the kernel has no netns cookie
    (Linux < 5.14): then nothing is cached. The st_dev:st_ino of /proc/self/ns/net is no key: the
    inode of a deleted netns is reused by the next one within seconds, which then inherited the
    dead netns's decision and wrote rules into the wrong backend
    (tests/test_faults.py::test_recycled_netns_never_inherit_a_decision)."""
    try:
        # _socket, not socket: the high-level module pulls in enum and costs milliseconds per call.
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            return "cookie-%d" % int.from_bytes(sock.getsockopt(SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        finally:
            sock.close()
    except (OSError, ImportError):
        return None


def netns_kind(proc="/proc"):
    """`host` for the initial network namespace, `pod` for any other, None if /proc cannot tell."""
    try:
        ino = posix.stat(proc + "/self/ns/net").st_ino
    except OSError:
        return None
    return "host" if ino == PROC_NET_INIT_INO else "pod"


def inode_key(proc="/proc"):
    """The nsfs inode of this netns as a key, for kernels without the cookie only: reused by the
    next netns within seconds, so an entry under it is trusted only while the netns shows the
    trace of its backend (shim.resolve._remembered)."""
    try:
        st = posix.stat(proc + "/self/ns/net")
    except OSError:
        return None
    return "netns-ino-%d-%d" % (st.st_dev, st.st_ino)
