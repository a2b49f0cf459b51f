"""Differential test: the kernel probes against the `*-save` reference, over many generated rulesets.

Each case is a random ruleset applied in a fresh netns (both backends, IPv4 and IPv6, random tables,
built-in and user chains with and without rules, kubelet's hint chains in mangle and elsewhere,
tables that exist but are empty, native nft tables that are not iptables tables: `inet firewalld`,
`ip kube-proxy`, `arp filter`, `inet mangle`, and native nft chains and rules inside the xtables
tables `ip filter` / `ip6 nat`, which iptables-nft-save does list). In each, for both backends:
kernel probe == save reference == what the generator put there, on both facts (rules, hint); and
neither probe changes anything (legacy table lists and the nft ruleset, before and after).

The seed is printed and in every failure message; rerun one with IPTABLES_SHIM_DIFF_SEED=N.
IPTABLES_SHIM_DIFF_CASES sets the number of cases (default 80).

Native nft content iptables-nft-save cannot show (a rule in a base chain with a non-iptables name,
a rule it cannot translate) is not generated here: there the reference is wrong or silent and the
kernel probe right; tests/test_kernel_probes.py shows those cases one by one.
"""

import json
import os
import random
import sys

from namespaces import Netns

BUILTIN = {
    "filter": ["INPUT", "FORWARD", "OUTPUT"],
    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
    "mangle": ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    "raw": ["PREROUTING", "OUTPUT"],
    "security": ["INPUT", "FORWARD", "OUTPUT"],
}
HINTS = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"]
NEAR_HINTS = ["KUBE-IPTABLES-HINTS", "KUBE-KUBELET", "KUBE-PROXY-CANARY"]  # not hints
FAMILIES = {"iptables": ("ip", "192.0.2.%d/32", "ip saddr 192.0.2.%d"),
            "ip6tables": ("ip6", "2001:db8::%d/128", "ip6 saddr 2001:db8::%d")}
N_CASES = int(os.environ.get("IPTABLES_SHIM_DIFF_CASES", "80"))


def rule_body(rng, family, user_chains):
    n = rng.randrange(1, 250)
    choices = [
        "-j ACCEPT",
        "-j RETURN",
        "-p tcp -m tcp --dport %d -j ACCEPT" % n,
        "-s %s -m comment --comment c%d" % (FAMILIES[family][1] % n, n),
    ]
    if user_chains:
        choices.append("-j " + rng.choice(user_chains))
    return rng.choice(choices)


def gen_xtables(rng, family):
    """(restore text, has_rules, has_hint) for one backend and family, written with *-restore."""
    lines, rules, hint = [], False, False
    for table in sorted(BUILTIN):
        shape = rng.random()
        if shape < 0.45:
            continue  # the table does not exist
        lines.append("*" + table)
        if shape < 0.6:
            lines.append("COMMIT")  # exists, empty
            continue
        users = ["U%d" % i for i in range(rng.randrange(0, 4))]
        if rng.random() < 0.35:
            users.append(rng.choice(HINTS))
            hint = hint or table == "mangle"
        if rng.random() < 0.2:
            users.append(rng.choice(NEAR_HINTS))
        for chain in users:
            lines.append(":%s - [0:0]" % chain)
        targets = [c for c in users if c.startswith("U")]
        density = rng.choice([0, 0.15, 0.5])  # 0: chains only; 0.15: often user-chain-only rules
        for chain in BUILTIN[table] + users:
            for _ in range(rng.randrange(1, 3) if rng.random() < density else 0):
                # Jumps only go to later user chains: the kernel refuses loops.
                later = targets[targets.index(chain) + 1:] if chain in targets else targets
                lines.append("-A %s %s" % (chain, rule_body(rng, family, later)))
                rules = True
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else "", rules, hint


def gen_native(rng):
    """(nft -f script, {family: (rules, hint)}) of native nft content, counted for ip/ip6 xtables
    tables only."""
    cmds, facts = [], {"ip": [False, False], "ip6": [False, False]}
    if rng.random() < 0.4:
        cmds += ["add table inet firewalld", "add chain inet firewalld filter_IN",
                 "add rule inet firewalld filter_IN ct state established accept"]
    if rng.random() < 0.4:
        fam = rng.choice(["ip", "ip6"])
        cmds += ["add table %s kube-proxy" % fam, "add chain %s kube-proxy services" % fam,
                 "add rule %s kube-proxy services counter accept" % fam]
    if rng.random() < 0.3:
        cmds += ["add table arp filter", "add chain arp filter c", "add rule arp filter c counter"]
    if rng.random() < 0.3:
        cmds += ["add table inet mangle", "add chain inet mangle %s" % rng.choice(HINTS)]
    if rng.random() < 0.3:
        cmds += ["add table %s %s" % (rng.choice(["ip", "ip6"]), rng.choice(sorted(BUILTIN)))]  # empty table
    if rng.random() < 0.3:
        fam, table = rng.choice(["ip", "ip6"]), rng.choice(sorted(BUILTIN))
        cmds += ["add table %s %s" % (fam, table), "add chain %s %s NATIVE" % (fam, table)]
        if rng.random() < 0.6:
            match = FAMILIES["iptables" if fam == "ip" else "ip6tables"][2] % rng.randrange(1, 250)
            cmds.append("add rule %s %s NATIVE %s counter accept" % (fam, table, match))
            facts[fam][0] = True
    if rng.random() < 0.2:
        fam = rng.choice(["ip", "ip6"])
        cmds += ["add table %s mangle" % fam, "add chain %s mangle %s" % (fam, rng.choice(HINTS))]
        facts[fam][1] = True
    return "\n".join(cmds) + "\n" if cmds else "", facts


def gen_case(rng):
    """The set-up script and the facts it must produce, {backend: {"rules", "hint"}}."""
    steps = []
    expected = {}
    for backend in ("nft", "legacy"):
        rules = hint = False
        if rng.random() < 0.12:  # kubelet's hint alone, as on a node before kube-proxy starts
            text = "*mangle\n:%s - [0:0]\nCOMMIT\n" % rng.choice(HINTS)
            steps.append(("%s-%s-restore" % (rng.choice(["iptables", "ip6tables"]), backend), text))
            expected[backend] = {"rules": False, "hint": True}
            continue
        for family in ("iptables", "ip6tables"):
            if rng.random() < 0.4:
                continue
            text, r, h = gen_xtables(rng, family)
            if text:
                steps.append(("%s-%s-restore" % (family, backend), text))
                rules, hint = rules or r, hint or h
        expected[backend] = {"rules": rules, "hint": hint}
    script, native = gen_native(rng)
    if script:
        steps.append(("nft -f -", script))
        for fam in ("ip", "ip6"):
            expected["nft"]["rules"] = expected["nft"]["rules"] or native[fam][0]
            expected["nft"]["hint"] = expected["nft"]["hint"] or native[fam][1]
    return steps, expected


# Runs inside the netns (Netns.python): one probe kind for both backends, as JSON.
WORKER = r"""
from shim.facts import rules, nft_kernel, legacy_kernel
out = {}
if sys.argv[1] == "kernel":
    for backend, probe in (("nft", nft_kernel.probe), ("legacy", legacy_kernel.probe)):
        r, h = probe()
        out[backend] = {"rules": r, "hint": h}
else:
    for backend in ("nft", "legacy"):
        s = rules.save_probe(backend, {f: "/usr/sbin/%s-%s-save" % (f, backend) for f in ("iptables", "ip6tables")})
        out[backend] = {"rules": s.rules, "hint": s.hint, "source": s.source}
print(json.dumps(out))
"""


def test_kernel_probes_agree_with_save_reference(netns):
    seed = int(os.environ.get("IPTABLES_SHIM_DIFF_SEED", random.SystemRandom().randrange(1 << 32)))
    print("differential seed %d (rerun: IPTABLES_SHIM_DIFF_SEED=%d)" % (seed, seed))
    rng = random.Random(seed)
    seen = {"nft": set(), "legacy": set()}
    for case in range(N_CASES):
        steps, expected = gen_case(rng)
        where = "seed %d case %d: %s" % (seed, case, json.dumps(steps))
        # A fresh netns for every case: the fixture's own for the first, then new ones.
        ns = netns if case == 0 else Netns.create("shimdiff-")
        try:
            for cmd, text in steps:
                r = ns.run(["/bin/sh", "-c", cmd], input=text.encode())
                assert r.returncode == 0, (where, cmd, r.stderr.decode())
            before = ns.snapshot()
            kernel = ns.python(WORKER, "kernel")
            assert ns.snapshot() == before, ("the kernel probe changed the netns", where)
            save = ns.python(WORKER, "save")
            assert ns.snapshot() == before, ("the save probe changed the netns", where)
            for backend in ("nft", "legacy"):
                reference = {k: save[backend][k] for k in ("rules", "hint")}
                assert kernel[backend] == reference == expected[backend], (
                    backend, "kernel", kernel[backend], "save", save[backend], "expected", expected[backend], where)
                seen[backend].add((expected[backend]["rules"], expected[backend]["hint"]))
        finally:
            if ns is not netns:
                ns.delete()
    # The generator reached every combination of facts in both backends (else the test proves little).
    for backend in ("nft", "legacy"):
        assert seen[backend] == {(False, False), (False, True), (True, False), (True, True)}, (backend, seen, seed)


if __name__ == "__main__":  # print generated cases, to read what the test covers
    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    for _ in range(3):
        steps, expected = gen_case(rng)
        for cmd, text in steps:
            sys.stdout.write("$ %s <<EOF\n%sEOF\n" % (cmd, text))
        sys.stdout.write("expected: %s\n\n" % json.dumps(expected))
