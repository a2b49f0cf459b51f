"""Native nf_tables tables beside iptables rules, on a real kernel (docs/decision.md#native-nf_tables-tables).

kube-proxy's nftables mode (GA in 1.33: `table ip kube-proxy` and `table ip6 kube-proxy`), Docker 29's
nftables firewall backend (`table ip docker-bridges` and `table ip6 docker-bridges`) and firewalld
(`table inet firewalld`) write native tables, which are not iptables rules (SPEC "rules[backend]"): a
native table alone is "no rules", and legacy rules beside one mean legacy, never nft. Each layout is
written here as its program writes it (the tables, base chains, regular chains, sets, maps and rules
of kube-proxy's pkg/proxy/nftables, moby's nftablesdoc "new daemon" ruleset, firewalld's
`inet firewalld`), with `nft -f`, in a fresh netns; then, beside it, no iptables rules, legacy rules,
iptables-nft rules, or kubelet's hint chain in either backend.

The shim is run as a container's caller runs it (its bin/ first on PATH, an image alias naming the
backend that would be wrong if the native table counted, IPTABLES_SHIM_CONTEXT=container), through
both probes: the kernel probe, and the reference probe (`*-save` output) with the kernel probe
refused by a seccomp filter that refuses only the shim's own sockets (test_faults.REFUSALS). The rule
written is read back from the kernel with iptables-legacy-save / iptables-nft-save, and the native
tables with `nft -s list table` (untouched).

A native table named like iptables' (`table ip filter` written by `nft`, not by iptables-nft) is an
nf_tables table of family ip named like iptables' table: its rules count (SPEC), the kernel probe
says so, and iptables-nft-save (1.8.9+) hides its base chains behind a "contains incompatible
base-chains" line, so the reference probe says "unknown" rather than "no": the two never disagree.
"""

import json
import os

import pytest

from conftest import BIN, SYSTEM_PATH, shim_env
from rootfs import WRITE4, WRITE6, assert_only_in, landed, sbin_dir
from shim_output import shim_error_line
from test_faults import REFUSALS  # the seccomp filter refusing only the shim's own (SOCK_CLOEXEC) sockets

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and rules")

# kube-proxy 1.33's nftables proxier (pkg/proxy/nftables/proxier.go): one table per IP family named
# kube-proxy, its base chains `${type}-${hook}` at priority dstnat-10 (-110) and post-DNAT (-90), the
# regular chains they jump to, the service-dispatch maps and sets, and one service (the API server's
# ClusterIP) with one endpoint; written as knftables writes it (`add ...` lines through `nft -f`).
KUBE_PROXY = """\
add table {fam} kube-proxy {{ comment "rules for kube-proxy" ; }}
add set {fam} kube-proxy cluster-ips {{ type {addr} ; comment "Active ClusterIPs" ; }}
add set {fam} kube-proxy nodeport-ips {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}
add map {fam} kube-proxy service-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {fam} kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add map {fam} kube-proxy no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {fam} kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {fam} kube-proxy firewall-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add chain {fam} kube-proxy filter-prerouting {{ type filter hook prerouting priority -110 ; }}
add chain {fam} kube-proxy filter-input {{ type filter hook input priority -110 ; }}
add chain {fam} kube-proxy filter-forward {{ type filter hook forward priority -110 ; }}
add chain {fam} kube-proxy filter-output {{ type filter hook output priority -110 ; }}
add chain {fam} kube-proxy filter-output-post-dnat {{ type filter hook output priority -90 ; }}
add chain {fam} kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {fam} kube-proxy nat-output {{ type nat hook output priority -100 ; }}
add chain {fam} kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {fam} kube-proxy nodeport-endpoints-check
add chain {fam} kube-proxy service-endpoints-check
add chain {fam} kube-proxy firewall-check
add chain {fam} kube-proxy cluster-ips-check
add chain {fam} kube-proxy services
add chain {fam} kube-proxy masquerading
add chain {fam} kube-proxy mark-for-masquerade
add chain {fam} kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {fam} kube-proxy endpoint-MIBO4EMV-default/kubernetes/tcp/https__{epname}/6443
add chain {fam} kube-proxy service-2QRHZV4L-default/kubernetes/tcp/https
add rule {fam} kube-proxy reject-chain reject
add rule {fam} kube-proxy filter-prerouting ct state new jump firewall-check
add rule {fam} kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule {fam} kube-proxy filter-input ct state new jump service-endpoints-check
add rule {fam} kube-proxy filter-forward ct state new jump service-endpoints-check
add rule {fam} kube-proxy filter-forward ct state new jump cluster-ips-check
add rule {fam} kube-proxy filter-output ct state new jump service-endpoints-check
add rule {fam} kube-proxy filter-output ct state new jump firewall-check
add rule {fam} kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
add rule {fam} kube-proxy nat-output jump services
add rule {fam} kube-proxy nat-prerouting jump services
add rule {fam} kube-proxy nat-postrouting jump masquerading
add rule {fam} kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule {fam} kube-proxy masquerading mark and 0x4000 == 0 return
add rule {fam} kube-proxy masquerading mark set mark xor 0x4000
add rule {fam} kube-proxy masquerading masquerade fully-random
add rule {fam} kube-proxy nodeport-endpoints-check {fam} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {fam} kube-proxy service-endpoints-check {fam} daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule {fam} kube-proxy firewall-check {fam} daddr . meta l4proto . th dport vmap @firewall-ips
add rule {fam} kube-proxy services {fam} daddr . meta l4proto . th dport vmap @service-ips
add rule {fam} kube-proxy services {fam} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule {fam} kube-proxy cluster-ips-check {fam} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {fam} kube-proxy cluster-ips-check {fam} daddr {cidr} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {fam} kube-proxy endpoint-MIBO4EMV-default/kubernetes/tcp/https__{epname}/6443 {fam} saddr {ep} jump mark-for-masquerade
add rule {fam} kube-proxy endpoint-MIBO4EMV-default/kubernetes/tcp/https__{epname}/6443 meta l4proto tcp dnat to {epport}
add rule {fam} kube-proxy service-2QRHZV4L-default/kubernetes/tcp/https {fam} daddr {svc} tcp dport 443 {fam} saddr != {pods} jump mark-for-masquerade
add rule {fam} kube-proxy service-2QRHZV4L-default/kubernetes/tcp/https numgen random mod 1 vmap {{ 0 : goto endpoint-MIBO4EMV-default/kubernetes/tcp/https__{epname}/6443 }}
add element {fam} kube-proxy cluster-ips {{ {svc}, {dns} }}
add element {fam} kube-proxy service-ips {{ {svc} . tcp . 443 : goto service-2QRHZV4L-default/kubernetes/tcp/https }}
add element {fam} kube-proxy no-endpoint-services {{ {dns} . udp . 53 : goto reject-chain }}
"""
KUBE_PROXY_FAMILIES = [
    dict(fam="ip", addr="ipv4_addr", svc="10.96.0.1", dns="10.96.0.10", cidr="10.96.0.0/16",
         pods="10.244.0.0/16", ep="192.168.0.10", epname="192.168.0.10", epport="192.168.0.10:6443"),
    dict(fam="ip6", addr="ipv6_addr", svc="fd00:10:96::1", dns="fd00:10:96::a", cidr="fd00:10:96::/112",
         pods="fd00:10:244::/56", ep="fd00:1::10", epname="fd00.1..10", epport="[fd00:1::10]:6443"),
]

# moby's nftables firewaller (Docker 29, --firewall-backend=nftables): integration/network/bridge/
# nftablesdoc "new daemon", the default bridge docker0; the IPv6 table as it is before an IPv6 network.
DOCKER_BRIDGES = """\
table ip docker-bridges {
	map filter-forward-in-jumps {
		type ifname : verdict
		elements = { "docker0" : jump filter-forward-in__docker0 }
	}
	map filter-forward-out-jumps {
		type ifname : verdict
		elements = { "docker0" : jump filter-forward-out__docker0 }
	}
	map nat-postrouting-in-jumps {
		type ifname : verdict
		elements = { "docker0" : jump nat-postrouting-in__docker0 }
	}
	map nat-postrouting-out-jumps {
		type ifname : verdict
		elements = { "docker0" : jump nat-postrouting-out__docker0 }
	}
	chain filter-forward-in__docker0 {
		ct state established,related counter accept
		iifname "docker0" counter accept comment "ICC"
		counter drop comment "UNPUBLISHED PORT DROP"
	}
	chain filter-forward-out__docker0 {
		ct state established,related counter accept
		counter accept comment "OUTGOING"
	}
	chain nat-postrouting-in__docker0 {
	}
	chain nat-postrouting-out__docker0 {
		oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade comment "MASQUERADE"
	}
	chain nat-prerouting-and-output {
	}
	chain filter-FORWARD {
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}
	chain nat-OUTPUT {
		type nat hook output priority -100; policy accept;
		ip daddr != 127.0.0.0/8 fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain raw-PREROUTING {
		type filter hook prerouting priority raw; policy accept;
	}
}
table ip6 docker-bridges {
	map filter-forward-in-jumps {
		type ifname : verdict
	}
	map filter-forward-out-jumps {
		type ifname : verdict
	}
	map nat-postrouting-in-jumps {
		type ifname : verdict
	}
	map nat-postrouting-out-jumps {
		type ifname : verdict
	}
	chain nat-prerouting-and-output {
	}
	chain filter-FORWARD {
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}
	chain nat-OUTPUT {
		type nat hook output priority -100; policy accept;
		ip6 daddr != ::1 fib daddr type local counter jump nat-prerouting-and-output
	}
	chain nat-POSTROUTING {
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}
	chain nat-PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}
	chain raw-PREROUTING {
		type filter hook prerouting priority raw; policy accept;
	}
}
"""

# firewalld 1.x/2.x (FirewallBackend=nftables): one inet table, the zone `public` on eth0.
FIREWALLD = """\
table inet firewalld {
	chain mangle_PREROUTING {
		type filter hook prerouting priority mangle + 10; policy accept;
		jump mangle_PREROUTING_POLICIES
	}
	chain mangle_PREROUTING_POLICIES {
		iifname "eth0" jump mangle_PRE_public
		return
	}
	chain mangle_PRE_public {
	}
	chain nat_PREROUTING {
		type nat hook prerouting priority dstnat + 10; policy accept;
		jump nat_PREROUTING_POLICIES
	}
	chain nat_PREROUTING_POLICIES {
		return
	}
	chain nat_POSTROUTING {
		type nat hook postrouting priority srcnat + 10; policy accept;
		jump nat_POSTROUTING_POLICIES
	}
	chain nat_POSTROUTING_POLICIES {
		return
	}
	chain nat_OUTPUT {
		type nat hook output priority -90; policy accept;
		jump nat_OUTPUT_POLICIES
	}
	chain nat_OUTPUT_POLICIES {
		return
	}
	chain filter_PREROUTING {
		type filter hook prerouting priority filter + 10; policy accept;
		icmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
		meta nfproto ipv6 fib saddr . mark . iif oif missing drop
	}
	chain filter_INPUT {
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		jump filter_INPUT_POLICIES
		reject with icmpx admin-prohibited
	}
	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		ip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24 } reject with icmpv6 addr-unreachable
		jump filter_FORWARD_POLICIES
		reject with icmpx admin-prohibited
	}
	chain filter_OUTPUT {
		type filter hook output priority filter + 10; policy accept;
		ct state { established, related } accept
		oifname "lo" accept
		jump filter_OUTPUT_POLICIES
	}
	chain filter_INPUT_POLICIES {
		iifname "eth0" jump filter_IN_public
		jump filter_IN_public
		reject with icmpx admin-prohibited
	}
	chain filter_FORWARD_POLICIES {
		reject with icmpx admin-prohibited
	}
	chain filter_OUTPUT_POLICIES {
		return
	}
	chain filter_IN_public {
		jump filter_IN_public_allow
		meta l4proto { icmp, ipv6-icmp } accept
	}
	chain filter_IN_public_allow {
		tcp dport 22 accept
		ip6 daddr fe80::/64 udp dport 546 accept
	}
}
"""

# name: (nft -f script, the native tables it makes as (family, name))
NATIVE = {
    "kube-proxy": ("".join(KUBE_PROXY.format(**f) for f in KUBE_PROXY_FAMILIES),
                   [("ip", "kube-proxy"), ("ip6", "kube-proxy")]),
    "docker-bridges": (DOCKER_BRIDGES, [("ip", "docker-bridges"), ("ip6", "docker-bridges")]),
    "firewalld": (FIREWALLD, [("inet", "firewalld")]),
}

LEGACY_RULES = "iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP"
NFT_RULES = "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP"
HINT = "-t mangle -N KUBE-IPTABLES-HINT"  # what kubelet writes with the backend it chose

# (case, iptables set-up beside the native tables, the image's alias, expected backend, step, what
# the nft fact "rules" must say). The alias names the backend that wins if the native tables
# counted as nft rules, or if the legacy rules were ignored.
BESIDE = [
    ("no iptables rules", "", "legacy", "legacy", 6, False),
    ("legacy rules", LEGACY_RULES, "nft", "legacy", 5, False),
    ("iptables-nft rules", NFT_RULES, "legacy", "nft", 4, True),
    ("legacy hint", "iptables-legacy " + HINT, "nft", "legacy", 3, False),
    ("nft hint", "iptables-nft " + HINT, "legacy", "nft", 3, False),
    ("nft hint, legacy rules", "iptables-nft %s; %s" % (HINT, LEGACY_RULES), "legacy", "nft", 3, False),
]
PROBES = ["kernel probe", "reference probe"]
KERNEL_SOURCE = "kernel (nf_tables netlink)"


def caller(tmp_path, alias, probe):
    """(argv prefix, environment) of a container's caller: the shim first on PATH, then an image
    /usr/sbin whose alias runs `alias`; under the reference probe, the shim's own kernel probes are
    refused (seccomp), the `*-save` binaries it runs instead are not."""
    path = BIN + ":" + sbin_dir(str(tmp_path / "alias"), aliases=alias) + ":" + SYSTEM_PATH
    env = shim_env(tmp_path / "cache", path=path, IPTABLES_SHIM_CONTEXT="container")
    wrap = REFUSALS["seccomp: kernel probes only"](tmp_path) if probe == "reference probe" else []
    return wrap, env


def write_native(netns, native):
    script, tables = NATIVE[native]
    r = netns.run(["nft", "-f", "-"], input=script.encode())
    assert r.returncode == 0, r.stderr.decode()
    return tables


def listing(netns, tables):
    """The native tables as nft lists them (stateless: no counters), one string per table."""
    return [netns.ok("nft -s list table %s %s" % t) for t in tables]


def explain(netns, wrap, env):
    r = netns.run(wrap + [os.path.join(BIN, "iptables-shim"), "explain", "--json"], env=env)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout.decode())


def assert_source(report, probe):
    """The nft facts came from the probe under test (legacy's, where no legacy table is listed,
    come from /proc alone, which no seccomp filter refuses)."""
    source = report["backends"]["nft"]["source"]
    if probe == "kernel probe":
        assert source == KERNEL_SOURCE, report["backends"]
    else:
        assert source.startswith("save") and "kernel probe unavailable" in source, report["backends"]


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("case,setup,alias,expected,step,nft_rules", BESIDE, ids=[b[0] for b in BESIDE])
@pytest.mark.parametrize("native", sorted(NATIVE))
def test_iptables_call_beside_native_tables(netns, tmp_path, native, case, setup, alias, expected, step,
                                            nft_rules, probe):
    """explain shows the native tables as no rules and the decision SPEC gives; `iptables -A`
    through the shim lands in that backend only; the native tables are as they were."""
    tables = write_native(netns, native)
    if setup:
        netns.ok(setup)
    native_before = listing(netns, tables)
    ruleset_before = netns.ok("nft -s list ruleset")
    wrap, env = caller(tmp_path, alias, probe)

    report = explain(netns, wrap, env)
    assert_source(report, probe)
    assert report["backends"]["nft"]["rules"] is nft_rules, report["backends"]
    assert (report["decision"]["backend"], report["decision"]["step"]) == (expected, step), report["decision"]

    r = netns.run(wrap + WRITE4, env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert_only_in(netns, expected)
    assert listing(netns, tables) == native_before
    if expected == "legacy":
        assert netns.ok("nft -s list ruleset") == ruleset_before  # nothing written into nf_tables


@pytest.mark.parametrize("native", ["kube-proxy", "docker-bridges"])
def test_ip6tables_call_beside_native_ip6_tables(netns, tmp_path, native):
    """`table ip6 kube-proxy` / `table ip6 docker-bridges` alone are no rules either: ip6tables
    follows the image's alias (legacy here), the ip6 table untouched."""
    tables = write_native(netns, native)
    before = listing(netns, tables)
    wrap, env = caller(tmp_path, "legacy", "kernel probe")
    r = netns.run(WRITE6, env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert_only_in(netns, "legacy", "ip6tables")
    assert listing(netns, tables) == before


# --- the two probes on the same kernel: they never disagree ---

# A native `table ip filter` written by nft (the nftables wiki's and Debian's old example layout):
# base chains named by nft's conventions, not iptables'.
IP_FILTER_RULE = ("add table ip filter\n"
                  "add chain ip filter input { type filter hook input priority 0 ; policy accept ; }\n"
                  "add rule ip filter input ip saddr 192.0.2.9 counter drop\n")
IP_FILTER_EMPTY = ("add table ip filter\n"
                   "add chain ip filter input { type filter hook input priority 0 ; policy drop ; }\n")
IP_FILTER_NAMED_LIKE_IPTABLES = ("add table ip filter\n"
                                 "add chain ip filter INPUT { type filter hook input priority 0 ; }\n"
                                 "add rule ip filter INPUT ip saddr 192.0.2.9 counter drop\n")
IP6_MANGLE_HINT = ("add table ip6 mangle\n"
                   "add chain ip6 mangle pre { type filter hook prerouting priority -150 ; }\n"
                   "add chain ip6 mangle KUBE-IPTABLES-HINT\n")

# (case, nft -f script, kernel probe (rules, hint), reference probe (rules, hint), what
# iptables-nft-save and ip6tables-nft-save print about it)
AGREE = [
    ("kube-proxy", NATIVE["kube-proxy"][0], (False, False), (False, False), "nothing"),
    ("docker-bridges", NATIVE["docker-bridges"][0], (False, False), (False, False), "nothing"),
    ("firewalld", NATIVE["firewalld"][0], (False, False), (False, False), "nothing"),
    ("native ip filter, a rule in its base chain input", IP_FILTER_RULE, (True, False), (None, False), "hidden"),
    ("native ip filter, base chain input without a rule", IP_FILTER_EMPTY, (False, False), (None, False), "hidden"),
    ("native ip filter, base chain named INPUT with a rule", IP_FILTER_NAMED_LIKE_IPTABLES, (True, False),
     (True, False), "listed"),
    ("native ip6 mangle, hint chain beside a base chain", IP6_MANGLE_HINT, (False, True), (None, True), "hidden"),
]

BOTH_PROBES = """
from shim.facts import nft_kernel, rules
from shim.facts.xtables import Unavailable
def refused(proc):
    raise Unavailable("netlink socket refused: Operation not permitted")
paths = {f: "/usr/sbin/%s-nft-save" % f for f in ("iptables", "ip6tables")}
print(json.dumps({"kernel": rules.backend_state("nft", paths).as_dict(),
                  "reference": rules.backend_state("nft", paths, kernel_probe=(refused, "kernel")).as_dict()}))
"""


@pytest.mark.parametrize("case,script,kernel,reference,save", AGREE, ids=[a[0] for a in AGREE])
def test_kernel_and_reference_probes_agree(netns, case, script, kernel, reference, save):
    """Where the reference probe answers, it answers what the kernel probe does; where the save
    output hides what the kernel holds, it says "unknown" (None), never "no"."""
    r = netns.run(["nft", "-f", "-"], input=script.encode())
    assert r.returncode == 0, r.stderr.decode()
    printed = netns.ok("iptables-nft-save; ip6tables-nft-save")
    if save == "nothing":  # native tables: iptables-nft-save does not even name them
        assert [l for l in printed.splitlines() if not l.startswith(("# Generated", "# Completed"))] == [], printed
    elif save == "hidden":
        assert "' contains incompatible base-chains" in printed and "-A " not in printed, printed
    else:
        assert "-A INPUT -s 192.0.2.9/32 -j DROP" in printed, printed
    before = netns.snapshot()
    out = netns.python(BOTH_PROBES)
    assert netns.snapshot() == before
    assert out["kernel"] == {"rules": kernel[0], "hint": kernel[1], "source": KERNEL_SOURCE}, out
    got = out["reference"]
    assert (got["rules"], got["hint"]) == reference, out
    for fact, k in zip(("rules", "hint"), kernel):
        assert got[fact] in (k, None), ("the reference contradicts the kernel", fact, out)
    if None in reference:
        assert "base chains not listed by iptables-nft-save" in got["source"] or \
            "base chains not listed by ip6tables-nft-save" in got["source"], got


# (image alias, probe, expected: a backend, or "undecided")
IP_FILTER_CALLS = [
    ("legacy", "kernel probe", "nft"),       # its rule counts: step 4
    ("nft", "kernel probe", "nft"),
    ("nft", "reference probe", "nft"),       # unknown rules, but nft either way (step 4 or 6)
    ("legacy", "reference probe", "undecided"),  # nft (rule) or legacy (alias): stop, write nothing
]


@pytest.mark.parametrize("alias,probe,expected", IP_FILTER_CALLS, ids=["%s alias, %s" % c[:2] for c in IP_FILTER_CALLS])
def test_native_ip_filter_with_a_rule_counts_as_nft(netns, tmp_path, alias, probe, expected):
    """A native `table ip filter` with a rule is an nf_tables table of family ip named like
    iptables' that holds a rule: nft rules (SPEC). Through the reference probe, where that rule is
    out of sight, the shim decides only what both readings agree on."""
    r = netns.run(["nft", "-f", "-"], input=IP_FILTER_RULE.encode())
    assert r.returncode == 0, r.stderr.decode()
    native_chain = netns.ok("nft -s list chain ip filter input")
    wrap, env = caller(tmp_path, alias, probe)
    before = netns.snapshot()
    r = netns.run(wrap + WRITE4, env=env)
    if expected == "undecided":
        err = shim_error_line(r)
        assert "could not read the rules of nft" in err and "IPTABLES_SHIM_MODE" in err, err
        assert netns.snapshot() == before
        assert landed(netns) == {"nft": [], "legacy": []}
        report = explain(netns, wrap, env)
        assert report["decision"] is None and report["backends"]["nft"]["rules"] is None, report
        return
    assert r.returncode == 0, r.stderr.decode()
    assert_only_in(netns, expected)
    # iptables-nft adds its own INPUT chain to the same table; nft's chain and rule stay as they were.
    assert netns.ok("nft -s list chain ip filter input") == native_chain


# --- doctor ---

DOCTOR_CASES = [
    # (native set-up, beside it, nft tables reported for iptables, nft rules, problems)
    ("kube-proxy", LEGACY_RULES, [], False, []),
    ("docker-bridges", LEGACY_RULES, [], False, []),
    ("firewalld", LEGACY_RULES, [], False, []),
    ("firewalld", "iptables-legacy " + HINT, [], False, []),
    ("native ip filter", LEGACY_RULES, ["filter"], True, ["split"]),
]


@pytest.mark.parametrize("native,setup,tables,rules,problems", DOCTOR_CASES,
                         ids=["%s, %s" % (c[0], c[1].split(" -")[0] + (" hint" if "HINT" in c[1] else "")) for c in DOCTOR_CASES])
def test_doctor_does_not_count_native_tables(netns, tmp_path, native, setup, tables, rules, problems):
    """doctor reads with the same kernel probe: a native table is neither an nft table nor a rule
    of iptables (no split beside legacy rules); a native `ip filter` with a rule is both."""
    if native == "native ip filter":
        r = netns.run(["nft", "-f", "-"], input=IP_FILTER_RULE.encode())
        assert r.returncode == 0, r.stderr.decode()
    else:
        write_native(netns, native)
    netns.ok(setup)
    before = netns.snapshot()
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "IPTABLES_SHIM_CACHE_DIR": str(tmp_path / "cache"),
           "IPTABLES_SHIM_CONFIG": "/nonexistent/iptables-shim.conf"}
    r = netns.run([os.path.join(BIN, "iptables-shim"), "doctor", "--json", "--netns", netns.path], env=env)
    assert r.returncode == (1 if problems else 0), r.stderr.decode()
    (entry,) = json.loads(r.stdout.decode())["namespaces"]
    assert netns.snapshot() == before
    nft = entry["backends"]["nft"]
    assert nft["iptables"]["tables"] == tables and nft["ip6tables"]["tables"] == [], nft
    assert entry["summary"]["nft"]["rules"] is rules, entry["summary"]
    assert sorted(p["kind"] for p in entry["problems"]) == problems, entry["problems"]
    hinted = "HINT" in setup
    assert entry["container_decision"]["backend"] == ("nft" if rules and not hinted else "legacy"), entry
