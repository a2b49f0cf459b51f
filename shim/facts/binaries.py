"""Which real iptables binaries are on PATH, never counting a shim, and which backend an alias runs.

Searched on every call, cache hit included: builtin posix and plain strings here, not os and
os.path, whose import costs about a millisecond of the call (tests/test_hot_path.py,
docs/benchmark.md). The --version probe, on the cold path only, imports subprocess (and os) when it
runs. The parsers (parse_version, backend_from_links, search_dirs) are tested without root in
tests/unit/test_binaries.py.
"""

import posix
import stat  # pure constants over the builtin _stat; imports nothing else

OLD_MULTI = "xtables-multi"  # iptables < 1.8, which had only the legacy backend

# Set in the environment of anything the shim runs that could itself be a shim (an alias, a
# probe): a second copy of the shim that sees it stops instead of recursing.
REENTRY_MARKER = "IPTABLES_SHIM_CALLER"


def identity(path):
    """(st_dev, st_ino) of what path leads to, symlinks followed; None if it cannot be read."""
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def search_dirs(path_env):
    """The PATH entries searched. Relative and empty ones (the working directory) are skipped:
    the shim runs as root, and a command resolved from wherever the caller happens to stand is a
    classic way to run a planted binary. So are world-writable directories (even sticky ones such
    as /tmp), where any local user could have planted one. Missing and unreadable entries stay:
    nothing is found in them, as execvp finds nothing there."""
    dirs = []
    for d in (path_env or "").split(":"):
        if not d.startswith("/"):
            continue
        try:
            if posix.stat(d).st_mode & stat.S_IWOTH:
                continue
        except OSError:
            pass
        dirs.append(d)
    return dirs


FROZEN_MARK = "iptables-shim.frozen"  # beside a frozen shim's executable (packaging/build.sh)
SHIM_MARK = b"from shim.main import main"  # the entry script's own line: found in a copy of it too


def beside(path, name):
    """`name` in the directory of `path` as written, as os.path.join(os.path.dirname(path), name);
    an absolute name stays. The kernel resolves a symlinked directory and `..` in the result
    physically when it is used, as os.path.realpath would."""
    if name.startswith("/"):
        return name
    head, sep, _ = path.rpartition("/")
    return head + sep + name


def link_chain(path, known=None):
    """[path, what it links to, what that links to, ...] up to the file that is no symlink (at most
    40 links, the kernel's own limit). `known`: {path: its chain} already read in this search (the
    variants of a family all end in one multi-call binary), filled as it goes."""
    chain = [path]
    while len(chain) <= 40:
        if known is not None and chain[-1] in known:
            chain.extend(known[chain[-1]][1:])
            break
        try:
            target = posix.readlink(chain[-1])
        except OSError:  # not a symlink (EINVAL), or gone
            break
        chain.append(beside(chain[-1], target))
    chain = chain[:41]
    if known is not None:
        for i, p in enumerate(chain):
            known.setdefault(p, chain[i:])
    return chain


def read_head(path, size):
    """Every byte up to `size` of the regular file at path; None when it cannot be opened or read
    or is no regular file. O_NONBLOCK: a FIFO put in place of a candidate after its stat must not
    block the call:
    tests/test_fast_route_generated.py::test_a_candidate_swapped_for_a_fifo_after_its_stat_never_blocks."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOCTTY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(posix.fstat(fd).st_mode):
            return None
        data = b""
        while len(data) < size:
            chunk = posix.read(fd, size - len(data))
            if not chunk:
                break
            data += chunk
        return data
    except OSError:
        return None
    finally:
        posix.close(fd)


def is_shim_copy(path, st, known=None):
    """Is this a copy of the shim (another checkout's bin/, cp -r): the same entry script in another
    file, which file identity cannot tell. Only small files are read: real binaries are large.
    `known`: what this search already read (link chains, marker files), asked once each."""
    if st.st_size > 65536:
        # A frozen shim (packaging/build.sh) is a large executable: its tree carries a marker file.
        mark = beside(link_chain(path, known)[-1], FROZEN_MARK)
        if known is not None and (FROZEN_MARK, mark) in known:
            return known[(FROZEN_MARK, mark)]
        try:
            posix.stat(mark)
            found = True
        except OSError:
            found = False
        if known is not None:
            known[(FROZEN_MARK, mark)] = found
        return found
    head = read_head(path, 4096)
    return head is not None and SHIM_MARK in head


def find_on_path(names, path_env, shim_ids):
    """{name: path} of the first executable regular file for each name, skipping shims."""
    found = {}
    wanted = list(names)
    known = {}  # one search's reads of links and markers (the files may change between searches)
    for directory in search_dirs(path_env):
        for name in wanted:
            if name in found:
                continue
            path = directory.rstrip("/") + "/" + name
            try:
                st = posix.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in shim_ids or is_shim_copy(path, st, known):
                continue
            if st.st_mode & stat.S_IWOTH:
                continue  # a binary anyone may rewrite is not one root should run
            if posix.access(path, posix.X_OK):
                found[name] = path
        if len(found) == len(wanted):
            break
    return found


def backend_from_links(path):
    """The backend an alias runs, read from its symlink chain alone; None if the chain does not say."""
    for current in link_chain(path):
        name = current.rpartition("/")[2]
        for backend in ("nft", "legacy"):
            if name == "xtables-%s-multi" % backend or "-%s" % backend in name:
                return backend
        if name == OLD_MULTI:
            return "legacy"
    return None


def is_multicall_binary(path):
    """Does `path` lead by links to iptables' own multi-call binary: an ELF executable named
    xtables-{nft,legacy}-multi or xtables-multi? That binary never calls iptables through PATH, so
    it cannot start the shim again, and an exec into it needs no re-entry mark in the environment
    (tests/test_frozen_roots.py). A script of that name could (tests/test_loops.py)."""
    real = link_chain(path)[-1]
    if real.rpartition("/")[2] not in ("xtables-nft-multi", "xtables-legacy-multi", OLD_MULTI):
        return False
    return read_head(real, 4) == b"\x7fELF"


def parse_version(text):
    """Backend from `iptables --version` output: `(nf_tables)`, `(legacy)`, or a pre-1.8 version."""
    if "(nf_tables)" in text:
        return "nft"
    if "(legacy)" in text:
        return "legacy"
    words = text.split()
    for word in words:
        if word.startswith("v1."):
            minor = word[3:].split(".", 1)[0]
            if minor.isdigit() and int(minor) < 8:
                return "legacy"  # before 1.8 there was no nf_tables variant
    return None


def backend_from_version(path, caller, timeout=5):
    """Run `path --version` (stdin /dev/null, output captured); the backend it names, or None."""
    import os  # the cold path only; subprocess imports it anyway
    import subprocess

    env = dict(os.environ)
    env[REENTRY_MARKER] = caller
    try:
        proc = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return parse_version(proc.stdout.decode("utf-8", "replace"))


def alias_backend(path, caller):
    """(backend, how) for a default alias such as /usr/sbin/iptables."""
    backend = backend_from_links(path)
    if backend:
        return backend, "symlink chain"
    backend = backend_from_version(path, caller)
    if backend:
        return backend, "--version"
    return None, "unknown"
