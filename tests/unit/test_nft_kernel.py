"""shim.facts.nft_kernel on nf_tables replies recorded from a real kernel (fixtures/, README there):
the encoder, the decoders, and what the probe concludes per scenario, with no kernel and no root.
The real-kernel counterparts (cost, side effects, a refusing kernel): tests/test_kernel_probes.py."""

import errno
import struct
import sys

import pytest

from shim.facts import nft_kernel as nk
from shim.facts.xtables import FamilyState, Unavailable

from .recorded import NetlinkReplay, load

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="replies recorded on a little-endian host")

# What each recorded scenario holds (tests/unit/record_fixtures.py sets them up), per family:
# (xtables tables of family ip/ip6, holds a rule, mangle holds a hint chain).
EXPECTED = {
    "empty": {"iptables": ((), False, False), "ip6tables": ((), False, False)},
    "builtin-rules": {"iptables": (("filter",), True, False), "ip6tables": ((), False, False)},
    "hints": {"iptables": (("mangle",), False, False), "ip6tables": (("mangle",), False, True)},
    "empty-user-chains": {"iptables": (("filter",), False, False), "ip6tables": (("nat",), False, False)},
    "user-chain-rules": {"iptables": (("filter",), True, False), "ip6tables": ((), False, False)},
    "long-dump": {"iptables": (("filter",), True, False), "ip6tables": (("raw",), True, False)},
    # inet/ip kube-proxy/firewalld tables are not iptables'; a hint chain outside mangle is no
    # hint; ip6 raw and mangle exist but hold no chain.
    "not-iptables": {"iptables": (("filter",), False, False), "ip6tables": (("mangle", "raw"), False, False)},
}


def states(scenario):
    return {family: FamilyState(*fields) for family, fields in EXPECTED[scenario].items()}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_per_family_answer(scenario):
    nl = NetlinkReplay(load(scenario))
    assert nk.read_families(nl) == states(scenario)


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_aggregate_answer_is_any_family(scenario):
    nl = NetlinkReplay(load(scenario))
    expected = states(scenario).values()
    assert nk.read_rules_and_hint(nl) == (any(s.rules for s in expected), any(s.hint for s in expected))


def test_aggregate_stops_at_the_first_rule():
    """One table dump, then one rule dump of `filter`, whose first rule answers: nothing more is
    asked, and the rest of that dump (queued) is left unread."""
    nl = NetlinkReplay(load("builtin-rules"))
    assert nk.read_rules_and_hint(nl) == (True, False)
    assert [s.split(" flags")[0] for s in nl.sent] == ["type %#x" % ((10 << 8) | 1), "type %#x" % ((10 << 8) | 7)]


def test_a_dump_left_running_does_not_refuse_the_next_family():
    """IPv4 filter's 60 rules take three dump batches; the first rule answers and the rest of that
    dump is left unread, so the kernel would refuse the IPv6 dump on the same socket (EBUSY): the
    next dump goes out on a new socket instead of reading the abandoned one to its end."""
    nl = NetlinkReplay(load("long-dump"))
    assert nk.read_families(nl) == states("long-dump")
    assert nl.sent.count("reopen") == 1 and nl.sent[-2] == "reopen"


def test_tables_without_chains_are_not_asked_about():
    """`table ip6 mangle` and `table ip6 raw` exist but hold no chain (NFTA_TABLE_USE 0): no rule
    dump and no hint GETCHAIN for them; the `ip filter` table holding a chain is dumped."""
    nl = NetlinkReplay(load("not-iptables"))
    nk.read_families(nl)
    assert len(nl.sent) == 2 and "family 2 " in nl.sent[1]


def test_hint_chains_are_asked_together_for_each_mangle():
    nl = NetlinkReplay(load("hints"))
    assert nk.hint_families(nl, nk.xtables_tables(nl)) == {"ip6tables"}
    getchain = "type %#x" % ((10 << 8) | nk.NFT_MSG_GETCHAIN)
    assert [s.split(" flags")[0] for s in nl.sent[1:]] == [getchain] * 4


# --- the layouts: requests byte for byte (little-endian host), replies decoded ---

def test_table_dump_request_bytes():
    # nlmsghdr: len 20, type NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE, flags REQUEST|DUMP,
    # seq 7, pid 0; nfgenmsg: family NFPROTO_UNSPEC, NFNETLINK_V0, res_id 0.
    assert nk.request(nk.NFT_MSG_GETTABLE, nk.NLM_F_DUMP, 7, nk.NFPROTO_UNSPEC) == bytes.fromhex(
        "14000000" "010a" "0103" "07000000" "00000000" "00" "00" "0000")


def test_string_attribute_is_nul_terminated_and_padded():
    # nla_len 11 (4 + "filter\0"), nla_type 1, then the value padded to 12.
    assert nk.attr_str(nk.NFTA_RULE_TABLE, "filter") == bytes.fromhex("0b000100" "66696c74657200" "00")
    assert len(nk.attr_str(1, "raw")) == 8  # "raw\0": no padding


def test_recorded_table_dump_decodes():
    """The recorded reply to the table dump: NEWTABLE messages with the names and families the
    set-up created, then NLMSG_DONE."""
    fixture = load("not-iptables")
    reply = b"".join(bytes.fromhex(d) for d in fixture["nft"][0]["replies"])
    seen, kinds = set(), []
    for kind, seq, payload in nk.messages(reply):
        kinds.append(kind)
        assert seq == 1
        if kind == nk.NEWTABLE:
            seen.add((nk.nfproto_of(payload), nk.text(nk.attributes(payload)[nk.NFTA_TABLE_NAME])))
    assert kinds[-1] == nk.NLMSG_DONE and set(kinds[:-1]) == {nk.NEWTABLE}
    inet, arp_family = 1, 3  # NFPROTO_INET; no arp table in this scenario
    assert seen == {(inet, "firewalld"), (2, "kube-proxy"), (inet, "mangle"), (2, "filter"), (10, "raw"),
                    (10, "mangle")}
    assert arp_family not in {f for f, _ in seen}


def test_recorded_missing_chain_is_enoent_and_missing_table_an_empty_dump():
    """Nothing exists: a GETCHAIN is answered with NLMSG_ERROR carrying ENOENT, a rule dump of a
    missing table with NLMSG_DONE alone (older kernels: ENOENT). Both are answers, "no"."""
    fixture = load("empty")
    getchain = [e for e in fixture["nft"] if bytes.fromhex(e["request"])[4] == nk.NFT_MSG_GETCHAIN][0]
    [(kind, _, payload)] = list(nk.messages(bytes.fromhex(getchain["replies"][0])))
    assert kind == nk.NLMSG_ERROR and nk.error_of(payload) == errno.ENOENT
    nl = NetlinkReplay(fixture)
    assert nk.table_has_rule(nl, "iptables", "filter") is False
    assert nk.hint_families(nl, {"iptables": {"mangle": True}, "ip6tables": {"mangle": True}}) == set()


def test_malformed_messages_are_unavailable():
    header = struct.Struct("=IHHII")
    with pytest.raises(Unavailable, match="malformed"):
        list(nk.messages(header.pack(64, nk.NEWTABLE, 0, 1, 0)))  # claims more than the datagram
    with pytest.raises(Unavailable, match="malformed"):
        list(nk.messages(header.pack(8, nk.NEWTABLE, 0, 1, 0)))  # shorter than its own header
    with pytest.raises(Unavailable, match="malformed"):
        nk.error_of(b"\xff\xff")


def test_attributes_stop_at_a_bad_length():
    payload = bytes(4) + nk.attr_str(1, "filter") + b"\x02\x00\x03\x00"
    assert nk.attributes(payload) == {1: b"filter\0"}


class Refusing(object):
    """A kernel that answers every request with an error (EPERM: a missing capability)."""

    seq = 0
    dumping = False

    def next_seq(self):
        self.seq += 1
        return self.seq

    def send(self, *requests):
        self.sent = requests

    def replies(self):
        header = struct.Struct("=IHHII")
        yield nk.NLMSG_ERROR, self.seq, struct.pack("=i", -errno.EPERM) + header.pack(20, 0, 0, self.seq, 0)


def test_a_refused_request_is_unavailable_with_the_reason():
    with pytest.raises(Unavailable, match="nf_tables refused the request: Operation not permitted"):
        nk.read_families(Refusing())
