"""x_tables (legacy): does a table hold a rule, does mangle hold kubelet's hint? Asked of the kernel,
read-only, with the standard library only.

/proc/net/ip{,6}_tables_names first: no legacy table in this netns, no further system call. For the
tables listed there, and only those (asking for any other would create it in this netns), the
x_tables socket options on a raw socket: IPT_SO_GET_INFO gives the built-in chains' entry and
policy offsets, so a rule in a built-in chain shows without reading the table. The entries
(IPT_SO_GET_ENTRIES) are read only where the answer needs them: `mangle` when it has user chains
(their names carry the hint), and a table whose built-in chains are empty but which has user chains
(a chain with no rule and a chain with one cannot be told apart by counting entries alone).

Python's socket.getsockopt cannot pass a table name in, so getsockopt(2) is called through _ctypes
(the bare extension: `import ctypes` costs several milliseconds, this a fraction of one).
"""

import os
import sys

from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, Unavailable

SOURCE = "kernel (x_tables sockopts)"

AF_INET, AF_INET6 = 2, 10
SOCK_RAW = 3
IPPROTO_RAW = 255
SOL_IP, SOL_IPV6 = 0, 41
SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO
SO_GET_ENTRIES = 65  # IPT_SO_GET_ENTRIES == IP6T_SO_GET_ENTRIES
EAGAIN, ENOENT = 11, 2
TABLE_NAME_LEN = 32  # XT_TABLE_MAXNAMELEN
NF_INET_NUMHOOKS = 5

# struct ipt_getinfo / ip6t_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5],
# num_entries, size (all unsigned int): 84 bytes.
GETINFO_LEN = 84
GI_VALID_HOOKS, GI_HOOK_ENTRY, GI_UNDERFLOW, GI_NUM_ENTRIES, GI_SIZE = 32, 36, 56, 76, 80
# struct ipt_get_entries: name[32], size, then the entries 8-byte aligned.
GET_ENTRIES_HEAD = 40
# struct xt_entry_target: u16 target_size, char name[29], u8 revision; the error target's
# errorname[30] follows at 32.
TARGET_NAME_AT, TARGET_NAME_LEN, ERRORNAME_AT, ERRORNAME_LEN = 2, 29, 32, 30
ERROR_TARGET = b"ERROR"

STANDARD_TARGET_LEN, ERROR_TARGET_LEN = 40, 64  # struct xt_standard_target, xt_error_target

# family: (address family, sockopt level, /proc/net file, sizeof(struct ipt_entry / ip6t_entry),
# offsetof(entry, target_offset)); next_offset follows target_offset in both.
FAMILIES = {
    "iptables": (AF_INET, SOL_IP, "net/ip_tables_names", 112, 88),
    "ip6tables": (AF_INET6, SOL_IPV6, "net/ip6_tables_names", 168, 140),
}

_BO = sys.byteorder


def legacy_tables(family, proc="/proc"):
    """Names of the legacy tables that exist for a family in this netns (no side effects)."""
    try:
        with open(os.path.join(proc, FAMILIES[family][2])) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError:
        return []  # ip_tables not loaded: no legacy table can exist


def _u32(data, offset):
    return int.from_bytes(data[offset:offset + 4], _BO)


def _u16(data, offset):
    return int.from_bytes(data[offset:offset + 2], _BO)


def _cstr(data, offset, length):
    return data[offset:offset + length].split(b"\0", 1)[0]


class Info(object):
    """struct ipt_getinfo, decoded."""

    def __init__(self, raw):
        valid = _u32(raw, GI_VALID_HOOKS)
        self.hooks = [h for h in range(NF_INET_NUMHOOKS) if valid & (1 << h)]
        self.hook_entry = [_u32(raw, GI_HOOK_ENTRY + 4 * h) for h in range(NF_INET_NUMHOOKS)]
        self.underflow = [_u32(raw, GI_UNDERFLOW + 4 * h) for h in range(NF_INET_NUMHOOKS)]
        self.num_entries = _u32(raw, GI_NUM_ENTRIES)
        self.size = _u32(raw, GI_SIZE)

    def builtin_rules(self):
        """A built-in chain holds a rule when its first entry is not its policy."""
        return any(self.hook_entry[h] != self.underflow[h] for h in self.hooks)

    def user_chains_possible(self):
        """More entries than the built-in policies and the final ERROR entry: user chains or rules."""
        return self.num_entries > len(self.hooks) + 1

    def sizes_say_rules(self, entry_len):
        """True when the entry count and the table size cannot be those of a table without rules.

        Without rules, a table is B built-in policies (entry + standard target; the kernel checks
        they are unconditional), U user chains of a head (entry + error target) and a tail (entry +
        standard target, RETURN), and the final ERROR entry: 1 + B + 2U entries, and a size fixed by
        B and U. Anything else holds rules, and the entries need not be read. (The converse does not
        hold: an even number of rules averaging a head and a tail in size fits the same figures, so
        a table that fits is read.)"""
        policy = entry_len + STANDARD_TARGET_LEN
        head = final = entry_len + ERROR_TARGET_LEN
        extra = self.num_entries - len(self.hooks) - 1
        if extra < 0 or extra % 2:
            return True
        chains = extra // 2
        return self.size != len(self.hooks) * policy + chains * (head + policy) + final


def entries_of(blob, target_offset_at):
    """(offset, error name or None) of each entry of a table blob, in order."""
    offset = 0
    while offset < len(blob):
        target = offset + _u16(blob, offset + target_offset_at)
        step = _u16(blob, offset + target_offset_at + 2)
        if step == 0 or target >= offset + step:
            raise Unavailable("malformed x_tables entry at offset %d" % offset)
        if _cstr(blob, target + TARGET_NAME_AT, TARGET_NAME_LEN) == ERROR_TARGET:
            yield offset, _cstr(blob, target + ERRORNAME_AT, ERRORNAME_LEN).decode("ascii", "replace")
        else:
            yield offset, None
        offset += step


def walk(blob, info, target_offset_at, all_chains=True):
    """(has_rules, user chain names) from a table's entries. An entry is a rule unless it is a
    built-in chain's policy (at an underflow offset), a user chain's head (an ERROR target naming
    the chain), a user chain's tail (the entry just before the next head), or the final ERROR
    entry. all_chains=False stops at the first rule (the names are then incomplete)."""
    policies = set(info.underflow[h] for h in info.hooks)
    chains = []
    rules = False
    in_user_chain = False
    pending = None  # an entry of a user chain that is a rule unless a head follows it (its tail)
    for offset, error_name in entries_of(blob, target_offset_at):
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
    """getsockopt(2) with an in/out buffer, through the _ctypes extension (ctypes as a fallback)."""

    def __init__(self):
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


def _table_name(name):
    return name.encode("ascii").ljust(TABLE_NAME_LEN, b"\0")[:TABLE_NAME_LEN]


def _refused(what, err):
    return Unavailable("%s refused: %s" % (what, os.strerror(err) if err > 0 else "unknown error"))


def read_info(opt, fd, level, name):
    err, raw = opt.get(fd, level, SO_GET_INFO, _table_name(name).ljust(GETINFO_LEN, b"\0"))
    if err == ENOENT:
        return None  # gone since /proc listed it: no rules
    if err:
        raise _refused("IPT_SO_GET_INFO", err)
    return Info(raw)


def read_entries(opt, fd, level, name, info):
    """(info, entry blob) of one table, both read again while the table changes under us (EAGAIN);
    None if it is gone."""
    for _ in range(5):
        head = _table_name(name) + info.size.to_bytes(4, _BO)
        err, raw = opt.get(fd, level, SO_GET_ENTRIES, head.ljust(GET_ENTRIES_HEAD + info.size, b"\0"))
        if err == 0:
            return info, raw[GET_ENTRIES_HEAD:GET_ENTRIES_HEAD + info.size]
        if err == ENOENT:
            return None
        if err != EAGAIN:
            raise _refused("IPT_SO_GET_ENTRIES", err)
        info = read_info(opt, fd, level, name)
        if info is None:
            return None
    raise Unavailable("table %s kept changing while being read" % name)


def probe(proc="/proc"):
    """(has_rules, has_hint) for x_tables in this netns, IPv4 or IPv6; raises Unavailable."""
    listed = {family: [t for t in legacy_tables(family, proc) if t in XTABLES] for family in FAMILIES}
    if not any(listed.values()):
        return False, False
    import _socket  # not socket: that module pulls in enum and costs milliseconds per call

    opt = Sockopt()
    rules = hint = False
    for family, (af, level, _, entry_len, target_offset_at) in FAMILIES.items():
        if not listed[family]:
            continue
        try:
            sock = _socket.socket(af, SOCK_RAW, IPPROTO_RAW)
        except OSError as e:
            raise Unavailable("raw socket refused: %s" % (e.strerror or e))
        try:
            infos = {}
            for name in listed[family]:
                info = read_info(opt, sock.fileno(), level, name)
                if info is not None:
                    infos[name] = info
                    rules = rules or info.builtin_rules()
                    if not rules and info.user_chains_possible() and info.sizes_say_rules(entry_len):
                        rules = True
            # The entries, only where still needed: mangle's chain names for the hint, and a
            # table whose figures fit "no rules" while rules are not yet known.
            for name, info in sorted(infos.items(), key=lambda item: item[0] != HINT_TABLE):
                need_hint = name == HINT_TABLE and not hint
                if not info.user_chains_possible() or not (need_hint or not rules):
                    continue
                read = read_entries(opt, sock.fileno(), level, name, info)
                if read is None:
                    continue
                info, blob = read
                table_rules, chains = walk(blob, info, target_offset_at, all_chains=need_hint)
                rules = rules or table_rules
                if need_hint:
                    hint = any(chain in HINT_CHAINS for chain in chains)
        finally:
            sock.close()
    return rules, hint
