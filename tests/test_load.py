"""Load: many concurrent calls through the shim, in many fresh netns at once.

Every call must succeed, every netns must get exactly one backend, every rule must land in that
backend (read back from the kernel with the real save binaries), and the cache must hold only whole,
correct entries afterwards: with a cache directory per netns, with one shared directory, and off.

Why concurrent first calls in an empty netns cannot split between backends (container context):
the decision there is a pure function of (rules, hints, alias, binaries). With no rules anywhere,
every racing call reaches the same step (6: the alias, or 7: nft before legacy) with the same
answer, and the calls write only into that backend. So the only fact that could change under them
is "the chosen backend now holds rules", which leads to step 4 or 5 naming the same backend. A split
needs rules to appear in the *other* backend, which only a writer outside the shim can cause.
Decisions made with no rules are not cached, so nothing stale can be replayed either.
"""

import concurrent.futures
import os
import threading

import pytest

from conftest import BIN, SYSTEM_PATH, shim_env
from rootfs import sbin_dir
from shim.cache import parse_entry
from shim_output import debug_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces and rules")

NETNS_COUNT = 20
CALLS = 500


def kinds(tmp_path):
    """(label, seed (backend, family) or None, context, PATH, expected backend). Seeds use the real variants directly."""
    legacy_alias = sbin_dir(str(tmp_path / "alias-legacy"), aliases="legacy")
    no_alias = sbin_dir(str(tmp_path / "no-alias"), variants=("nft", "legacy"))
    system = BIN + ":" + SYSTEM_PATH
    legacy_path = BIN + ":" + legacy_alias + ":" + SYSTEM_PATH
    return [
        ("legacy rules, image aliases nft", ("legacy", "iptables"), "container", system, "legacy"),
        ("nft rules, image aliases legacy", ("nft", "iptables"), "container", legacy_path, "nft"),
        ("IPv6-only legacy rules, image aliases nft", ("legacy", "ip6tables"), "container", system, "legacy"),
        ("empty, image aliases nft", None, "container", system, "nft"),
        ("empty, image aliases legacy", None, "container", legacy_path, "legacy"),
        ("empty, no alias (step 7)", None, "container", BIN + ":" + no_alias, "nft"),
        ("empty, host context", None, "host", system, "nft"),
    ]


def call_for(i, n):
    """(argv, stdin, (family or None) of the rule it writes). Each writing call adds a distinct rule."""
    kind = i % 6
    if kind == 0:
        return ["iptables", "-w", "-A", "INPUT", "-s", "10.%d.%d.1" % (n, i), "-j", "ACCEPT"], None, "iptables"
    if kind == 1:
        return (["ip6tables", "-w", "-A", "INPUT", "-s", "2001:db8:%x::%x" % (n, i), "-j", "ACCEPT"],
                None, "ip6tables")
    if kind == 2:
        rules = "*filter\n-A OUTPUT -d 10.%d.%d.2/32 -j ACCEPT\nCOMMIT\n" % (n, i)
        return ["iptables-restore", "-w", "--noflush"], rules.encode(), "iptables"
    if kind == 3:
        return ["iptables", "-w", "-S"], None, None
    if kind == 4:
        return ["iptables-save"], None, None
    return ["ip6tables", "-w", "-L", "-n"], None, None


def run_calls(calls):
    """Run every call at the same moment (a barrier before the fork); return the results in order."""
    barrier = threading.Barrier(len(calls))

    def one(call):
        ns, argv, stdin, env = call
        barrier.wait()
        return ns.run(argv, env=env, input=stdin, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


@pytest.mark.slow
@pytest.mark.parametrize("cache_mode", ["per-netns", "shared", "off"])
def test_500_concurrent_calls_over_20_fresh_netns(tmp_path, make_netns, cache_mode):
    table = kinds(tmp_path)
    spaces = [make_netns("shimload-") for _ in range(NETNS_COUNT)]
    plan = []  # (ns, label, context, PATH, expected, cache dir or None)
    for n, ns in enumerate(spaces):
        label, seed, context, path, expected = table[n % len(table)]
        if seed:
            ns.ok("%s-%s -A FORWARD -s %s -j DROP" % (seed[1], seed[0],
                                                       "192.0.2.9" if seed[1] == "iptables" else "2001:db8::9"))
        if cache_mode == "off":
            cdir = None
        elif cache_mode == "shared":
            cdir = str(tmp_path / "cache")
        else:
            cdir = str(tmp_path / ("cache-%d" % n))
        plan.append((ns, label, context, path, expected, cdir, seed))

    def env_for(p):
        ns, label, context, path, expected, cdir, seed = p
        return shim_env(cdir or str(tmp_path / "unused"), path=path, IPTABLES_SHIM_CONTEXT=context,
                        IPTABLES_SHIM_DEBUG="1", IPTABLES_SHIM_CACHE="off" if cdir is None else None)

    waves = ([], [])
    meta = ([], [])
    for i in range(CALLS):
        n = i % NETNS_COUNT
        argv, stdin, writes = call_for(i // NETNS_COUNT, n)
        wave = 0 if i < CALLS // 2 else 1
        waves[wave].append((plan[n][0], argv, stdin, env_for(plan[n])))
        meta[wave].append((n, argv, writes))

    # Wave 1: half the calls, all started at once in netns where nothing has been decided yet:
    # every one of them is a first call. Wave 2: the other half, concurrently, once the first is done.
    import time

    start = time.monotonic()
    results = run_calls(waves[0])
    middle = time.monotonic()
    results += run_calls(waves[1])
    print("500 calls, cache %s: first wave (250 first calls) %.1f s, second wave %.1f s"
          % (cache_mode, middle - start, time.monotonic() - middle))
    meta = meta[0] + meta[1]

    seen = {n: set() for n in range(NETNS_COUNT)}
    keys = {n: set() for n in range(NETNS_COUNT)}
    written = {n: {"iptables": 0, "ip6tables": 0} for n in range(NETNS_COUNT)}
    for (n, argv, writes), r in zip(meta, results):
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode == 0, (plan[n][1], argv, err)
        debug = debug_line(r)
        seen[n].add(debug["backend"])
        keys[n].add(debug["netns"])
        if cache_mode == "off":
            assert debug["netns"] == "None" and "cache hit" not in err and "cached in" not in err
        if writes:
            written[n][writes] += 1

    for n, (ns, label, context, path, expected, cdir, seed) in enumerate(plan):
        assert seen[n] == {expected}, (label, seen[n])
        assert len(keys[n]) == 1, (label, keys[n])
        other = "legacy" if expected == "nft" else "nft"
        for family in ("iptables", "ip6tables"):
            got = ns.rules(expected, family)
            want = written[n][family] + (1 if seed == (expected, family) else 0)
            assert len(got) == want, (label, family, expected, len(got), want)
            assert len(set(got)) == len(got)
            # The other backend holds exactly what the seed put there: nothing leaked into it.
            leaked = ns.rules(other, family)
            assert len(leaked) == (1 if seed == (other, family) else 0), (label, family, leaked)
        if expected == "nft":
            assert ns.legacy_tables() == [], (label, "detection created legacy tables")

    if cache_mode == "off":
        for n in range(NETNS_COUNT):
            assert not os.path.exists(str(tmp_path / ("cache-%d" % n)))
        assert not os.path.exists(str(tmp_path / "unused"))
        return

    # One more call per netns, now that every netns holds rules: it stores (or hits) an entry where
    # the rules decided (steps 3-5); where the caller's own context answered (step 2, the host's
    # alias), nothing is stored, since that answer is the caller's, not the netns's.
    finals = run_calls([(p[0], ["iptables", "-S"], None, env_for(p)) for p in plan])
    assert all(r.returncode == 0 for r in finals)
    expected_by_key = {}
    for n, (p, r) in enumerate(zip(plan, finals)):
        (key,) = keys[n]
        step = debug_line(r)["step"]
        expected_by_key[key] = (p[4] if step in (3, 4, 5) else None, p[5])  # (backend or None, dir)
    dirs = {p[5] for p in plan}
    entries = {}
    for d in dirs:
        for name in (os.listdir(d) if os.path.isdir(d) else []):
            assert not name.startswith("."), "temporary file left behind: %s/%s" % (d, name)
            with open(os.path.join(d, name), "rb") as f:
                entry = parse_entry(f.read())
            assert entry is not None, "invalid cache entry %s/%s" % (d, name)
            entries[(d, name)] = entry
    for key, (expected, d) in expected_by_key.items():
        if expected is None:
            assert (d, key) not in entries, "a caller's own answer was cached for %s in %s" % (key, d)
            continue
        assert (d, key) in entries, "no entry for %s in %s" % (key, d)
        assert entries[(d, key)][0] == expected
    assert len(entries) == sum(1 for expected, _ in expected_by_key.values() if expected)
    assert 0 < len(entries) < NETNS_COUNT  # both kinds of answer were exercised


def concurrent_appends(ns, env, count):
    calls = [(ns, ["iptables", "-w", "-A", "INPUT", "-s", "10.77.%d.%d" % (i // 250, i % 250 + 1),
                   "-j", "ACCEPT"], None, env) for i in range(count)]
    return run_calls(calls)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_n_concurrent_appends_lose_nothing(tmp_path, make_netns, backend):
    ns = make_netns("shimload-")
    # Container context with no rules: the image's alias decides, and the first rules then ground it.
    path = BIN + ":" + SYSTEM_PATH
    if backend == "legacy":
        path = BIN + ":" + sbin_dir(str(tmp_path / "alias"), aliases="legacy") + ":" + SYSTEM_PATH
    env = shim_env(str(tmp_path / "cache"), path=path, IPTABLES_SHIM_CONTEXT="container")
    n = 150
    results = concurrent_appends(ns, env, n)
    failed = [(r.returncode, r.stderr) for r in results if r.returncode != 0]
    assert failed == []
    got = ns.rules(backend, "iptables")
    assert len(got) == n and len(set(got)) == n
    other = "legacy" if backend == "nft" else "nft"
    assert ns.rules(other, "iptables") == []
    if backend == "nft":
        assert ns.legacy_tables() == []


# An image whose alternatives disagree between families (`update-alternatives --set iptables
# ...-legacy` run, ip6tables forgotten): iptables* run legacy, ip6tables* run nft.
SPLIT_ALTERNATIVES = {"iptables": "legacy", "ip6tables": "nft"}


@pytest.mark.parametrize("context", ["container", "host"])
def test_first_calls_of_both_families_agree_when_the_aliases_disagree(tmp_path, make_netns, context):
    """One decision per netns for both families: with the image's iptables and ip6tables aliases
    naming different backends, concurrent first calls of iptables and ip6tables in an empty netns
    must still all land in one backend (the iptables alias's), cached or not."""
    spaces = [make_netns("shimload-") for _ in range(4)]
    path = BIN + ":" + sbin_dir(str(tmp_path / "split"), aliases=SPLIT_ALTERNATIVES) + ":" + SYSTEM_PATH
    calls = []
    for n, ns in enumerate(spaces):
        cache = {"IPTABLES_SHIM_CACHE": "off"} if n % 2 else {}
        env = shim_env(str(tmp_path / ("cache-%d" % n)), path=path, IPTABLES_SHIM_CONTEXT=context,
                       IPTABLES_SHIM_DEBUG="1", **cache)
        for i in range(10):
            calls.append((ns, ["iptables", "-w", "-A", "INPUT", "-s", "10.9.%d.%d" % (n, i), "-j", "ACCEPT"],
                          None, env))
            calls.append((ns, ["ip6tables", "-w", "-A", "INPUT", "-s", "2001:db8:9::%x:%x" % (n, i), "-j",
                               "ACCEPT"], None, env))
    results = run_calls(calls)
    for (ns, argv, _, _), r in zip(calls, results):
        assert r.returncode == 0, (argv, r.stderr)
    for ns in spaces:
        where = {(b, f): len(ns.rules(b, f)) for b in ("nft", "legacy") for f in ("iptables", "ip6tables")}
        assert where == {("legacy", "iptables"): 10, ("legacy", "ip6tables"): 10,
                         ("nft", "iptables"): 0, ("nft", "ip6tables"): 0}, where
