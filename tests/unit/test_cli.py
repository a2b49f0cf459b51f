"""shim.cli.format_text: explain's text, from the plain report explain --json prints."""

from shim.cli import format_text

REPORT = {
    "decision": {"backend": "legacy", "step": 3, "reason": "kubelet's hint chain is in legacy only",
                 "cacheable": True, "source": "facts"},
    "runs": "/usr/sbin/iptables-legacy",
    "route": {"route": "python", "runs": None, "why": "no cache entry for this netns: Python decides"},
    "context": {"value": "container", "why": "IPTABLES_SHIM_CONTEXT=container"},
    "privilege": {"net_admin": True, "why": "CAP_NET_ADMIN in the effective set"},
    "netns": {"kind": "pod", "key": "cookie-7"},
    "backends": {"nft": {"rules": True, "hint": False, "source": "kernel (nf_tables netlink)"},
                 "legacy": {"rules": None, "hint": True, "source": "save (unread: ip6tables-legacy-save)"}},
    "kernel_support": {"nft": {"value": "loaded", "why": "nf_tables loaded"},
                       "legacy": {"value": None, "why": None}},
    "default_alias": {"name": "iptables", "path": "/usr/sbin/iptables", "backend": "nft", "how": "symlink chain"},
    "mode_override": None,
    "cache": {"dir": "/run/iptables-shim", "entry": {"backend": "legacy", "step": 3, "reason": "r"}},
    "path": ["/usr/sbin", "/usr/bin"],
    "warnings": ["w1"],
    "binaries": {"iptables": "/usr/sbin/iptables", "iptables-legacy": "/usr/sbin/iptables-legacy"},
}


def test_every_fact_on_its_own_line():
    lines = format_text(REPORT).splitlines()
    assert lines[0] == "decision:      legacy (step 3: kubelet's hint chain is in legacy only)"
    assert lines[1] == "runs:          /usr/sbin/iptables-legacy"
    assert lines[2] == "warning:       w1"
    assert lines[3] == "route:         python (no cache entry for this netns: Python decides)"
    assert "privilege:     yes (CAP_NET_ADMIN in the effective set)" in lines
    assert "legacy:        rules=None hint=True (from save (unread: ip6tables-legacy-save))" in lines
    assert "               kernel support unknown (not read)" in lines
    assert "default alias: /usr/sbin/iptables -> nft (by symlink chain)" in lines
    assert "cache:         /run/iptables-shim, entry for this netns: legacy (step 3: r)" in lines
    assert lines[-2:] == ["  %-24s %s" % ("iptables", "/usr/sbin/iptables"),
                          "  %-24s %s" % ("iptables-legacy", "/usr/sbin/iptables-legacy")]


def test_undecided_netns_still_shows_its_facts():
    report = dict(REPORT, decision=None, runs="error: could not read the rules of legacy", warnings=[])
    text = format_text(report)
    assert text.startswith("decision:      none\nruns:          error: could not read")
    assert "nft:           rules=True" in text
