"""x_tables (legacy): which tables exist, does one hold a rule, does mangle hold kubelet's hint?
Asked of the kernel, read-only, with the standard library only.

/proc/net/ip{,6}_tables_names first: no legacy table in this netns, no further system call. For the
tables listed there, and only those (asking for any other would create it in this netns), the
x_tables socket options on a raw socket: IPT_SO_GET_INFO gives the built-in chains' entry and
policy offsets, so a rule in a built-in chain shows without reading the table. The entries
(IPT_SO_GET_ENTRIES) are read only where the answer needs them: `mangle` when it has user chains
(their names carry the hint), and a table whose built-in chains are empty but which has user chains
(a chain with no rule and a chain with one cannot be told apart by counting entries alone).

Only a missing /proc file (ip_tables not loaded) means "no tables"; one that cannot be read (it is
0440 root: EACCES for a caller with CAP_NET_ADMIN alone) leaves the fact unknown (SPEC "Facts").

`probe()` answers for the backend as a whole; `probe_families()` per family, for audits. The kernel
structures are declared once below as structs; the decoders are tested on replies recorded from a
real kernel (tests/unit/test_legacy_kernel.py).

Python's socket.getsockopt cannot pass a table name in, so getsockopt(2) is called through _ctypes
(the bare extension: `import ctypes` costs several milliseconds, this a fraction of one).
"""

import errno
import posix  # not os: its import (and _collections_abc's) costs a first call ~1 ms

from _struct import Struct  # what `struct` re-exports, without that module's own import
from _struct import error as StructError

from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, FamilyState, Unavailable

SOURCE = "kernel (x_tables sockopts)"

AF_INET, AF_INET6 = 2, 10
SOCK_RAW = 3
IPPROTO_RAW = 255
SOL_IP, SOL_IPV6 = 0, 41
SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO
SO_GET_ENTRIES = 65  # IPT_SO_GET_ENTRIES == IP6T_SO_GET_ENTRIES
NF_INET_NUMHOOKS = 5
ERROR_TARGET = b"ERROR"  # the target of a user chain's head and of the table's last entry

# Layouts (linux/netfilter_ipv4/ip_tables.h, netfilter_ipv6/ip6_tables.h, netfilter/x_tables.h), in
# host byte order, as a 64-bit kernel lays them out (8-byte aligned counters and targets).
# ipt_getinfo == ip6t_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
IPT_GETINFO = Struct("=32sI5I5III")
# ipt_get_entries == ip6t_get_entries: name[32], size; the entries follow, 8-byte aligned.
IPT_GET_ENTRIES = Struct("=32sI4x")
# ipt_entry: struct ipt_ip (84 bytes), nfcache, target_offset, next_offset, comefrom, counters
# (bytes, packets); the matches and the target follow.
IPT_ENTRY = Struct("=84sIHHIQQ")
# ip6t_entry: struct ip6t_ip6 (133 bytes, padded to 136), then the same fields; counters 8-aligned.
IP6T_ENTRY = Struct("=136sIHHI4xQQ")
# xt_entry_target: target_size, name[29], revision; the target's own data follows.
XT_ENTRY_TARGET = Struct("=H29sB")
XT_STANDARD_TARGET = Struct("=H29sBi4x")  # + verdict: a policy, a chain's tail (RETURN)
XT_ERROR_TARGET = Struct("=H29sB30s2x")  # + errorname: the name of the user chain it heads


class FamilyLayout(object):
    """How one iptables family reaches x_tables: socket family, sockopt level, the /proc file that
    lists its tables, its entry structure."""

    __slots__ = ("af", "level", "names_file", "entry")

    def __init__(self, af, level, names_file, entry):
        self.af = af
        self.level = level
        self.names_file = names_file
        self.entry = entry


LAYOUTS = {
    "iptables": FamilyLayout(AF_INET, SOL_IP, "net/ip_tables_names", IPT_ENTRY),
    "ip6tables": FamilyLayout(AF_INET6, SOL_IPV6, "net/ip6_tables_names", IP6T_ENTRY),
}


def legacy_tables(family, proc="/proc"):
    """Names of the legacy tables that exist for a family in this netns (no side effects): none
    where the file is missing (ip_tables not loaded); Unavailable where it cannot be read."""
    path = proc.rstrip("/") + "/" + LAYOUTS[family].names_file
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []  # ip_tables not loaded: no legacy table can exist
    except OSError as e:
        raise Unavailable("cannot read %s: %s" % (path, e.strerror or e))


def listed_xtables(proc="/proc"):
    """{family: the xtables-named legacy tables listed for it}; Unavailable if a list is unreadable."""
    return {family: [t for t in legacy_tables(family, proc) if t in XTABLES] for family in LAYOUTS}


def cstr(value):
    return value.split(b"\0", 1)[0]


class Info(object):
    """struct ipt_getinfo, decoded."""

    __slots__ = ("hooks", "hook_entry", "underflow", "num_entries", "size")

    def __init__(self, raw):
        if len(raw) < IPT_GETINFO.size:
            raise Unavailable("short IPT_SO_GET_INFO reply (%d bytes)" % len(raw))
        _, valid, *offsets, self.num_entries, self.size = IPT_GETINFO.unpack_from(raw)
        self.hooks = [h for h in range(NF_INET_NUMHOOKS) if valid & (1 << h)]
        self.hook_entry = offsets[:NF_INET_NUMHOOKS]
        self.underflow = offsets[NF_INET_NUMHOOKS:]

    def builtin_rules(self):
        """A built-in chain holds a rule when its first entry is not its policy."""
        return any(self.hook_entry[h] != self.underflow[h] for h in self.hooks)

    def user_chains_possible(self):
        """More entries than the built-in policies and the final ERROR entry: user chains or rules."""
        return self.num_entries > len(self.hooks) + 1

    def sizes_say_rules(self, entry):
        """True when the entry count and the table size cannot be those of a table without rules.

        Without rules, a table is B built-in policies (entry + standard target; the kernel checks
        they are unconditional), U user chains of a head (entry + error target) and a tail (entry +
        standard target, RETURN), and the final ERROR entry: 1 + B + 2U entries, and a size fixed by
        B and U. Anything else holds rules, and the entries need not be read. (The converse does not
        hold: an even number of rules averaging a head and a tail in size fits the same figures, so
        a table that fits is read.)"""
        policy = entry.size + XT_STANDARD_TARGET.size
        head = final = entry.size + XT_ERROR_TARGET.size
        extra = self.num_entries - len(self.hooks) - 1
        if extra < 0 or extra % 2:
            return True
        chains = extra // 2
        return self.size != len(self.hooks) * policy + chains * (head + policy) + final

    def says_rules(self, entry):
        """Do the figures alone show a rule (in a built-in chain, or by count and size)?"""
        return self.builtin_rules() or (self.user_chains_possible() and self.sizes_say_rules(entry))


def entries_needed(name, info, need_rules, need_hint):
    """Must a table's entries be read? Only where it may have user chains (else its figures said
    everything) and something is still to learn: mangle's chain names (the hint), or, while no
    table's figures have shown a rule, whether its user chains hold one."""
    return info.user_chains_possible() and (need_rules or (need_hint and name == HINT_TABLE))


def entries_of(blob, entry):
    """(offset, error name or None) of each entry of a table blob, in order."""
    offset = 0
    while offset < len(blob):
        try:
            _, _, target_offset, next_offset, _, _, _ = entry.unpack_from(blob, offset)
            _, target_name, _ = XT_ENTRY_TARGET.unpack_from(blob, offset + target_offset)
            error_name = None
            if cstr(target_name) == ERROR_TARGET:
                error_name = cstr(XT_ERROR_TARGET.unpack_from(blob, offset + target_offset)[3])
        except StructError:
            raise Unavailable("malformed x_tables entry at offset %d" % offset)
        if next_offset == 0 or target_offset >= next_offset:
            raise Unavailable("malformed x_tables entry at offset %d" % offset)
        yield offset, (error_name.decode("ascii", "replace") if error_name is not None else None)
        offset += next_offset


def walk(blob, info, entry, all_chains=True):
    """(has_rules, user chain names) from a table's entries. An entry is a rule unless it is a
    built-in chain's policy (at an underflow offset), a user chain's head (an ERROR target naming
    the chain), a user chain's tail (the entry just before the next head), or the final ERROR
    entry. all_chains=False stops at the first rule (the names are then incomplete)."""
    policies = set(info.underflow[h] for h in info.hooks)
    chains = []
    rules = False
    in_user_chain = False
    pending = None  # an entry of a user chain that is a rule unless a head follows it (its tail)
    for offset, error_name in entries_of(blob, entry):
        if error_name is not None:
            pending = None  # it was the tail
            chains.append(error_name)
            in_user_chain = True
            continue
        if pending is not None:
            rules = True
            if not all_chains:
                return True, chains
        pending = None
        if offset in policies:
            continue
        if in_user_chain:
            pending = offset
        else:
            rules = True
            if not all_chains:
                return True, chains
    if chains:
        chains.pop()  # the final ERROR entry ends the table; it names no chain
    return rules, chains


class Sockopt(object):
    """getsockopt(2) with an in/out buffer: the frozen tree's builtin _iptables_shim
    (packaging/launcher/shimsys.c: a static executable has no C library symbols for _ctypes to
    find), else through the _ctypes extension (ctypes as a fallback)."""

    def __init__(self):
        try:
            from _iptables_shim import getsockopt
        except ImportError:
            pass
        else:
            self.get = getsockopt  # the same contract as get() below
            return
        try:
            import _ctypes

            class c_int(_ctypes._SimpleCData):
                _type_ = "i"

            class c_uint(_ctypes._SimpleCData):
                _type_ = "I"

            class c_void_p(_ctypes._SimpleCData):
                _type_ = "P"

            class c_char(_ctypes._SimpleCData):
                _type_ = "c"

            class Libc(object):
                _handle = _ctypes.dlopen(None, 2)  # RTLD_NOW: the symbols of the running process

            class GetSockOpt(_ctypes.CFuncPtr):
                _argtypes_ = (c_int, c_int, c_int, c_void_p, c_void_p)
                _restype_ = c_int
                _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO

            self.call = GetSockOpt(("getsockopt", Libc()))
            self.c_uint, self.c_char, self.addressof, self.get_errno = (
                c_uint, c_char, _ctypes.addressof, _ctypes.get_errno)
            self.array = lambda n: type("buf", (_ctypes.Array,), {"_type_": c_char, "_length_": n})()
        except (ImportError, AttributeError, TypeError, OSError):
            self._with_ctypes()

    def _with_ctypes(self):
        try:
            import ctypes
        except ImportError:
            raise Unavailable("no ctypes to call getsockopt with a table name")
        self.call = ctypes.CDLL(None, use_errno=True).getsockopt
        self.call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        self.c_uint, self.addressof, self.get_errno = ctypes.c_uint, ctypes.addressof, ctypes.get_errno
        self.array = lambda n: (ctypes.c_char * n)()

    def get(self, fd, level, option, data):
        """(errno, bytes) of getsockopt(fd, level, option) with `data` as the buffer's input."""
        buf = self.array(len(data))
        buf.raw = data
        length = self.c_uint(len(data))
        if self.call(fd, level, option, self.addressof(buf), self.addressof(length)) != 0:
            return self.get_errno() or -1, None
        return 0, buf.raw[:length.value]


def sockopt_refused(option, err):
    """The Unavailable to raise for a socket option the kernel refused with errno `err`."""
    return Unavailable("%s refused: %s" % (option, posix.strerror(err) if err > 0 else "unknown error"))


def read_info(ask, name):
    """Info of one table, or None if it is gone since /proc listed it (no rules). `ask(option,
    data)` is getsockopt on the family's socket: (errno, bytes)."""
    err, raw = ask(SO_GET_INFO, name.encode("ascii").ljust(IPT_GETINFO.size, b"\0"))
    if err == errno.ENOENT:
        return None
    if err:
        raise sockopt_refused("IPT_SO_GET_INFO", err)
    return Info(raw)


def read_entries(ask, name, info):
    """(info, entry blob) of one table, both read again while the table changes under us (EAGAIN);
    None if it is gone."""
    for _ in range(5):
        head = IPT_GET_ENTRIES.pack(name.encode("ascii"), info.size)
        err, raw = ask(SO_GET_ENTRIES, head + bytes(info.size))
        if err == 0:
            return info, raw[IPT_GET_ENTRIES.size:IPT_GET_ENTRIES.size + info.size]
        if err == errno.ENOENT:
            return None
        if err != errno.EAGAIN:
            raise sockopt_refused("IPT_SO_GET_ENTRIES", err)
        info = read_info(ask, name)
        if info is None:
            return None
    raise Unavailable("table %s kept changing while being read" % name)


def family_state(layout, names, ask, want_rules=True, want_hint=True):
    """FamilyState of one family's listed tables. GET_INFO for each; the entries only where
    entries_needed() says so, mangle first (its read can answer both questions). A fact not wanted
    is left None unless the figures already answered it."""
    infos = {}
    for name in names:
        info = read_info(ask, name)
        if info is not None:
            infos[name] = info
    rules = any(info.says_rules(layout.entry) for info in infos.values())
    hint = False
    for name in sorted(infos, key=lambda table: table != HINT_TABLE):
        if not entries_needed(name, infos[name], want_rules and not rules, want_hint):
            continue
        read = read_entries(ask, name, infos[name])
        if read is None:
            continue
        info, blob = read
        need_hint = want_hint and name == HINT_TABLE
        table_rules, chains = walk(blob, info, layout.entry, all_chains=need_hint)
        rules = rules or table_rules
        if need_hint:
            hint = any(chain in HINT_CHAINS for chain in chains)
    return FamilyState(sorted(infos), rules if want_rules else (rules or None), hint if want_hint else None)


_SOCKOPTS = []


def shared_sockopt():
    """One Sockopt per process: building its ctypes types costs ~0.1 ms, paid once by a node
    audit that probes a thousand namespaces in one worker."""
    if not _SOCKOPTS:
        _SOCKOPTS.append(Sockopt())
    return _SOCKOPTS[0]


def over_sockets():
    """ask_family(layout, names, want_rules=True, want_hint=True) -> FamilyState, asked of the
    kernel on a raw socket of the family (opened and closed per call)."""
    import _socket  # not socket: that module pulls in enum and costs milliseconds per call

    opt = shared_sockopt()

    def ask_family(layout, names, want_rules=True, want_hint=True):
        try:
            sock = _socket.socket(layout.af, SOCK_RAW, IPPROTO_RAW)
        except OSError as e:
            raise Unavailable("raw socket refused: %s" % (e.strerror or e))
        try:
            fd = sock.fileno()
            return family_state(layout, names, lambda option, data: opt.get(fd, layout.level, option, data),
                                want_rules, want_hint)
        finally:
            sock.close()

    return ask_family


def probe(proc="/proc", ask_family=None):
    """(has_rules, has_hint) for x_tables in this netns, IPv4 or IPv6; raises Unavailable. What one
    family answered is not asked of the next. `ask_family` stands in for the kernel in tests
    (default: over_sockets())."""
    listed = listed_xtables(proc)
    if not any(listed.values()):
        return False, False
    ask_family = ask_family or over_sockets()
    rules = hint = False
    for family, names in listed.items():
        if names:
            state = ask_family(LAYOUTS[family], names, want_rules=not rules, want_hint=not hint)
            rules = rules or bool(state.rules)
            hint = hint or bool(state.hint)
    return rules, hint


def probe_families(proc="/proc", ask_family=None):
    """{"iptables": FamilyState, "ip6tables": FamilyState} for x_tables in this netns, every fact
    asked; raises Unavailable. `ask_family` as for probe()."""
    listed = listed_xtables(proc)
    if any(listed.values()):
        ask_family = ask_family or over_sockets()
    return {family: ask_family(LAYOUTS[family], names) if names else FamilyState((), False, False)
            for family, names in listed.items()}
