"""The policy as a table: facts in, (backend, step) out. Pure: no kernel, no PATH."""

import pytest

from shim.errors import ShimError
from shim.policy import Decision, Facts, choose_binary, decide

BOTH = {"nft": True, "legacy": True}
NONE = {"nft": False, "legacy": False}
NFT_ONLY = {"nft": True, "legacy": False}
LEGACY_ONLY = {"nft": False, "legacy": True}
UNKNOWN = {"nft": None, "legacy": None}


ABSENT_LEGACY = {"nft": "loaded", "legacy": "absent"}
ABSENT_NFT = {"nft": "absent", "legacy": "loaded"}


def facts(context="container", alias=None, rules=NONE, hints=NONE, binaries=BOTH, mode=None, privileged=True,
          support=None):
    return Facts(context=context, alias_backend=alias, rules=rules, hints=hints, binaries=binaries, mode=mode,
                 privileged=privileged, support=support)


# (name, facts, expected backend, expected step, cacheable)
TABLE = [
    ("override nft beats everything", facts("host", "legacy", LEGACY_ONLY, LEGACY_ONLY, mode="nft"), "nft", 1, False),
    ("override legacy beats everything", facts("host", "nft", NFT_ONLY, NFT_ONLY, mode="legacy"), "legacy", 1, False),
    ("override with no binaries at all", facts(binaries=NONE, mode="legacy"), "legacy", 1, False),
    ("host alias nft, rules only in legacy: the caller's, never cached", facts("host", "nft", LEGACY_ONLY), "nft", 2, False),
    ("host alias legacy, hint in nft", facts("host", "legacy", NONE, NFT_ONLY), "legacy", 2, False),
    ("host alias, empty netns", facts("host", "nft"), "nft", 2, False),
    ("host without alias falls to rules", facts("host", None, LEGACY_ONLY), "legacy", 5, True),
    ("hint in legacy only, nft has more rules", facts(alias="nft", rules=BOTH, hints=LEGACY_ONLY), "legacy", 3, True),
    ("hint in nft only, legacy has rules", facts(alias="legacy", rules=LEGACY_ONLY, hints=NFT_ONLY), "nft", 3, True),
    ("hint in nft only, no rules anywhere", facts(hints=NFT_ONLY), "nft", 3, True),
    ("hints in both: a tie, rules decide (nft)", facts(rules=BOTH, hints=BOTH), "nft", 4, True),
    ("hints in both, rules in legacy only", facts(alias="nft", rules=LEGACY_ONLY, hints=BOTH), "legacy", 5, True),
    ("hints in both, no rules: the alias (PATH's answer, not cached)", facts(alias="legacy", hints=BOTH), "legacy", 6, False),
    ("nft rules only", facts(alias="legacy", rules=NFT_ONLY), "nft", 4, True),
    ("legacy rules only", facts(alias="nft", rules=LEGACY_ONLY), "legacy", 5, True),
    ("rules in both: nft wins the tie", facts(alias="legacy", rules=BOTH), "nft", 4, True),
    ("empty netns, image aliases nft", facts(alias="nft"), "nft", 6, False),
    ("empty netns, image aliases legacy", facts(alias="legacy"), "legacy", 6, False),
    ("nft rules unread, legacy holds none: nft either way", facts(alias="nft", rules={"nft": None, "legacy": False}), "nft", 6, False),
    ("host alias decides even when nothing could be read", facts("host", "legacy", UNKNOWN, UNKNOWN), "legacy", 2, False),
    ("no rules, no alias, both binaries: nft", facts(), "nft", 7, False),
    ("no rules, no alias, legacy binaries only", facts(binaries=LEGACY_ONLY), "legacy", 7, False),
    ("no rules, no alias, nft binaries only", facts(binaries=NFT_ONLY), "nft", 7, False),
    ("host context without alias or rules", facts("host", binaries=LEGACY_ONLY), "legacy", 7, False),
    # Privilege: a caller that can change no backend gets what the alias gives, whatever is read.
    ("no CAP_NET_ADMIN: the alias, rules elsewhere", facts(alias="legacy", rules=NFT_ONLY, privileged=False), "legacy", 0, False),
    ("no CAP_NET_ADMIN: the alias, nothing readable", facts(alias="nft", rules=UNKNOWN, hints=UNKNOWN, privileged=False), "nft", 0, False),
    ("no CAP_NET_ADMIN and no alias: the policy", facts(rules=LEGACY_ONLY, privileged=False), "legacy", 5, True),
    ("privilege unknown counts as privileged", facts(alias="nft", rules=LEGACY_ONLY, privileged=None), "legacy", 5, True),
    # Kernel support: the preference steps never pick what the kernel cannot run.
    ("no legacy in the kernel: legacy alias skipped, nft binaries", facts(alias="legacy", support=ABSENT_LEGACY), "nft", 7, False),
    ("no nf_tables in the kernel: nft alias skipped", facts(alias="nft", support=ABSENT_NFT), "legacy", 7, False),
    ("host alias legacy on a kernel without legacy", facts("host", "legacy", support=ABSENT_LEGACY), "nft", 7, False),
    ("legacy rules decide whatever the support says", facts(alias="nft", rules=LEGACY_ONLY, support=ABSENT_NFT), "legacy", 5, True),
    ("support unknown: the alias still counts", facts(alias="legacy", support={"nft": None, "legacy": None}), "legacy", 6, False),
]


@pytest.mark.parametrize("name,given,backend,step,cacheable", TABLE, ids=[row[0] for row in TABLE])
def test_policy_table(name, given, backend, step, cacheable):
    decision = decide(given)
    assert (decision.backend, decision.step) == (backend, step)
    assert decision.cacheable is cacheable
    assert decision.reason


@pytest.mark.parametrize("mode", ["NFT", "iptables-nft", "auto", "legacy ", "0"])
def test_invalid_override_is_an_error_naming_the_value(mode):
    with pytest.raises(ShimError) as err:
        decide(facts("host", "nft", NFT_ONLY, mode=mode))
    assert repr(mode) in str(err.value) and "nft or legacy" in str(err.value)


def test_no_binaries_at_all_is_an_error():
    with pytest.raises(ShimError, match="no iptables binaries on PATH"):
        decide(facts(binaries=NONE))


@pytest.mark.parametrize("given,missing,install", [
    (facts(alias="legacy", binaries=LEGACY_ONLY, support=ABSENT_LEGACY), "legacy", "iptables-nft"),
    (facts(alias="nft", binaries=NFT_ONLY, support=ABSENT_NFT), "nft", "iptables-legacy"),
], ids=["only legacy binaries, no legacy in the kernel", "only nft binaries, no nf_tables"])
def test_only_backend_the_kernel_cannot_run_is_one_clear_error(given, missing, install):
    with pytest.raises(ShimError) as err:
        decide(given)
    message = str(err.value)
    assert "this kernel cannot run %s" % missing in message and install in message
    assert "\n" not in message


def test_no_privilege_runs_the_alias_itself_even_beside_a_variant():
    decision = decide(facts(alias="nft", privileged=False))
    assert choose_binary(decision, "iptables-nft", "/s/iptables-nft", "/s/iptables", "nft") == "/s/iptables"


NFT_DECISION = Decision("nft", 4, "nft holds rules")

CHOICES = [
    ("variant present", ("/s/iptables-nft", "/s/iptables", "legacy"), "/s/iptables-nft"),
    ("variant missing, alias same backend", (None, "/s/iptables", "nft"), "/s/iptables"),
]


@pytest.mark.parametrize("name,given,expected", CHOICES, ids=[c[0] for c in CHOICES])
def test_choose_binary(name, given, expected):
    assert choose_binary(NFT_DECISION, "iptables-nft", *given) == expected


@pytest.mark.parametrize("alias_path,alias_backend", [
    (None, None),                  # nothing at all for this tool
    ("/s/iptables", "legacy"),     # only the other backend: never fall back to it
    ("/s/iptables", None),         # an alias whose backend cannot be told
])
def test_missing_binary_for_chosen_backend_is_an_error(alias_path, alias_backend):
    with pytest.raises(ShimError) as err:
        choose_binary(NFT_DECISION, "iptables-nft-save", None, alias_path, alias_backend)
    message = str(err.value)
    assert "iptables-nft-save is not on PATH" in message and "step 4" in message
    assert "\n" not in message


@pytest.mark.parametrize("given", [
    facts(alias="legacy", rules=UNKNOWN, hints=UNKNOWN),                       # nothing could be read
    facts(alias="legacy", rules={"nft": None, "legacy": False}),               # netlink refused, nft rules unseen
    facts(alias="nft", rules={"nft": False, "legacy": None}, hints={"nft": False, "legacy": None}),
    facts(alias="nft", rules=NFT_ONLY, hints={"nft": False, "legacy": None}),  # a legacy hint would win
], ids=["all unread", "nft unread", "legacy unread", "legacy hint unread"])
def test_unread_facts_that_could_change_the_backend_are_an_error(given):
    with pytest.raises(ShimError, match="could not read .* IPTABLES_SHIM_MODE"):
        decide(given)
