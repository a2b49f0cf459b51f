"""`iptables-shim explain [--json]`: every fact, the decision and the policy step that made it, the
cache entry, for the current netns; and nothing written, neither rules nor cache."""

import json
import re

import pytest

from conftest import BIN, cache_files, shim_env
from namespaces import call
from shim_output import shim_error_line

HINTED = ("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP; iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; "
          "iptables-nft -A INPUT -s 198.51.100.1 -j ACCEPT; iptables-nft -A INPUT -s 198.51.100.2 -j ACCEPT")


def explain(netns, env, *args):
    proc, _ = call(netns, ["iptables-shim", "explain"] + list(args), env)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    return proc.stdout.decode()


# (extra environment, backend, step, reason fragment, context)
CASES = {
    "container": ({"IPTABLES_SHIM_CONTEXT": "container"}, "legacy", 3, "hint", "container"),
    "host": ({}, "nft", 2, "host context", "host"),
    "override": ({"IPTABLES_SHIM_MODE": "nft", "IPTABLES_SHIM_CONTEXT": "container"}, "nft", 1,
                 "IPTABLES_SHIM_MODE=nft", "container"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_json_has_every_fact_the_decision_and_its_step(netns, cache_dir, case):
    extra, backend, step, reason, context = CASES[case]
    netns.ok(HINTED)
    before = netns.snapshot()
    r = json.loads(explain(netns, shim_env(cache_dir, **extra), "--json"))
    assert r["decision"]["backend"] == backend and r["decision"]["step"] == step
    assert reason in r["decision"]["reason"]
    assert r["runs"] == "/usr/sbin/iptables-%s" % backend
    # The facts, whatever decided: rules and hints per backend as the kernel holds them.
    assert {b: (s["rules"], s["hint"]) for b, s in r["backends"].items()} == {
        "nft": (True, False), "legacy": (True, True)}
    assert all(s["source"] for s in r["backends"].values())
    assert r["context"]["value"] == context and r["context"]["why"]
    assert r["netns"] == {"kind": "pod", "key": netns.cache_key()}
    assert r["default_alias"]["path"] == "/usr/sbin/iptables" and r["default_alias"]["backend"] == "nft"
    assert r["default_alias"]["how"]
    assert r["mode_override"] == extra.get("IPTABLES_SHIM_MODE")
    assert r["binaries"]["iptables-legacy-save"] == "/usr/sbin/iptables-legacy-save"
    assert r["binaries"]["ip6tables-nft"] == "/usr/sbin/ip6tables-nft"
    assert not any(p.startswith(BIN) for p in r["binaries"].values())  # the shim is never a binary
    assert r["path"][0] == BIN and r["family"] == "iptables"
    assert r["cache"] == {"dir": str(cache_dir), "entry": None}
    # Explaining writes nothing: no rule, no table, no cache entry.
    assert netns.snapshot() == before
    assert cache_files(cache_dir) == []


def test_text_prints_the_decision_line_first(netns, cache_dir):
    netns.ok(HINTED)
    text = explain(netns, shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container"))
    lines = text.splitlines()
    assert re.match(r"^decision:\s+legacy \(step 3: kubelet's hint chain is in legacy only\)$", lines[0]), lines[0]
    assert re.match(r"^runs:\s+/usr/sbin/iptables-legacy$", lines[1]), lines[1]
    assert any(re.match(r"^context:\s+container ", l) for l in lines)
    assert any(re.match(r"^legacy:\s+rules=True hint=True", l) for l in lines)
    assert cache_files(cache_dir) == []


def test_explain_in_a_fresh_netns_changes_nothing(netns, cache_dir):
    before = netns.snapshot()
    r = json.loads(explain(netns, shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container"), "--json"))
    assert (r["decision"]["backend"], r["decision"]["step"], r["decision"]["cacheable"]) == ("nft", 6, False)
    assert {b: (s["rules"], s["hint"]) for b, s in r["backends"].items()} == {
        "nft": (False, False), "legacy": (False, False)}
    assert netns.snapshot() == before
    assert cache_files(cache_dir) == []


def test_explain_reports_the_entry_a_call_cached_and_leaves_it(netns, cache_dir):
    netns.ok(HINTED)
    env = shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container")
    proc, _ = call(netns, ["iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"], env)
    assert proc.returncode == 0, proc.stderr
    entry = cache_dir / netns.cache_key()
    written = entry.read_bytes()
    r = json.loads(explain(netns, env, "--json", "--family", "ip6tables"))
    assert r["cache"]["entry"] == {"backend": "legacy", "step": 3, "reason": "kubelet's hint chain is in legacy only"}
    assert r["family"] == "ip6tables" and r["runs"] == "/usr/sbin/ip6tables-legacy"
    assert entry.read_bytes() == written and cache_files(cache_dir) == [entry.name]


@pytest.mark.parametrize("args", [[], ["explian"], ["frobnicate", "--json"], ["explain", "--yaml"],
                                  ["explain", "--json", "extra"], ["explain", "--family"],
                                  ["explain", "--family", "arptables"], ["explain", "-j"]])
def test_unknown_verbs_and_arguments_are_one_line(netns, cache_dir, args):
    netns.ok(HINTED)
    before = netns.snapshot()
    proc, _ = call(netns, ["iptables-shim"] + args, shim_env(cache_dir))
    line = shim_error_line(proc)
    assert "usage: iptables-shim" in line
    assert netns.snapshot() == before and cache_files(cache_dir) == []
