"""Every network namespace reachable on the node, each once, with who is in it.

Where they are found: the initial one (/proc/1/ns/net), the named ones (/run/netns/*,
/var/run/netns/*: `ip netns add` and CNI runtimes put pods' namespaces there) and those of every
process (/proc/PID/ns/net). One namespace is one nsfs file (st_dev, st_ino) at any instant; the
reader's netns cookie (shim.facts.netns) then names it for the cache and merges any two entries
that turn out to be the same namespace.

Who: the names, the processes (PID, comm, cmdline) and the container and pod their cgroup path
names (containerd `cri-containerd-<id>.scope`, cri-o `crio-<id>.scope`, docker `docker-<id>.scope`,
podman `libpod-<id>.scope`; kubelet's `kubepods...pod<uid>` slices, or the cgroupfs driver's
`/kubepods/<qos>/pod<uid>/<id>` and `/docker/<id>`).
"""

import os
import stat

from shim.facts.netns import PROC_NET_INIT_INO

NAMED_DIRS = ("/run/netns", "/var/run/netns")
SCOPE_RUNTIMES = (("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker"),
                  ("libpod-", "podman"))
CMDLINE_MAX = 200


class Namespace(object):
    """One network namespace: its nsfs identity and who is in it."""

    __slots__ = ("ident", "names", "pids", "explicit", "initial")

    def __init__(self, ident, initial):
        self.ident = ident  # (st_dev, st_ino) of its nsfs file
        self.names = []  # named paths (bind mounts) leading to it
        self.pids = []  # processes in it
        self.explicit = []  # --netns paths given for it
        self.initial = initial

    def paths(self, proc="/proc"):
        """Paths that may lead to it, most stable first: a process may exit and its PID be reused."""
        return self.explicit + self.names + ["%s/%d/ns/net" % (proc, p) for p in self.pids]


class NotANamespace(Exception):
    """A --netns path that does not exist or is no network namespace (the audit cannot run)."""


def nsfs_dev(proc="/proc"):
    """st_dev of the nsfs filesystem (every namespace file shares it), or None."""
    try:
        return os.stat(proc + "/self/ns/net").st_dev
    except OSError:
        return None


def initial_test(proc="/proc"):
    """ident -> is it the initial network namespace: PID 1's, as this /proc shows it (inside a PID
    namespace, that of its init: the node such a container audits), else the kernel's fixed inode
    of the initial netns (PID 1's link can be unreadable even to root under a security module)."""
    try:
        init = _ident(proc + "/1/ns/net")[0]
    except OSError:
        return lambda ident: ident[1] == PROC_NET_INIT_INO
    return lambda ident: ident == init


def _ident(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino), st


def named_paths():
    """Named namespace paths; /var/run is usually a link to /run, so one real path is kept once."""
    seen = set()
    out = []
    for directory in NAMED_DIRS:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(directory, entry)
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            out.append(path)
    return out


def process_ids(proc="/proc"):
    try:
        return sorted(int(e) for e in os.listdir(proc) if e.isdigit())
    except OSError:
        return []


def enumerate_all(proc="/proc"):
    """([Namespace], stale names, {errno text: PIDs whose namespace could not be read}).

    A stale name is a file under a netns directory that is no namespace (left behind when its
    namespace's bind mount went away)."""
    dev = nsfs_dev(proc)
    is_initial = initial_test(proc)
    found = {}
    stale = []
    hidden = {}

    def get(ident):
        if ident not in found:
            found[ident] = Namespace(ident, is_initial(ident))
        return found[ident]

    try:
        get(_ident("%s/1/ns/net" % proc)[0])
    except OSError:
        pass  # hidden: the initial namespace shows through the other processes in it
    for path in named_paths():
        try:
            ident, st = _ident(path)
        except OSError:
            continue  # deleted since the listing
        if dev is None or st.st_dev != dev:
            stale.append(path)
            continue
        get(ident).names.append(path)
    for pid in process_ids(proc):
        try:
            ident, _ = _ident("%s/%d/ns/net" % (proc, pid))
        except FileNotFoundError:
            continue  # exited, or a kernel thread
        except OSError as e:
            hidden.setdefault(e.strerror or str(e), []).append(pid)
            continue
        get(ident).pids.append(pid)
    namespaces = sorted(found.values(), key=_order)
    return namespaces, stale, hidden


def _order(ns):
    return (not ns.initial, not ns.names, ns.names[:1], ns.pids[:1], ns.ident)


def given(paths, proc="/proc"):
    """The namespaces named by --netns paths, in order, each once; raises NotANamespace."""
    dev = nsfs_dev(proc)
    is_initial = initial_test(proc)
    found = {}
    out = []
    for path in paths:
        try:
            ident, st = _ident(path)
        except OSError as e:
            raise NotANamespace("--netns %s: %s" % (path, e.strerror or e))
        if dev is None or st.st_dev != dev or stat.S_ISDIR(st.st_mode):
            raise NotANamespace("--netns %s is not a network namespace file (such as /run/netns/NAME "
                                "or /proc/PID/ns/net)" % path)
        kind = namespace_type(path)
        if kind is not None and kind != CLONE_NEWNET:
            raise NotANamespace("--netns %s is a namespace, but not a network namespace" % path)
        if ident not in found:
            found[ident] = Namespace(ident, is_initial(ident))
            out.append(found[ident])
        found[ident].explicit.append(path)
    return out


CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: its CLONE_NEW* type (Linux >= 4.11)


def namespace_type(path):
    """The CLONE_NEW* type of a namespace file, or None when it cannot be asked."""
    try:
        import fcntl  # builtin in Debian's python3-minimal
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO given or planted: no hang
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def open_namespace(ns, proc="/proc"):
    """(fd, path) of a file that still leads to this namespace, or (None, why) when it is gone.
    The open fd keeps the namespace alive while it is read, whatever happens to its names and
    processes meanwhile."""
    why = "no name or process leads to it any more"
    for path in ns.paths(proc):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            why = "%s: %s" % (path, e.strerror or e)
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            continue
        if (st.st_dev, st.st_ino) == ns.ident:
            return fd, path
        os.close(fd)  # the PID was reused, or the name re-created, by another namespace
        why = "%s now leads to another namespace" % path
    return None, why


def _read(path, limit=4096):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def container_of(cgroup_text):
    """{"runtime", "container", "pod"} from the text of /proc/PID/cgroup (missing keys: unknown)."""
    out = {}
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            name = part[:-6] if part.endswith(".scope") else part
            for prefix, runtime in SCOPE_RUNTIMES:
                if name.startswith(prefix):
                    rest = name[len(prefix):]
                    if rest.startswith("conmon-"):
                        continue  # the runtime's monitor process, not the container
                    if _hexid(rest):
                        out["runtime"], out["container"] = runtime, rest
            if name.endswith(".slice") and "-pod" in name:
                uid = name[:-6].rsplit("-pod", 1)[1]
                out["pod"] = uid.replace("_", "-")  # systemd escapes the pod UID's dashes
            elif part.startswith("pod") and len(part) > 30 and i > 0 and "kubepods" in parts[0]:
                out["pod"] = part[3:]
            elif _hexid(part) and i > 0 and "container" not in out:
                # cgroupfs drivers: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>
                out["container"] = part
                out.setdefault("runtime", "docker" if parts[0] == "docker" else
                               "podman" if parts[0].startswith("libpod") else "cri")
    return out


def _hexid(text):
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def process_info(pid, proc="/proc"):
    """{"pid", "comm", "cmdline", and "runtime"/"container"/"pod" where the cgroup path says}."""
    base = "%s/%d/" % (proc, pid)
    info = {"pid": pid}
    comm = _read(base + "comm")
    if comm is not None:
        info["comm"] = comm.decode("utf-8", "replace").strip()
    cmdline = _read(base + "cmdline", CMDLINE_MAX + 1)
    if cmdline is not None:
        text = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        info["cmdline"] = text[:CMDLINE_MAX]
    cgroup = _read(base + "cgroup", 16384)
    if cgroup is not None:
        info.update(container_of(cgroup.decode("utf-8", "replace")))
    return info
