"""nf_tables: does an xtables table hold a rule, does mangle hold kubelet's hint? Asked of the kernel
over netlink, read-only, with the standard library only.

Per call, on one NETLINK_NETFILTER socket: one dump of the table list (all families, a few
messages); where `mangle` exists, one GETCHAIN per hint name (sent together); then, per xtables
table of family ip/ip6 that exists, a rule dump filtered by that table, of which only the first
batch is read: the first rule answers and the socket is closed, so the cost does not grow with the
ruleset. A missing table or chain is an answer ("no"), never an error. Nothing is created and no
module is loaded: on a kernel with modules where nf_tables is not loaded, the socket is not even
opened (opening it, or asking the nf_tables subsystem, would load the modules).
"""

import os
import sys

from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, Unavailable

SOURCE = "kernel (nf_tables netlink)"

AF_NETLINK = 16
SOCK_RAW = 3
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
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
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4
NFTA_TABLE_NAME, NFTA_TABLE_USE = 1, 3
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 1, 3
NFTA_RULE_TABLE = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NFPROTO_UNSPEC = 0
FAMILIES = {2: "ip", 10: "ip6"}  # NFPROTO_IPV4, NFPROTO_IPV6: the families iptables-nft writes
ENOENT = 2
# Dump batches are sized by the largest read the socket has seen (never below NLMSG_GOODSIZE,
# at most 8 KiB): reading 8 KiB keeps each batch, and the kernel's work before the first rule, small.
RECV_SIZE = 8192
MSG_TRUNC = 0x20
TIMEOUT = 5.0

_BO = sys.byteorder  # netlink headers are in host byte order


def nf_tables_present(proc="/proc", sys_root="/sys", lib_modules="/lib/modules"):
    """May nf_tables be asked without loading a module? True (loaded or built in), False (a module
    that is not loaded: no nft rule can exist), or None (cannot tell)."""
    if os.path.isdir(os.path.join(sys_root, "module", "nf_tables")):
        return True  # a loaded module always has this directory
    try:
        with open(os.path.join(proc, "modules")) as f:
            if any(line.split(" ", 1)[0] == "nf_tables" for line in f):
                return True
    except FileNotFoundError:
        return True  # a kernel without module support: nothing can be loaded by asking
    except OSError:
        return None
    # Not a loaded module: built in (and then without a /sys/module entry), or not loaded at all.
    try:
        with open(os.path.join(lib_modules, os.uname().release, "modules.builtin")) as f:
            return any(line.rstrip().endswith("/nf_tables.ko") for line in f)
    except OSError:
        return None


def _u16(value):
    return value.to_bytes(2, _BO)


def _u32(value):
    return value.to_bytes(4, _BO)


def attr_str(kind, text):
    """A NUL-terminated string netlink attribute, padded to 4 bytes."""
    data = text.encode("ascii") + b"\0"
    return _u16(4 + len(data)) + _u16(kind) + data + b"\0" * (-len(data) % 4)


def request(msg, flags, seq, family, attrs=b""):
    """nlmsghdr + nfgenmsg (family, NFNETLINK_V0, res_id 0) + attributes."""
    body = bytes((family, 0, 0, 0)) + attrs
    return (_u32(NLMSG_HDRLEN + len(body)) + _u16((NFNL_SUBSYS_NFTABLES << 8) | msg)
            + _u16(NLM_F_REQUEST | flags) + _u32(seq) + _u32(0) + body)


def messages(data):
    """(type, seq, payload) for each netlink message of a datagram."""
    offset = 0
    while offset + NLMSG_HDRLEN <= len(data):
        length = int.from_bytes(data[offset:offset + 4], _BO)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            raise Unavailable("malformed netlink message")
        kind = int.from_bytes(data[offset + 4:offset + 6], _BO)
        seq = int.from_bytes(data[offset + 8:offset + 12], _BO)
        yield kind, seq, data[offset + NLMSG_HDRLEN:offset + length]
        offset += (length + 3) & ~3


def attributes(payload):
    """{attribute type: value bytes} of an nf_tables message payload (after nfgenmsg)."""
    found = {}
    offset = NFGENMSG_LEN
    while offset + 4 <= len(payload):
        length = int.from_bytes(payload[offset:offset + 2], _BO)
        if length < 4:
            break
        kind = int.from_bytes(payload[offset + 2:offset + 4], _BO) & NLA_TYPE_MASK
        found[kind] = payload[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def text(value):
    return value.split(b"\0", 1)[0].decode("ascii", "replace")


def error_of(payload):
    """errno carried by an NLMSG_ERROR payload (0 is an acknowledgement)."""
    return -int.from_bytes(payload[:4], _BO, signed=True)


class Netlink(object):
    """One NETLINK_NETFILTER socket; requests are numbered, replies matched by number."""

    def __init__(self):
        import _socket  # not socket: that module pulls in enum and costs milliseconds per call

        try:
            self.sock = _socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise Unavailable("netlink socket refused: %s" % (e.strerror or e))
        self.sock.settimeout(TIMEOUT)
        self.seq = 0

    def close(self):
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


def refused(payload):
    err = error_of(payload)
    return Unavailable("nf_tables refused the request: %s" % os.strerror(err))


def dump(nl, msg, family, attrs=b""):
    """(type, payload) of each reply to one dump request, until NLMSG_DONE. ENOENT (no such
    table) ends it empty: a missing table is an answer, not an error."""
    seq = nl.next_seq()
    nl.send(request(msg, NLM_F_DUMP, seq, family, attrs))
    for kind, got, payload in nl.replies():
        if got != seq:
            continue
        if kind == NLMSG_DONE:
            return
        if kind == NLMSG_ERROR:
            if error_of(payload) == ENOENT:
                return
            raise refused(payload)
        yield kind, payload


def xtables_tables(nl):
    """{(family, name)} of the ip/ip6 tables named like iptables' that hold at least one chain."""
    tables = set()
    for kind, payload in dump(nl, NFT_MSG_GETTABLE, NFPROTO_UNSPEC):
        if kind != NEWTABLE or len(payload) < NFGENMSG_LEN:
            continue
        family = payload[0]
        attrs = attributes(payload)
        name = text(attrs.get(NFTA_TABLE_NAME, b""))
        use = attrs.get(NFTA_TABLE_USE)
        if family in FAMILIES and name in XTABLES and (use is None or int.from_bytes(use, "big")):
            tables.add((family, name))
    return tables


def has_hint(nl, tables):
    """Does a `mangle` table of family ip/ip6 hold one of the hint chains? One GETCHAIN each."""
    pending = {}
    for family, name in sorted(tables):
        if name != HINT_TABLE:
            continue
        for chain in HINT_CHAINS:
            seq = nl.next_seq()
            pending[seq] = request(NFT_MSG_GETCHAIN, 0, seq, family,
                                   attr_str(NFTA_CHAIN_TABLE, name) + attr_str(NFTA_CHAIN_NAME, chain))
    if not pending:
        return False
    nl.send(*pending.values())
    found = False
    for kind, seq, payload in nl.replies():
        if seq not in pending:
            continue
        if kind == NLMSG_ERROR:
            if error_of(payload) not in (0, ENOENT):
                raise refused(payload)
        elif kind == NEWCHAIN:
            found = True
        del pending[seq]
        if not pending:
            return found


def table_has_rule(nl, family, name):
    """Does one table hold a rule? A rule dump filtered by table: the first rule answers.
    (Kernels before the dump filter send every table's rules; those of other tables are skipped.)"""
    for kind, payload in dump(nl, NFT_MSG_GETRULE, family, attr_str(NFTA_RULE_TABLE, name)):
        if kind == NEWRULE and text(attributes(payload).get(NFTA_RULE_TABLE, b"")) == name:
            return True
    return False


def probe(proc="/proc", sys_root="/sys", lib_modules="/lib/modules"):
    """(has_rules, has_hint) for nf_tables in this netns, IPv4 or IPv6; raises Unavailable."""
    present = nf_tables_present(proc, sys_root, lib_modules)
    if present is False:
        return False, False
    if present is None:
        raise Unavailable("cannot tell whether nf_tables is loaded; asking could load it")
    nl = Netlink()
    try:
        tables = xtables_tables(nl)
        hint = has_hint(nl, tables)
        # Stop at the first table with a rule; the dump left running is dropped with the socket.
        rules = any(table_has_rule(nl, family, name) for family, name in sorted(tables))
        return rules, hint
    finally:
        nl.close()
