"""nf_tables: which xtables tables exist, does one hold a rule, does mangle hold kubelet's hint?
Asked of the kernel over netlink, read-only, with the standard library only.

Per call, on one NETLINK_NETFILTER socket: one dump of the table list (all families, a few
messages); where `mangle` exists, one GETCHAIN per hint name (sent together); then, per xtables
table of family ip/ip6 that holds chains, a rule dump filtered by that table, of which only the
first batch is read: the first rule answers and the socket is closed, so the cost does not grow
with the ruleset. A missing table or chain is an answer ("no"), never an error. Nothing is created
and no module is loaded: on a kernel with modules where nf_tables is not loaded, the socket is not
even opened (opening it, or asking the nf_tables subsystem, would load the modules).

`probe()` answers for the backend as a whole (the decision needs no more, and stops at the first
rule); `probe_families()` answers per family (`iptables`, `ip6tables`) for audits. Message layouts
are declared once below as structs, used both to build requests and to read replies; the parsers
are tested on replies recorded from a real kernel (tests/unit/test_nft_kernel.py).
"""

import errno
import posix  # not os: its import (and _collections_abc's) costs a first call ~1 ms

from _struct import Struct  # what `struct` re-exports, without that module's own import

from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, FamilyState, Unavailable, WouldLoadModule

SOURCE = "kernel (nf_tables netlink)"

AF_NETLINK = 16
SOCK_RAW = 3
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNETLINK_V0 = 0
NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE = 1, 0
NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN = 4, 3
NFT_MSG_GETRULE, NFT_MSG_NEWRULE = 7, 6
# Message types of the replies: subsystem in the high byte.
NEWTABLE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
NEWCHAIN = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN
NEWRULE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_TABLE_NAME, NFTA_TABLE_USE = 1, 3
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NFPROTO_UNSPEC, NFPROTO_IPV4, NFPROTO_IPV6 = 0, 2, 10
# The nf_tables family (table ip / table ip6) that each iptables family's nft variant writes.
NFPROTO_OF = {"iptables": NFPROTO_IPV4, "ip6tables": NFPROTO_IPV6}
FAMILY_OF_NFPROTO = {nfproto: family for family, nfproto in NFPROTO_OF.items()}

# Layouts (linux/netlink.h, linux/netfilter/nfnetlink.h). Netlink headers are in host byte order;
# nf_tables attribute values and nfgenmsg's res_id are big-endian.
NLMSGHDR = Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
NFGENMSG = Struct("!BBH")  # nfgen_family, version, res_id
NLATTR = Struct("=HH")  # nla_len, nla_type; the value follows, padded to 4 bytes
NLMSGERR = Struct("=i")  # struct nlmsgerr's error (negative errno; 0 acknowledges)
BE32 = Struct("!I")  # NLA_U32 values such as NFTA_TABLE_USE

# Dump batches are sized by the largest read the socket has seen (never below NLMSG_GOODSIZE,
# at most 8 KiB): reading 8 KiB keeps each batch, and the kernel's work before the first rule, small.
RECV_SIZE = 8192
MSG_TRUNC = 0x20
TIMEOUT = 5.0


def nf_tables_present(proc="/proc", sys_root="/sys", lib_modules="/lib/modules"):
    """May nf_tables be asked without loading a module? True (loaded or built in), False (a module
    that is not loaded: no nft rule can exist), or None (cannot tell). The traces it reads and why:
    shim.facts.kernel_support, docs/kernels.md."""
    from shim.facts import kernel_support

    return kernel_support.nft_presence(proc, sys_root, lib_modules).value


def align4(length):
    return (length + 3) & ~3


def attr_str(kind, text):
    """A NUL-terminated string netlink attribute, padded to 4 bytes."""
    data = text.encode("ascii") + b"\0"
    return NLATTR.pack(NLATTR.size + len(data), kind) + data + b"\0" * (align4(len(data)) - len(data))


def request(msg, flags, seq, nfproto, attrs=b""):
    """nlmsghdr + nfgenmsg + attributes: one nf_tables request."""
    length = NLMSGHDR.size + NFGENMSG.size + len(attrs)
    return (NLMSGHDR.pack(length, (NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags, seq, 0)
            + NFGENMSG.pack(nfproto, NFNETLINK_V0, 0) + attrs)


def messages(data):
    """(type, seq, payload) for each netlink message of a datagram; the payload starts after
    nlmsghdr (with nfgenmsg, for an nf_tables message)."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise Unavailable("malformed netlink message")
        yield kind, seq, data[offset + NLMSGHDR.size:offset + length]
        offset += align4(length)


def nfproto_of(payload):
    """The nf_tables family of a message (nfgenmsg's first field)."""
    return NFGENMSG.unpack_from(payload)[0]


def attributes(payload):
    """{attribute type: value bytes} of an nf_tables message payload (after nfgenmsg)."""
    found = {}
    offset = NFGENMSG.size
    while offset + NLATTR.size <= len(payload):
        length, kind = NLATTR.unpack_from(payload, offset)
        if length < NLATTR.size:
            break
        found[kind & NLA_TYPE_MASK] = payload[offset + NLATTR.size:offset + length]
        offset += align4(length)
    return found


def text(value):
    return value.split(b"\0", 1)[0].decode("ascii", "replace")


def error_of(payload):
    """errno carried by an NLMSG_ERROR payload (0 is an acknowledgement)."""
    if len(payload) < NLMSGERR.size:
        raise Unavailable("malformed netlink error message")
    return -NLMSGERR.unpack_from(payload)[0]


def request_refused(payload):
    """The Unavailable to raise for an NLMSG_ERROR reply that is no answer."""
    return Unavailable("nf_tables refused the request: %s" % posix.strerror(error_of(payload)))


class Netlink(object):
    """One NETLINK_NETFILTER conversation; requests are numbered, replies matched by number. The
    probe functions below take any object with these methods (the unit tests replay recordings)."""

    def __init__(self):
        self.seq = 0
        self.sock = None
        self.reopen()

    def reopen(self):
        """A new socket in place of the current one, whose unread replies and running dump go
        with it."""
        import _socket  # not socket: that module pulls in enum and costs milliseconds per call

        self.close()
        try:
            self.sock = _socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise Unavailable("netlink socket refused: %s" % (e.strerror or e))
        self.sock.settimeout(TIMEOUT)
        self.dumping = False  # set by dump() while a dump has not been read to its end

    def close(self):
        if self.sock is not None:
            self.sock.close()

    def send(self, *requests):
        try:
            self.sock.sendto(b"".join(requests), (0, 0))
        except OSError as e:
            raise Unavailable("netlink send refused: %s" % (e.strerror or e))

    def next_seq(self):
        self.seq += 1
        return self.seq

    def replies(self):
        """Netlink messages as they arrive, one datagram at a time."""
        while True:
            try:
                data, _, flags, _ = self.sock.recvmsg(RECV_SIZE)
            except OSError as e:
                raise Unavailable("netlink receive failed: %s" % (e.strerror or e))
            if not data:
                raise Unavailable("netlink socket closed")
            if flags & MSG_TRUNC:
                raise Unavailable("netlink message larger than %d bytes" % RECV_SIZE)
            for message in messages(data):
                yield message


def dump(nl, msg, nfproto, attrs=b""):
    """(type, payload) of each reply to one dump request, until NLMSG_DONE. ENOENT (no such
    table) ends it empty: a missing table is an answer, not an error.

    A caller may stop early (the first rule answers). The kernel makes a dump one batch per read
    and refuses another dump on the socket until the last batch is made (EBUSY), so the next dump
    goes out on a new socket: reading the old one to its end would cost as much as the rules it
    holds (tests/unit/test_nft_kernel.py::test_a_dump_left_running_does_not_refuse_the_next_family)."""
    if nl.dumping:
        nl.reopen()
    seq = nl.next_seq()
    nl.send(request(msg, NLM_F_DUMP, seq, nfproto, attrs))
    nl.dumping = True
    for kind, got, payload in nl.replies():
        if got != seq:
            continue
        if kind == NLMSG_DONE:
            nl.dumping = False
            return
        if kind == NLMSG_ERROR:
            nl.dumping = False
            if error_of(payload) == errno.ENOENT:
                return
            raise request_refused(payload)
        yield kind, payload


def xtables_tables(nl):
    """{family: {table name: holds chains}} of the ip/ip6 tables named like iptables', for the
    families that have any. A table's chain count (NFTA_TABLE_USE) spares the dumps of an empty
    table; a kernel that does not send it gets them."""
    tables = {}
    for kind, payload in dump(nl, NFT_MSG_GETTABLE, NFPROTO_UNSPEC):
        if kind != NEWTABLE or len(payload) < NFGENMSG.size:
            continue
        family = FAMILY_OF_NFPROTO.get(nfproto_of(payload))
        attrs = attributes(payload)
        name = text(attrs.get(NFTA_TABLE_NAME, b""))
        if family is None or name not in XTABLES:
            continue
        use = attrs.get(NFTA_TABLE_USE)
        tables.setdefault(family, {})[name] = use is None or len(use) != BE32.size or BE32.unpack(use)[0] > 0
    return tables


def hint_families(nl, tables):
    """The families whose `mangle` holds one of the hint chains: one GETCHAIN per family and hint
    chain, sent together, answered together."""
    pending = {}
    for family in NFPROTO_OF:  # IPv4 first, as in every loop here
        if not tables.get(family, {}).get(HINT_TABLE):
            continue
        for chain in HINT_CHAINS:
            seq = nl.next_seq()
            pending[seq] = (family, request(
                NFT_MSG_GETCHAIN, 0, seq, NFPROTO_OF[family],
                attr_str(NFTA_CHAIN_TABLE, HINT_TABLE) + attr_str(NFTA_CHAIN_NAME, chain)))
    found = set()
    if not pending:
        return found
    nl.send(*(req for _, req in pending.values()))
    for kind, seq, payload in nl.replies():
        if seq not in pending:
            continue
        if kind == NLMSG_ERROR:
            if error_of(payload) not in (0, errno.ENOENT):
                raise request_refused(payload)
        elif kind == NEWCHAIN:
            found.add(pending[seq][0])
        del pending[seq]
        if not pending:
            return found


def table_has_rule(nl, family, name):
    """Does one table hold a rule? A rule dump filtered by table: the first rule answers.
    (Kernels before the dump filter send every table's rules; those of other tables are skipped.)"""
    for kind, payload in dump(nl, NFT_MSG_GETRULE, NFPROTO_OF[family], attr_str(NFTA_RULE_TABLE, name)):
        if kind == NEWRULE and text(attributes(payload).get(NFTA_RULE_TABLE, b"")) == name:
            return True
    return False


def tables_to_dump(tables, family):
    """The tables of a family whose rules are asked for: those holding chains, in name order."""
    return [name for name, has_chains in sorted(tables.get(family, {}).items()) if has_chains]


def read_rules_and_hint(nl):
    """(has_rules, has_hint) over both families: stops at the first table with a rule (the dump
    left running is dropped with the socket)."""
    tables = xtables_tables(nl)
    hint = bool(hint_families(nl, tables))
    rules = any(table_has_rule(nl, family, name)
                for family in NFPROTO_OF for name in tables_to_dump(tables, family))
    return rules, hint


def read_families(nl):
    """{family: FamilyState} for `iptables` and `ip6tables`, every fact asked."""
    tables = xtables_tables(nl)
    hints = hint_families(nl, tables)
    return {family: FamilyState(sorted(tables.get(family, ())),
                                any(table_has_rule(nl, family, name) for name in tables_to_dump(tables, family)),
                                family in hints)
            for family in NFPROTO_OF}


def ask(read, proc, sys_root, lib_modules):
    """read(Netlink()) where nf_tables may be asked; None where it is a module not loaded (no nft
    table can exist); Unavailable where that cannot be told."""
    present = nf_tables_present(proc, sys_root, lib_modules)
    if present is False:
        return None
    if present is None:
        raise WouldLoadModule("cannot tell whether nf_tables is loaded; asking could load it")
    nl = Netlink()
    try:
        return read(nl)
    finally:
        nl.close()


def probe(proc="/proc", sys_root="/sys", lib_modules="/lib/modules"):
    """(has_rules, has_hint) for nf_tables in this netns, IPv4 or IPv6; raises Unavailable."""
    answer = ask(read_rules_and_hint, proc, sys_root, lib_modules)
    return answer if answer is not None else (False, False)


def probe_families(proc="/proc", sys_root="/sys", lib_modules="/lib/modules"):
    """{"iptables": FamilyState, "ip6tables": FamilyState} for nf_tables in this netns (all facts
    asked: costs up to one rule dump per table more than probe()); raises Unavailable."""
    answer = ask(read_families, proc, sys_root, lib_modules)
    return answer if answer is not None else {family: FamilyState((), False, False) for family in NFPROTO_OF}
