"""Can the caller change iptables rules at all: CAP_NET_ADMIN in its effective set.

Read from /proc/self/status with the builtin posix module (the line `CapEff:` is the effective set
in hex). Relative to the caller's user namespace: the root of a user namespace holds it, and can
change the rules of a netns that namespace owns.
"""

import posix

CAP_NET_ADMIN = 12  # include/uapi/linux/capability.h


def net_admin(proc="/proc"):
    """(True, False or None, why)."""
    try:
        fd = posix.open(proc + "/self/status", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError as e:
        return None, "%s/self/status cannot be read: %s" % (proc, e.strerror)
    try:
        data = posix.read(fd, 16384)
    except OSError as e:
        return None, "%s/self/status cannot be read: %s" % (proc, e.strerror)
    finally:
        posix.close(fd)
    for line in data.split(b"\n"):
        if line.startswith(b"CapEff:"):
            try:
                effective = int(line[7:].strip(), 16)
            except ValueError:
                break
            if effective >> CAP_NET_ADMIN & 1:
                return True, "CAP_NET_ADMIN in the effective set"
            return False, "no CAP_NET_ADMIN in the effective set (CapEff %s)" % line[7:].strip().decode()
    return None, "no CapEff line in %s/self/status" % proc
