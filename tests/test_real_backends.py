"""Real kernels, real binaries: which backend receives a rule written through the shim.

Every case runs in a fresh network namespace. Rules are set up directly with the variant binaries
(`iptables-nft`, `iptables-legacy`, `ip6tables-legacy`, ...), the shim is reached through PATH (in a
container: /opt/iptables-shim/bin first, the image's own /usr/sbin after it), asked to write one
rule, and the result is read back from the kernel with the host's real save binaries.
"""

import json
import os
import shutil

import pytest

from conftest import BIN, REPO, SYSTEM_PATH, shim_env
from rootfs import WRITE4, WRITE6, assert_only_in, landed
from shim_output import shim_error_line

# (case, image backends, image alias, set-up with the real variant binaries, expected backend)
CONTAINER_CASES = [
    ("empty netns, image aliases nft", ("nft", "legacy"), "nft", "", "nft"),
    ("empty netns, image aliases legacy", ("nft", "legacy"), "legacy", "", "legacy"),
    ("nft rules only, image aliases legacy", ("nft", "legacy"), "legacy",
     "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP", "nft"),
    ("legacy rules only, image aliases nft", ("nft", "legacy"), "nft",
     "iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP", "legacy"),
    ("rules in both, image aliases legacy", ("nft", "legacy"), "legacy",
     "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP; iptables-legacy -A FORWARD -s 192.0.2.2 -j DROP", "nft"),
    ("IPv6-only legacy rules send an IPv4 call to legacy", ("nft", "legacy"), "nft",
     "ip6tables-legacy -A INPUT -s 2001:db8::1 -j DROP", "legacy"),
    ("legacy hint while nft holds more rules", ("nft", "legacy"), "nft",
     "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; "
     "for i in 1 2 3 4 5; do iptables-nft -A FORWARD -s 192.0.2.$i -j DROP; done; "
     "ip6tables-nft -A FORWARD -s 2001:db8::1 -j DROP", "legacy"),
    ("nft hint while legacy holds rules", ("nft", "legacy"), "legacy",
     "iptables-nft -t mangle -N KUBE-KUBELET-CANARY; iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP", "nft"),
    ("no alias, both binaries, empty netns", ("nft", "legacy"), None, "", "nft"),
    ("no alias, legacy binaries only, empty netns", ("legacy",), None, "", "legacy"),
]


@pytest.mark.parametrize("case,backends,alias,setup,expected", CONTAINER_CASES, ids=[c[0] for c in CONTAINER_CASES])
def test_container_rule_lands_in_the_backend_the_netns_uses(netns, make_chroot, case, backends, alias, setup, expected):
    container = make_chroot(backends, alias)
    if setup:
        netns.ok(setup)
    r = container.run(WRITE4, netns=netns, IPTABLES_SHIM_DEBUG="1")
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, expected)
    # The debug line says which binary ran, and it is the image's own, inside the container.
    assert r.stderr.decode().startswith("iptables-shim: iptables -> /usr/sbin/iptables-%s: %s" % (expected, expected))


def test_container_ip6tables_follows_the_same_decision(netns, make_chroot):
    """One decision per netns for both families: IPv4-only legacy rules send ip6tables to legacy."""
    container = make_chroot(("nft", "legacy"), "nft")
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP")
    r = container.run(WRITE6, netns=netns)
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "legacy", "ip6tables")


def test_container_empty_netns_leaves_legacy_untouched_when_writing_nft(netns, make_chroot):
    """The nft write in an empty netns creates no legacy table on the way (detection reads
    /proc/net/ip*_tables_names, not iptables-legacy)."""
    container = make_chroot(("nft", "legacy"), "nft")
    r = container.run(WRITE4, netns=netns)
    assert r.returncode == 0, r.stderr
    assert netns.ok("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names") == ""
    assert_only_in(netns, "nft")


def test_explain_says_container_inside_and_host_outside(netns, make_chroot, cache_dir):
    container = make_chroot(("nft", "legacy"), "legacy")
    inside = container.explain(netns=netns)
    assert inside["context"]["value"] == "container", inside["context"]
    assert inside["netns"]["kind"] == "pod"
    assert inside["path"] == ["/opt/iptables-shim/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    assert inside["default_alias"]["path"] == "/usr/sbin/iptables"
    assert inside["default_alias"]["backend"] == "legacy"
    assert inside["runs"] == "/usr/sbin/iptables-legacy"
    r = netns.run([os.path.join(BIN, "iptables-shim"), "explain", "--json"], env=shim_env(cache_dir))
    assert r.returncode == 0, r.stderr
    outside = json.loads(r.stdout.decode())
    assert outside["context"]["value"] == "host", outside["context"]
    assert outside["default_alias"]["backend"] == "nft"  # this machine's alternatives


@pytest.mark.parametrize("setup", [
    "iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP",
    "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; ip6tables-legacy -A INPUT -s 2001:db8::1 -j DROP",
], ids=["legacy rules", "legacy rules and hint"])
def test_host_context_uses_the_host_alias_even_where_legacy_holds_rules(netns, cache_dir, setup):
    """Host PATH, host mount and PID namespaces: the host's alias (nft on this machine) wins."""
    assert os.path.realpath("/usr/sbin/iptables").endswith("xtables-nft-multi"), "this test assumes an nft host"
    netns.ok(setup)
    r = netns.run(WRITE4, env=shim_env(cache_dir))
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "nft")


@pytest.mark.parametrize("setup", ["", "iptables-legacy -t nat -A POSTROUTING -s 192.0.2.1 -j MASQUERADE"],
                         ids=["fresh netns", "legacy nat rule"])
def test_mode_nft_with_only_legacy_binaries_fails_and_writes_nothing(netns, make_chroot, setup):
    container = make_chroot(("legacy",), "legacy")
    if setup:
        netns.ok(setup)
    before = netns.snapshot()
    r = container.run(WRITE4, netns=netns, IPTABLES_SHIM_MODE="nft")
    err = shim_error_line(r)
    assert "iptables-nft" in err and "IPTABLES_SHIM_MODE" in err, err
    assert netns.snapshot() == before  # legacy table lists and nft ruleset unchanged
    assert landed(netns) == {"nft": [], "legacy": []}


# --- the entry points wherever bin/ is reached from ---

def _write_through(netns, path_dir, cwd, cache_dir, name="iptables"):
    r = netns.run([name] + WRITE4[1:], env=shim_env(cache_dir, path=path_dir + ":" + SYSTEM_PATH), cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "nft")


def test_bin_through_a_symlinked_directory_from_another_cwd(netns, tmp_path, cache_dir):
    link = tmp_path / "linked-bin"
    os.symlink(BIN, str(link))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_through(netns, str(link), str(elsewhere), cache_dir)


def test_single_entry_symlinked_into_another_directory(netns, tmp_path, cache_dir):
    """`ln -s .../bin/iptables /usr/local/sbin/iptables` style: a link to the link finds the package."""
    d = tmp_path / "sbin"
    d.mkdir()
    os.symlink(os.path.join(BIN, "iptables"), str(d / "iptables"))
    _write_through(netns, str(d), "/", cache_dir)


def test_checkout_moved_after_copying(netns, tmp_path, cache_dir):
    first = tmp_path / "first"
    first.mkdir()
    for part in ("bin", "shim"):
        shutil.copytree(os.path.join(REPO, part), str(first / part), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    moved = tmp_path / "moved"
    os.rename(str(first), str(moved))
    _write_through(netns, str(moved / "bin"), str(tmp_path), cache_dir)
    r = netns.run([str(moved / "bin" / "iptables-shim"), "explain", "--json"], cwd="/",
                  env=shim_env(cache_dir, path=str(moved / "bin") + ":" + SYSTEM_PATH))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.decode())["decision"]["backend"] == "nft"
