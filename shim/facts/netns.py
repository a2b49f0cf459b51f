"""Which network namespace this process is in: a cache key, and whether it is the initial one."""

import os

PROC_NET_INIT_INO = 0xEFFFFFF9  # inode of the initial network namespace (include/linux/proc_ns.h)
SO_NETNS_COOKIE = 71  # Linux >= 5.14; a 64-bit id never reused during a boot
SOL_SOCKET = 1


def netns_key():
    """A string naming this netns for the cache, or None when neither source answers."""
    try:
        # _socket, not socket: the high-level module pulls in enum and costs milliseconds per call.
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            return "cookie-%d" % int.from_bytes(sock.getsockopt(SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        finally:
            sock.close()
    except (OSError, ImportError):
        pass
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    # An inode can be reused once a netns is gone; the cookie cannot, which is why it comes first.
    return "ino-%d-%d" % (st.st_dev, st.st_ino)


def netns_kind(proc="/proc"):
    """`host` for the initial network namespace, `pod` for any other, None if /proc cannot tell."""
    try:
        ino = os.stat(os.path.join(proc, "self/ns/net")).st_ino
    except OSError:
        return None
    return "host" if ino == PROC_NET_INIT_INO else "pod"
