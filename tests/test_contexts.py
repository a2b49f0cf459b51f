"""The four contexts a node runs iptables from, each with rules set up so that the naive answer
(whatever `iptables` means in the caller's filesystem) is wrong, and read back from the kernel.

| who                        | filesystem / PATH       | mount, PID ns | netns                         |
|----------------------------|-------------------------|---------------|-------------------------------|
| CNI plugin                 | the host's              | the host's    | the pod's                     |
| init container (istio-init)| its image's             | its own       | the pod's                     |
| node agent in a pod netns  | its image's             | its own       | the pod's                     |
| node agent, "host" netns   | its image's             | its own       | a named netns it nsenters     |

A container here is a root filesystem with its own binaries entered with its own mount and PID
namespaces and chroot (tests/rootfs.py).
"""

import json
import os
import subprocess
import time

import pytest

from conftest import BIN, shim_env
from rootfs import WRITE4, assert_only_in, landed

NFT_HOST = os.path.realpath("/usr/sbin/iptables").endswith("xtables-nft-multi")


def host_explain(netns, cache_dir, runner=None):
    cmd = [os.path.join(BIN, "iptables-shim"), "explain", "--json"]
    r = netns.run(cmd, env=shim_env(cache_dir)) if runner is None else runner(cmd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.decode())


@pytest.mark.parametrize("via", ["nsenter", "ip netns exec"])
def test_cni_plugin_host_path_in_pod_netns_uses_the_host_alias(netns, cache_dir, via):
    """The CNI plugin runs from the host's filesystem into the pod's netns; the pod netns already
    holds legacy rules (naive: legacy, the rules' backend), but a host-context call runs what the
    host's kubelet runs: the host alias. `ip netns exec` adds a new mount namespace on the host's
    own root, which must still count as the host."""
    assert NFT_HOST, "this test assumes the host aliases iptables to nft"
    netns.ok("iptables-legacy -t nat -A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE")
    env = shim_env(cache_dir)

    def run(cmd):
        if via == "nsenter":
            return netns.run(cmd, env=env)
        return subprocess.run(["ip", "netns", "exec", netns.name] + cmd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    report = host_explain(netns, cache_dir, runner=run)
    assert report["context"]["value"] == "host", report["context"]
    assert report["netns"]["kind"] == "pod"
    r = run(WRITE4)
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "nft")


def test_init_container_in_pod_netns_follows_the_rules_not_its_image(netns, make_chroot):
    """An init container whose image aliases legacy, in a pod netns where the host's CNI plugin
    already wrote nft rules: the rule joins nft."""
    container = make_chroot(("nft", "legacy"), "legacy")
    netns.ok("iptables-nft -t nat -A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE")
    report = container.explain(netns=netns)
    assert (report["context"]["value"], report["netns"]["kind"]) == ("container", "pod")
    r = container.run(WRITE4, netns=netns)
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "nft")


@pytest.mark.parametrize("pid_ns", [True, False], ids=["own PID ns", "hostPID"])
def test_node_agent_in_pod_netns_follows_the_rules_not_its_image(netns, make_chroot, pid_ns):
    """A node agent whose image aliases nft, in a pod netns where an older init container wrote
    legacy rules (IPv6 only): its IPv4 rule joins legacy. With hostPID the container is told apart
    by its chroot alone."""
    container = make_chroot(("nft", "legacy"), "nft")
    netns.ok("ip6tables-legacy -t nat -A OUTPUT -d 2001:db8::1 -j RETURN")
    report = container.explain(netns=netns, pid_ns=pid_ns)
    assert (report["context"]["value"], report["netns"]["kind"]) == ("container", "pod"), report["context"]
    r = container.run(WRITE4, netns=netns, pid_ns=pid_ns)
    assert r.returncode == 0, r.stderr
    assert_only_in(netns, "legacy")


# The named "host" netns: kubelet's hint in one backend, plus what would mislead a naive count.
HOST_NETNS_SETUPS = {
    # kube-proxy in legacy with kubelet's hint; firewalld's native nft table with rules, which is
    # not an iptables rule; the image aliases nft.
    "legacy host, firewalld nft table, image aliases nft": (
        "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; "
        "iptables-legacy -t nat -N KUBE-SERVICES; iptables-legacy -t nat -A PREROUTING -j KUBE-SERVICES; "
        "nft add table inet firewalld; "
        "nft add chain inet firewalld filter_INPUT '{ type filter hook input priority 10; }'; "
        "nft add rule inet firewalld filter_INPUT ct state established accept",
        "nft", "legacy"),
    # kubelet on nft (hint in nft mangle), an old legacy rule left behind; the image aliases legacy.
    "nft host, stale legacy rule, image aliases legacy": (
        "iptables-nft -t mangle -N KUBE-IPTABLES-HINT; "
        "iptables-nft -t nat -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE; "
        "iptables-legacy -A FORWARD -s 192.0.2.9 -j DROP",
        "legacy", "nft"),
}


@pytest.mark.parametrize("case", sorted(HOST_NETNS_SETUPS))
def test_node_agent_entering_named_host_netns_from_its_container(netns, make_netns, make_chroot, case):
    """The agent's process is inside its container (own mount and PID ns, chroot, in its pod netns)
    and joins the named netns by path, `nsenter --net=/run/netns/NAME`, before calling iptables.
    The rule lands in that netns's backend, and nothing lands in the pod netns it came from."""
    setup, image_alias, expected = HOST_NETNS_SETUPS[case]
    hostnet = make_netns()
    hostnet.ok(setup)
    pod_before = netns.snapshot()
    container = make_chroot(("nft", "legacy"), image_alias)
    report = container.explain(netns=netns, enter=hostnet)
    assert report["context"]["value"] == "container", report["context"]
    assert report["decision"]["backend"] == expected, report["decision"]
    r = container.run(WRITE4, netns=netns, enter=hostnet)
    assert r.returncode == 0, r.stderr
    assert_only_in(hostnet, expected)
    assert landed(netns) == {"nft": [], "legacy": []}
    assert netns.snapshot() == pod_before


# -- context when the roots of PID 1 and 2 cannot be read -------------------------------------------
# Some security modules deny even root /proc/1/root (this machine does). A /proc stand-in made of
# links to the real namespace files lets the same real inodes be seen with the roots unreadable.

def fake_proc(tmp_path, mnt_ns_of):
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink("/proc/self/ns/pid", str(proc / "self" / "ns" / "pid"))
    os.symlink("/proc/%s/ns/mnt" % mnt_ns_of, str(proc / "self" / "ns" / "mnt"))
    return str(proc)


def test_unreadable_roots_in_the_initial_mount_namespace_is_the_host(tmp_path):
    from shim.facts.context import detect_context

    assert detect_context(fake_proc(tmp_path, "self"))[0] == "host"


def test_unreadable_roots_in_another_mount_namespace_lets_the_rules_decide(tmp_path):
    """hostPID container or `ip netns exec`: not provably the host's filesystem, so `container`
    (steps 3-5 decide from the netns's rules, right in both cases)."""
    from shim.facts.context import detect_context

    other = subprocess.Popen(["unshare", "-m", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while os.readlink("/proc/%d/ns/mnt" % other.pid) == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare -m never entered its mount namespace"
            time.sleep(0.01)
        context, why = detect_context(fake_proc(tmp_path, other.pid))
    finally:
        other.kill()
        other.wait()
    assert context == "container", why
