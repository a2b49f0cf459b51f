"""A cache hit loads only what it needs: no os, no probes, no subprocess (issue 3).

Measured with `python -X importtime` on a real call: the figures belong to bench/, but which
modules a hit loads is behaviour, and a stray import on the hot path is paid on every call."""

import os

from conftest import BIN, shim_env

# Modules a cache hit must never load: os and what it drags in (about a millisecond), the cold
# path (facts gathering, kernel probes, the policy's inputs) and process spawning.
COLD_ONLY = {"os", "posixpath", "_collections_abc", "subprocess", "shim.gather", "shim.facts.rules",
             "shim.facts.nft_kernel", "shim.facts.legacy_kernel", "shim.cli", "json",
             "shim.facts.distribution"}  # the os-release: read on the way to a refusal only


def imported_modules(netns, env, argv):
    r = netns.run(["/usr/bin/python3", "-X", "importtime", "-I", "-S", os.path.join(BIN, argv[0])] + argv[1:],
                  env=env)
    assert r.returncode == 0, r.stderr
    return {line.split("|")[-1].strip() for line in r.stderr.decode().splitlines()
            if line.startswith("import time:")}


def test_a_cache_hit_imports_no_cold_path_module(netns, cache_dir):
    netns.ok("iptables-nft -t mangle -N KUBE-IPTABLES-HINT")  # grounded: the decision is cached
    env = shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container")
    cold = imported_modules(netns, env, ["iptables", "-S"])
    assert len(os.listdir(str(cache_dir))) == 1
    hit = imported_modules(netns, env, ["iptables", "-S"])
    # The check can fail: the first (cold) call does load the probes.
    assert {"shim.gather", "shim.facts.nft_kernel"} <= cold
    assert {"shim.main", "shim.resolve", "shim.cache", "shim.execute"} <= hit
    assert not hit & COLD_ONLY, sorted(hit & COLD_ONLY)


def test_a_host_context_call_imports_no_cold_path_module(netns, cache_dir):
    """Step 2 (the host's alias) is answered by the caller's own facts on every call, never from
    the cache: that path too stays on posix (kernel support once imported os: about a millisecond)."""
    env = shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="host")
    loaded = imported_modules(netns, env, ["iptables", "-S"])
    assert {"shim.resolve", "shim.facts.kernel_support", "shim.facts.context"} <= loaded
    assert not loaded & COLD_ONLY, sorted(loaded & COLD_ONLY)
    # Nor does it ask the netns for its key (a socket's cookie) or read its cache entry: the answer
    # never uses them (bench/clients.py measured ~0.25 ms a call).
    assert "_socket" not in loaded


# What a netns's first call (the kernel probes, no cache) may not load either: os and what it drags
# in cost that call about a millisecond (bench/frozen.py), and the probes need only posix.
FIRST_CALL_NEVER = {"os", "posixpath", "_collections_abc", "subprocess", "shim.cli", "json", "re", "enum"}


def test_a_first_call_imports_no_os(netns, cache_dir):
    netns.ok("iptables-nft -A INPUT -j ACCEPT")
    env = shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container", IPTABLES_SHIM_CACHE="off")
    loaded = imported_modules(netns, env, ["iptables", "-S"])
    assert {"shim.gather", "shim.facts.nft_kernel", "shim.facts.legacy_kernel"} <= loaded
    assert not loaded & FIRST_CALL_NEVER, sorted(loaded & FIRST_CALL_NEVER)
