"""The image's distribution, from its os-release, and the fix for a missing variant in its words.

Read only where the shim refuses (a chosen backend without its binary, a kernel that can run only
the backend the image lacks: shim.policy.MissingVariant), never on a call that runs something
(tests/test_hot_path.py): the one-line error then says `apk add iptables-legacy` on Alpine and
that RHEL ships no legacy at all, instead of "install the legacy variant of iptables"
(docs/decision.md#errors-in-the-images-words).

- `read(root)`: the os-release the caller's root holds (/etc/os-release, else /usr/lib/os-release,
  as os-release(5) says), a bounded read that never raises: unreadable, oversized or garbage is
  a Distribution with no id and the reason in `why`.
- `parse(data)`: the pure parser of os-release(5)'s shell-like assignments (quotes, escapes).
- `fix_words(distribution, backend, family)`: the pure wording; None where the distribution is
  unknown or its packaging not established, and the caller keeps its generic words.
"""

import posix
import stat

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")  # os-release(5): the first that exists
MAX_BYTES = 65536  # a real os-release is well under 1 KiB
LEGACY, NFT = "legacy", "nft"


class Distribution(object):
    """What an os-release says, as plain data. id: its ID (lower case), None when there is none
    to read; id_like: the words of ID_LIKE; name: NAME, or PRETTY_NAME, or the ID; the rest as
    written (None when absent); why: where it was read, or why nothing was."""

    __slots__ = ("id", "id_like", "name", "pretty_name", "version_id", "home_url", "why")

    def __init__(self, id=None, id_like=(), name=None, pretty_name=None, version_id=None, home_url=None,
                 why=""):
        self.id = id
        self.id_like = tuple(id_like)
        self.name = name
        self.pretty_name = pretty_name
        self.version_id = version_id
        self.home_url = home_url
        self.why = why

    def __repr__(self):
        return "Distribution(%r, id_like=%r, name=%r, why=%r)" % (self.id, self.id_like, self.name, self.why)


UNKNOWN = Distribution(why="no os-release")


# -- reading: bounded, never raises ----------------------------------------------------------

def _read_file(path):
    """(bytes, None), or (None, why) where the file cannot serve; "missing" when it does not exist.
    O_NONBLOCK: a FIFO planted there must not hang the error path; only a regular file is read."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK | posix.O_NOCTTY)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, "%s cannot be opened: %s" % (path, getattr(e, "strerror", None) or e)
    try:
        if not stat.S_ISREG(posix.fstat(fd).st_mode):
            return None, "%s is not a regular file" % path
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = posix.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        return None, "%s cannot be read: %s" % (path, e.strerror)
    finally:
        posix.close(fd)
    if size > MAX_BYTES:
        return None, "%s is larger than %d bytes: not an os-release" % (path, MAX_BYTES)
    return b"".join(chunks), None


def read(root="/"):
    """The Distribution of the root the caller sees (`root` for tests)."""
    base = root.rstrip("/") + "/"
    for rel in OS_RELEASE:
        data, why = _read_file(base + rel)
        if data is None and why == "missing":
            continue  # os-release(5): only a missing /etc/os-release falls back to /usr/lib
        if data is None:
            return Distribution(why=why)
        return from_fields(parse(data), "/" + rel)
    return Distribution(why="no /etc/os-release or /usr/lib/os-release")


def from_fields(fields, where):
    ident = fields.get("ID", "").strip().lower() or None
    if ident is None:
        return Distribution(pretty_name=fields.get("PRETTY_NAME"), home_url=fields.get("HOME_URL"),
                            why="%s has no ID" % where)
    return Distribution(
        id=ident, id_like=fields.get("ID_LIKE", "").lower().split(),
        name=fields.get("NAME") or fields.get("PRETTY_NAME") or ident,
        pretty_name=fields.get("PRETTY_NAME"), version_id=fields.get("VERSION_ID"),
        home_url=fields.get("HOME_URL"), why="read from %s" % where)


# -- parsing: os-release(5), pure ------------------------------------------------------------

def _is_key(key):
    return bool(key) and (key[0].isalpha() or key[0] == "_") and all(
        c == "_" or ("0" <= c <= "9") or ("A" <= c <= "Z") or ("a" <= c <= "z") for c in key) and key.isascii()


def unquote(value):
    """A shell-like value as os-release(5) allows it: unquoted words with backslash escapes,
    '...' taken literally, "..." where a backslash escapes only $ ` " \\ (else it stays). None for
    what a shell would reject here (an unterminated quote, an unquoted blank)."""
    out, i, n = [], 0, len(value)
    while i < n:
        c = value[i]
        if c == "'":
            end = value.find("'", i + 1)
            if end < 0:
                return None
            out.append(value[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    return None
                c = value[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and value[i + 1] in '$`"\\':
                    out.append(value[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
        elif c == "\\":
            if i + 1 >= n:
                return None
            out.append(value[i + 1])
            i += 2
        elif c in " \t":
            return None  # an unquoted blank: a shell would run a command
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(data):
    """{KEY: value} of os-release bytes. Never raises: undecodable bytes are replaced, lines that
    are no assignment (comments, garbage, a bad quote) skipped, the last assignment wins."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    fields = {}
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not _is_key(key):
            continue
        value = unquote(value)
        if value is not None:
            fields[key] = value
    return fields


# -- the words: pure -------------------------------------------------------------------------

RHEL_LIKE = ("rhel", "centos", "rocky", "almalinux", "ol")  # nft only: legacy from EPEL alone
DEBIAN_LIKE = ("debian", "ubuntu")
WOLFI_LIKE = ("wolfi", "chainguard")
NO_LEGACY = ("talos",)  # known to ship no legacy iptables at all
UNWORDED = ("amzn",)  # its ID_LIKE (centos rhel fedora) would give words not established for it
MULTI = {LEGACY: "xtables-legacy-multi", NFT: "xtables-nft-multi"}


def kind(distribution):
    """The family whose packaging decides the words: "distroless", "alpine", "debian", "fedora",
    "rhel", "wolfi", "talos", or None. ID first, then ID_LIKE in its order (ID=rocky
    ID_LIKE="rhel centos fedora" is rhel; fedora only as the ID itself, since RHEL's rebuilds
    name it in ID_LIKE too)."""
    d = distribution
    if d is None or not d.id:
        return None
    if (d.pretty_name or "").strip().lower().startswith("distroless") or \
            "googlecontainertools/distroless" in (d.home_url or "").lower():
        return "distroless"
    if d.id in UNWORDED:
        return None
    for word in (d.id,) + d.id_like:
        if word in RHEL_LIKE:
            return "rhel"
        if word in DEBIAN_LIKE:
            return "debian"
        if word in WOLFI_LIKE:
            return "wolfi"
        if word in NO_LEGACY:
            return "talos"
        if word == "alpine":
            return "alpine"
        if word == "fedora" and word == d.id:
            return "fedora"
    return None


def _version(text):
    """(major, minor) of a VERSION_ID such as "3.18.4" or "9.4", or None."""
    parts = (text or "").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def fix_words(distribution, backend, family=None):
    """What to do to get `backend`'s binaries, in the distribution's words; None: no such words
    (unknown distribution), keep the generic ones. `family`: "iptables" or "ip6tables" where only
    one is missing (Wolfi packs the ip6tables names apart), None for both."""
    k = kind(distribution)
    if k is None:
        return None
    d = distribution
    name = d.name or d.id
    if k == "distroless":
        return ("%s has no package manager: copy the %s variant in at image build time from a Debian "
                "stage (COPY --from: %s, its %s-%s* links and the libraries ldd lists)"
                % (d.pretty_name or "distroless", backend, "/usr/sbin/" + MULTI[backend], family or "iptables",
                   backend))
    if k == "debian":
        return "apt-get install iptables (%s's iptables package holds both variants)" % name
    if k == "alpine":
        version = _version(d.version_id)
        if backend == NFT:
            return "apk add iptables (Alpine's iptables is nf_tables from 3.19)"
        if version is not None and version < (3, 19):
            return "apk add iptables (before Alpine 3.19 its iptables package is the legacy variant)"
        return "apk add iptables-legacy (Alpine 3.19+ ships legacy apart from iptables, which is nf_tables)"
    if k == "wolfi":
        package = {"iptables": "iptables", "ip6tables": "iptables ip6tables"}.get(family, "iptables ip6tables")
        return ("apk add %s (%s's iptables package holds both variants, the ip6tables names are in ip6tables)"
                % (package, name))
    if k == "fedora":
        return "dnf install iptables-%s" % backend
    if k == "rhel":
        version = _version(d.version_id)
        if version is not None and version[0] < 8:
            return None  # RHEL/CentOS 7: legacy only, from another era of packaging: not worded here
        if backend == NFT:
            return "dnf install iptables-nft"
        epel = ("enable EPEL, then dnf install iptables-legacy" if d.id == "rhel"
                else "dnf install epel-release && dnf install iptables-legacy")
        return ("%s ships no legacy iptables (only EPEL's iptables-legacy: %s), or move the writer to "
                "nf_tables" % (name, epel))
    if k == "talos":
        if backend == LEGACY:
            return "%s ships no legacy iptables: move the writer to nf_tables" % name
        return None
    return None
