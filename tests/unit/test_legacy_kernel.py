"""shim.facts.legacy_kernel on x_tables replies recorded from a real kernel (fixtures/, README
there): the layouts, the decoders, which socket options are asked, and what the probe concludes
per scenario, with no kernel and no root. The real-kernel counterparts (side effects, system calls
at 10,000 rules, a refusing kernel): tests/test_kernel_probes.py."""

import errno
import os
import sys

import pytest

from shim.facts import legacy_kernel as lk
from shim.facts.xtables import FamilyState, Unavailable

from .recorded import FamilyReplay, SockoptReplay, load, proc_tree

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="replies recorded on a little-endian host")

INFO, ENTRIES = lk.SO_GET_INFO, lk.SO_GET_ENTRIES

# What each recorded scenario holds (tests/unit/record_fixtures.py sets them up), per family:
# (tables listed in /proc/net/ip{,6}_tables_names, holds a rule, mangle holds a hint chain).
EXPECTED = {
    "empty": {"iptables": ((), False, False), "ip6tables": ((), False, False)},
    "builtin-rules": {"iptables": ((), False, False), "ip6tables": (("raw",), True, False)},
    "hints": {"iptables": (("mangle",), False, True), "ip6tables": (("mangle",), False, True)},
    "empty-user-chains": {"iptables": (("filter", "mangle"), False, False), "ip6tables": (("nat",), False, False)},
    "user-chain-rules": {"iptables": (("filter",), True, False), "ip6tables": (("raw",), True, False)},
    "long-dump": {"iptables": ((), False, False), "ip6tables": ((), False, False)},
    "not-iptables": {"iptables": (("raw",), False, False), "ip6tables": (("filter", "security"), False, False)},
}


def states(scenario):
    return {family: FamilyState(*fields) for family, fields in EXPECTED[scenario].items()}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_per_family_answer(scenario, tmp_path):
    fixture = load(scenario)
    assert lk.probe_families(proc_tree(tmp_path, fixture), FamilyReplay(fixture)) == states(scenario)


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_aggregate_answer_is_any_family(scenario, tmp_path):
    fixture = load(scenario)
    expected = states(scenario).values()
    assert lk.probe(proc_tree(tmp_path, fixture), FamilyReplay(fixture)) == (
        any(s.rules for s in expected), any(s.hint for s in expected))


# --- which socket options are asked: only listed tables, entries only where needed ---

def test_only_listed_tables_are_asked(tmp_path):
    """Asking for a table /proc does not list would create it (SPEC "Detection must not change
    what it measures"): every table asked about is one the recording's /proc listed."""
    for scenario in sorted(EXPECTED):
        fixture = load(scenario)
        replay = FamilyReplay(fixture)
        lk.probe_families(proc_tree(tmp_path / scenario, fixture), replay)
        for family, sockopt in replay.replays.items():
            listed = fixture["legacy"][family]["tables_names"].split()
            assert {table for _, table in sockopt.asked} <= set(listed), (scenario, family)


def test_no_table_listed_means_nothing_asked(tmp_path):
    replay = FamilyReplay(load("empty"))
    assert lk.probe(proc_tree(tmp_path, load("empty")), replay) == (False, False)
    assert replay.wants == []


def test_rules_in_user_chains_shown_by_the_figures_need_no_entries(tmp_path):
    """ip6 raw: one rule in a user chain; entry count and size cannot be those of a table without
    rules, so IPT_SO_GET_ENTRIES is not asked. IPv4 filter's figures fit "no rules" (three
    152-byte rules and a 200-byte one average a head plus a tail): its entries are read."""
    fixture = load("user-chain-rules")
    replay = FamilyReplay(fixture)
    lk.probe_families(proc_tree(tmp_path, fixture), replay)
    assert replay.replays["ip6tables"].asked == [(INFO, "raw")]
    assert replay.replays["iptables"].asked == [(INFO, "filter"), (ENTRIES, "filter")]


def test_aggregate_does_not_ask_the_second_family_what_the_first_answered(tmp_path):
    """hints: IPv4 mangle holds the hint, so IPv6 is asked about rules only (want_hint False);
    its mangle's entries are still read, as its figures fit "no rules"."""
    fixture = load("hints")
    replay = FamilyReplay(fixture)
    assert lk.probe(proc_tree(tmp_path, fixture), replay) == (False, True)
    assert replay.wants == [("iptables", True, True), ("ip6tables", True, False)]


def test_a_fact_not_wanted_is_none_unless_the_figures_answer_it():
    fixture = load("hints")
    state = lk.family_state(lk.LAYOUTS["ip6tables"], ["mangle"], SockoptReplay(fixture, "ip6tables"),
                            want_rules=False, want_hint=False)
    assert state == FamilyState(("mangle",), None, None)
    fixture = load("builtin-rules")
    state = lk.family_state(lk.LAYOUTS["ip6tables"], ["raw"], SockoptReplay(fixture, "ip6tables"),
                            want_rules=False, want_hint=False)
    assert state == FamilyState(("raw",), True, None)  # GET_INFO alone showed it


# --- the kernel's answers other than a table ---

def test_a_table_gone_since_listed_has_no_rules():
    fixture = load("builtin-rules")
    replay = SockoptReplay(fixture, "ip6tables", errors={(INFO, "raw"): [errno.ENOENT]})
    assert lk.family_state(lk.LAYOUTS["ip6tables"], ["raw"], replay) == FamilyState((), False, False)


def test_a_table_changing_while_read_is_read_again():
    fixture = load("user-chain-rules")
    replay = SockoptReplay(fixture, "iptables", errors={(ENTRIES, "filter"): [errno.EAGAIN]})
    assert lk.family_state(lk.LAYOUTS["iptables"], ["filter"], replay).rules is True
    assert replay.asked == [(INFO, "filter"), (ENTRIES, "filter"), (INFO, "filter"), (ENTRIES, "filter")]


def test_a_table_that_never_stops_changing_is_unavailable():
    fixture = load("user-chain-rules")
    replay = SockoptReplay(fixture, "iptables", errors={(ENTRIES, "filter"): [errno.EAGAIN] * 5})
    with pytest.raises(Unavailable, match="kept changing"):
        lk.family_state(lk.LAYOUTS["iptables"], ["filter"], replay)


@pytest.mark.parametrize("option,name", [(INFO, "IPT_SO_GET_INFO"), (ENTRIES, "IPT_SO_GET_ENTRIES")])
def test_a_refused_socket_option_is_unavailable_with_the_reason(option, name):
    fixture = load("user-chain-rules")
    replay = SockoptReplay(fixture, "iptables", errors={(option, "filter"): [errno.EPERM]})
    with pytest.raises(Unavailable, match="%s refused: Operation not permitted" % name):
        lk.family_state(lk.LAYOUTS["iptables"], ["filter"], replay)


# --- /proc/net/ip{,6}_tables_names ---

def names_file(tmp_path, family="iptables"):
    path = tmp_path / "proc" / lk.LAYOUTS[family].names_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_tables_names_missing_means_no_table(tmp_path):
    """No file: ip_tables is not loaded, no legacy table can exist in any netns."""
    (tmp_path / "proc").mkdir()
    assert lk.legacy_tables("iptables", str(tmp_path / "proc")) == []
    assert lk.probe(str(tmp_path / "proc"), FamilyReplay(load("empty"))) == (False, False)


def test_tables_names_listed(tmp_path):
    names_file(tmp_path).write_text("mangle\nfilter\n\n")
    assert lk.legacy_tables("iptables", str(tmp_path / "proc")) == ["mangle", "filter"]


def test_tables_names_that_cannot_be_read_are_unknown_not_none(tmp_path):
    """Any failure other than ENOENT leaves the fact open: read as "no legacy tables", the shim
    would write into nft while legacy holds rules. (A directory in the file's place gives EISDIR,
    for root too; the EACCES case a caller with CAP_NET_ADMIN alone meets on the 0440 file follows.)"""
    names_file(tmp_path).mkdir()
    proc = str(tmp_path / "proc")
    with pytest.raises(Unavailable, match="cannot read .*ip_tables_names"):
        lk.legacy_tables("iptables", proc)
    with pytest.raises(Unavailable):
        lk.probe(proc, FamilyReplay(load("empty")))
    with pytest.raises(Unavailable):
        lk.probe_families(proc, FamilyReplay(load("empty")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a 0440 file regardless")
def test_tables_names_unreadable_for_this_caller(tmp_path):
    path = names_file(tmp_path)
    path.write_text("filter\n")
    path.chmod(0o000)
    with pytest.raises(Unavailable, match="Permission denied"):
        lk.legacy_tables("iptables", str(tmp_path / "proc"))


# --- the layouts: the kernel's sizeof() on a 64-bit machine, and the recorded entries decoded ---

def test_layout_sizes_are_the_kernels():
    assert lk.IPT_GETINFO.size == 84
    assert lk.IPT_GET_ENTRIES.size == 40
    assert (lk.IPT_ENTRY.size, lk.IP6T_ENTRY.size) == (112, 168)
    assert (lk.XT_ENTRY_TARGET.size, lk.XT_STANDARD_TARGET.size, lk.XT_ERROR_TARGET.size) == (32, 40, 64)


def recorded_table(scenario, family, table):
    fixture = load(scenario)
    replay = SockoptReplay(fixture, family)
    info = lk.read_info(replay, table)
    return lk.read_entries(replay, table, info)


def test_recorded_info_decodes():
    """IPv4 filter with two empty user chains: hooks INPUT, FORWARD, OUTPUT (1, 2, 3), each with
    its policy as its first entry; 3 policies + 2 x (head, tail) + the final ERROR = 8 entries."""
    fixture = load("empty-user-chains")
    info = lk.read_info(SockoptReplay(fixture, "iptables"), "filter")
    assert info.hooks == [1, 2, 3]
    assert all(info.hook_entry[h] == info.underflow[h] for h in info.hooks)
    assert info.num_entries == 8 and not info.builtin_rules() and not info.sizes_say_rules(lk.IPT_ENTRY)


def test_recorded_entries_name_the_user_chains():
    info, blob = recorded_table("hints", "ip6tables", "mangle")
    rules, chains = lk.walk(blob, info, lk.IP6T_ENTRY)
    assert (rules, sorted(chains)) == (False, ["KUBE-IPTABLES-HINT", "OTHER"])
    errors = [name for _, name in lk.entries_of(blob, lk.IP6T_ENTRY) if name is not None]
    assert errors[-1] == "ERROR"  # the final entry, which names no chain


def test_walk_can_stop_at_the_first_rule():
    info, blob = recorded_table("user-chain-rules", "iptables", "filter")
    assert lk.walk(blob, info, lk.IPT_ENTRY, all_chains=False) == (True, ["U"])
    assert lk.walk(blob, info, lk.IPT_ENTRY) == (True, ["U"])


def test_malformed_entries_are_unavailable():
    info, blob = recorded_table("user-chain-rules", "iptables", "filter")
    at = 90  # ipt_entry's next_offset
    with pytest.raises(Unavailable, match="malformed x_tables entry at offset 0"):
        list(lk.entries_of(blob[:at] + b"\0\0" + blob[at + 2:], lk.IPT_ENTRY))
    with pytest.raises(Unavailable, match="malformed"):
        list(lk.entries_of(blob[:100], lk.IPT_ENTRY))  # cut inside the first entry
    with pytest.raises(Unavailable, match="short IPT_SO_GET_INFO"):
        lk.Info(b"\0" * 40)
