"""shim.resolve's pure parts: which name is the default alias, and what a caller's own facts
answer alone."""

import pytest

from shim.resolve import CallerFacts, answers_alone, default_alias

ALL = {n: "/s/" + n for n in ("iptables", "iptables-save", "iptables-restore", "ip6tables",
                              "ip6tables-save", "ip6tables-restore")}


@pytest.mark.parametrize("present,expected", [
    (ALL, "iptables"),
    ({k: v for k, v in ALL.items() if k != "iptables"}, "iptables-save"),
    ({"ip6tables-restore": "/s/ip6tables-restore", "iptables-restore": "/s/iptables-restore"}, "iptables-restore"),
    ({"ip6tables": "/s/ip6tables"}, "ip6tables"),
    ({}, None),
])
def test_default_alias_is_one_name_for_both_families(present, expected):
    name, path = default_alias(dict(present, **{"iptables-nft": "/s/iptables-nft"}))
    assert name == expected and path == (present.get(expected) if expected else None)


def caller(context="container", privileged=True, alias_backend="nft", support=None):
    return CallerFacts(context=context, privileged=privileged, alias_backend=alias_backend, support=support or {})


@pytest.mark.parametrize("given,step", [
    (caller("host"), 2),
    (caller(privileged=False), 0),
    (caller("host", privileged=False), 0),
    (caller(), None),                                      # the netns's facts are needed
    (caller("host", alias_backend=None), None),            # no alias: the netns decides
    (caller("host", support={"nft": "absent"}), None),     # the host alias cannot run here
])
def test_what_the_caller_alone_answers(given, step):
    decision = answers_alone(given)
    assert (decision.step if decision else None) == step
