"""shim.cache's entry format: what is written, and what is refused when read back (a truncated,
foreign or tampered file is no entry). The cache directory's trust rules, on a real filesystem as
root and as other users: tests/test_cache.py."""

import pytest

from shim.cache import format_entry, parse_entry


@pytest.mark.parametrize("backend,step,reason", [
    ("nft", 3, "hint in nft only (KUBE-IPTABLES-HINT)"),
    ("legacy", 5, "legacy holds rules"),
    ("nft", 12, "x"),
])
def test_round_trip(backend, step, reason):
    data = format_entry(backend, step, reason)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert parse_entry(data) == (backend, step, reason)


def test_reason_whitespace_is_one_line():
    data = format_entry("nft", 4, "nft holds\nrules\t here ")
    assert parse_entry(data) == ("nft", 4, "nft holds rules here")


@pytest.mark.parametrize("data", [
    b"",
    b"nft 3 hint",  # truncated: no newline
    b"nft 3 hint\nlegacy 5 rules\n",  # two entries
    b"iptables 3 hint\n",  # not a backend
    b"nft three hint\n",
    b"nft -3 hint\n",
    b"nft 3\n",
    b"\xff\xfe 3 hint\n",  # not UTF-8
    b"/usr/sbin/iptables-nft 3 hint\n",  # a path is never an entry
], ids=repr)
def test_not_an_entry(data):
    assert parse_entry(data) is None
