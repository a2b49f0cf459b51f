"""Host or container: do the binaries on PATH belong to the host's own filesystem?

Decided from namespaces and roots, never from marker files: /.dockerenv exists on plain VMs, and
`ip netns exec` gives a new mount namespace on the host's own root. Read on every call where a
host's alias could answer (docs/decision.md#cache): a few stat calls with the builtin posix module,
not os.
"""

import posix

PROC_PID_INIT_INO = 0xEFFFFFFC  # inode of the initial PID namespace
PROC_MNT_INIT_INO = 0xEFFFFFF8  # inode of the initial mount namespace (recent kernels)


def _identity(path):
    st = posix.stat(path)
    return st.st_dev, st.st_ino


def detect_context(proc="/proc", root="/"):
    """Return (context, why) with context `host` or `container`."""
    try:
        pid_ns = posix.stat(proc + "/self/ns/pid").st_ino
    except OSError:
        return "container", "no /proc/self/ns/pid to read: not the host's view of the system"
    if pid_ns != PROC_PID_INIT_INO:
        return "container", "in a PID namespace other than the initial one"
    try:
        own_root = _identity(root)
    except OSError:
        return "container", "/ cannot be read"
    # The root of PID 1, or of kthreadd (PID 2, a kernel thread, always on the real root) where
    # PID 1's cannot be read, which happens even to root under some security modules.
    for pid in ("1", "2"):
        try:
            host_root = _identity(proc + "/" + pid + "/root")
        except OSError:
            continue
        if own_root == host_root:
            return "host", "initial PID namespace, / is the root of PID %s" % pid
        return "container", "initial PID namespace, but / is not the root of PID %s (chroot)" % pid
    try:
        mnt_ns = posix.stat(proc + "/self/ns/mnt").st_ino
    except OSError:
        mnt_ns = None
    if mnt_ns == PROC_MNT_INIT_INO:
        return "host", "initial PID and mount namespaces"
    # A hostPID container and `ip netns exec` on the host look alike from here. Saying "container"
    # lets the netns's rules and hints decide (steps 3-5), which is right in both; saying "host"
    # would hand a container's call to its image's alias, the failure this project prevents.
    return "container", ("initial PID namespace but not the initial mount namespace, and the roots "
                         "of PID 1 and 2 cannot be read: not provably the host's filesystem")
