"""shim.log: the one line a call is described by, and its parser, side by side."""

from shim.log import format_line, parse_line
from shim.policy import Decision


def test_parse_line_reads_back_what_format_line_writes():
    d = Decision("legacy", 5, "legacy holds rules; really")
    line = format_line("ip6tables-save", "/usr/sbin/ip6tables-legacy-save", d, "cache hit /run/x/cookie-7", "cookie-7")
    for prefix in ("", "iptables-shim: ", "2026-11-26T10:00:00+0000 pid=42 "):
        assert parse_line(prefix + line) == {
            "name": "ip6tables-save", "binary": "/usr/sbin/ip6tables-legacy-save", "backend": "legacy",
            "step": 5, "reason": "legacy holds rules; really", "how": "cache hit /run/x/cookie-7",
            "netns": "cookie-7"}


def test_parse_line_refuses_other_text():
    assert parse_line("iptables v1.8.9 (nf_tables): Permission denied") is None
    assert parse_line("a -> b: nft (step x: y; z; netns q)") is None


def test_a_control_character_never_splits_or_forges_a_line():
    """A directory named with a newline (or any control character) is written as \\xNN: the call
    stays one line, and a crafted path cannot add a line that looks like another call's."""
    from shim.log import format_line, parse_line
    from shim.policy import Decision

    line = format_line("iptables", "/opt/x\n2026-01-01T00:00:00+0000 pid=1 iptables -> /evil\x7f/iptables-nft",
                       Decision("nft", 4, "nft holds rules"), "cache hit", "cookie-1")
    assert "\n" not in line and "\x7f" not in line
    assert parse_line(line)["binary"] == "/opt/x\\x0a2026-01-01T00:00:00+0000 pid=1 iptables -> /evil\\x7f/iptables-nft"
