"""shim.tools: the six names the shim answers to, and the real binaries' names behind them."""

import pytest

from shim import tools

SHIMMED = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]


@pytest.mark.parametrize("name", SHIMMED)
def test_split_name(name):
    family, suffix = tools.split_name(name)
    assert family in tools.FAMILIES and suffix in tools.TOOL_SUFFIXES and family + suffix == name


@pytest.mark.parametrize("name", ["iptables-nft", "iptables-legacy-save", "ip6tables-nft-restore", "xtables-nft-multi",
                                  "iptables-shim", "iptables-translate", "ebtables", "", "IPTABLES",
                                  "/usr/sbin/iptables"])
def test_names_the_shim_does_not_serve(name):
    assert tools.split_name(name) is None


def test_shim_names_are_exactly_the_six():
    assert tools.SHIM_NAMES == frozenset(SHIMMED)


def test_variant_name():
    assert tools.variant_name("ip6tables", "legacy", "-save") == "ip6tables-legacy-save"
    assert tools.variant_name("iptables", "nft", "") == "iptables-nft"


def test_variant_names_are_never_shimmed():
    variants = tools.all_variant_names()
    assert len(variants) == len(set(variants)) == 12
    assert not set(variants) & tools.SHIM_NAMES
    assert all(tools.split_name(v) is None for v in variants)


def test_backends_and_contexts():
    assert tools.BACKENDS == (tools.NFT, tools.LEGACY) == ("nft", "legacy")
    assert tools.CONTEXTS == ("host", "container")
