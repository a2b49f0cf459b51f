#!/usr/bin/python3
"""What one call costs through each route, against the real binary called directly.

    /usr/bin/python3 bench/frozen.py [--frozen dist/iptables-shim] [--baseline OLD-TREE] [-n 200] [--json]

Runs itself in a fresh private netns (`unshare -n`, root), writes one nft rule there (so the
decision is grounded and cached), warms each shim's cache, then times N calls of `iptables -S` each
way, interleaved (os.posix_spawn + wait4: wall-clock median and p90, and the CPU time user+sys of the
whole call, less disturbed by other load):

  direct          /usr/sbin/iptables-nft -S
  static no-op    exec of a static executable that returns at once (built here with gcc -static):
                  the floor for any exec in front of iptables
  python3 -IS     /usr/bin/python3 -I -S -c pass: the interpreter's start alone
  source          bin/iptables -S, a cache hit (container context)
  frozen, C route               the frozen tree, a cache hit: the launcher's C route answers
  frozen, C route, host         the frozen tree, host context (step 2): the C route answers
  frozen, Python route          the frozen tree, a cache hit with IPTABLES_SHIM_FAST_ROUTE=off
  frozen, first call            the frozen tree with IPTABLES_SHIM_CACHE=off: every call is a
                                netns's first, which the C route hands to Python
  baseline, first call          the same through OLD-TREE (--baseline: a frozen tree built from an
                                earlier commit, e.g. one without the C route)

Each call is also counted once under `strace -f -c` (the shim's start, then the real binary: execve
and all system calls). Prints one line per command with the time each adds to the direct call, and
the frozen tree's ratios to the source shim (docs/benchmark.md).
"""

import json
import os
import subprocess
import sys
import tempfile

from run import REPO, SYSTEM_PATH, spawn_times  # bench/ is sys.path[0]: one way to time a command


def summary(times, cpu):
    s, c = sorted(times), sorted(cpu)
    return {"median_ms": round(s[len(s) // 2] * 1000, 2), "p90_ms": round(s[int(len(s) * 0.9)] * 1000, 2),
            "min_ms": round(s[0] * 1000, 2), "cpu_median_ms": round(c[len(c) // 2] * 1000, 2), "n": len(s)}


def syscall_counts(argv, env):
    """(execve calls, system calls) of one run, from `strace -f -c` (None where strace is missing)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        try:
            subprocess.run(["strace", "-f", "-qq", "-c", "-o", out.name] + argv, env=env, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError):
            return None, None
        execve = total = None
        for line in out.read().splitlines():
            fields = line.split()
            if fields and fields[-1] == "execve":
                execve = int(fields[3])
            elif fields and fields[-1] == "total":
                total = int(fields[3])
        return execve, total


def static_noop(directory):
    """A static executable that returns at once (gcc -static), or None without a static libc."""
    src, exe = os.path.join(directory, "noop.c"), os.path.join(directory, "noop")
    with open(src, "w") as f:
        f.write("int main(void) { return 0; }\n")
    r = subprocess.run(["gcc", "-static", "-O2", "-o", exe, src], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return exe if r.returncode == 0 else None


def measure(frozen, n, baseline=None):
    subprocess.run(["iptables-nft", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"], check=True,
                   env={"PATH": SYSTEM_PATH})
    with tempfile.TemporaryDirectory() as tmp:
        noop = static_noop(tmp)
        container = {"IPTABLES_SHIM_CONTEXT": "container"}
        # (label, argv, directory first on PATH, extra environment, is a shim answering from its cache)
        cases = [("direct iptables-nft -S", ["/usr/sbin/iptables-nft", "-S"], None, {}, False),
                 ("python3 -I -S -c pass", ["/usr/bin/python3", "-I", "-S", "-c", "pass"], None, {}, False),
                 ("source shim, cache hit", [os.path.join(REPO, "bin", "iptables"), "-S"], os.path.join(REPO, "bin"),
                  container, True)]
        if noop:
            cases.insert(1, ("static no-op exec", [noop], None, {}, False))
        if frozen:
            shim = [os.path.join(frozen, "iptables"), "-S"]
            cases += [("frozen, C route, cache hit", shim, frozen, container, True),
                      ("frozen, C route, host context", shim, frozen, {"IPTABLES_SHIM_CONTEXT": "host"}, False),
                      ("frozen, Python route, cache hit", shim, frozen,
                       dict(container, IPTABLES_SHIM_FAST_ROUTE="off"), True),
                      ("frozen, first call", shim, frozen, dict(container, IPTABLES_SHIM_CACHE="off"), False)]
        if baseline:
            cases.append(("baseline, first call", [os.path.join(baseline, "iptables"), "-S"], baseline,
                          dict(container, IPTABLES_SHIM_CACHE="off"), False))
        times = {label: [] for label, _, _, _, _ in cases}
        cpu = {label: [] for label, _, _, _, _ in cases}
        envs = []
        for i, (label, argv, bindir, extra, cached) in enumerate(cases):
            cache = os.path.join(tmp, str(i))
            os.mkdir(cache, 0o700)
            env = dict({"PATH": (bindir + ":" if bindir else "") + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache},
                       **extra)
            for _ in range(3):  # warm: page cache and the shim's per-netns entry
                spawn_times(argv, env)
            if cached and not os.listdir(cache):
                raise SystemExit("bench: %s wrote no cache entry; not a cache-hit measurement" % label)
            envs.append(env)
        # Interleaved, one run of each in turn: load from elsewhere hits every case alike.
        for _ in range(n):
            for (label, argv, _, _, _), env in zip(cases, envs):
                wall, used = spawn_times(argv, env)
                times[label].append(wall)
                cpu[label].append(used)
        results = {label: summary(times[label], cpu[label]) for label, _, _, _, _ in cases}
        for (label, argv, _, _, _), env in zip(cases, envs):
            results[label]["execve"], results[label]["syscalls"] = syscall_counts(argv, env)
    direct = results["direct iptables-nft -S"]
    for label, r in results.items():
        r["added_ms"] = round(r["median_ms"] - direct["median_ms"], 2)
        r["ratio_to_direct"] = round(r["median_ms"] / direct["median_ms"], 2)
    src = results["source shim, cache hit"]
    for label in ("frozen, C route, cache hit", "frozen, Python route, cache hit"):
        if label in results:
            results[label]["ratio_to_source"] = round(results[label]["median_ms"] / src["median_ms"], 2)
    if "baseline, first call" in results:
        results["frozen, first call"]["ratio_to_baseline"] = round(
            results["frozen, first call"]["median_ms"] / results["baseline, first call"]["median_ms"], 2)
    return results


def main(argv):
    args = list(argv[1:])
    frozen = baseline = None
    n, as_json = 200, False
    while args:
        a = args.pop(0)
        if a == "--frozen":
            frozen = os.path.abspath(args.pop(0))
        elif a == "--baseline":
            baseline = os.path.abspath(args.pop(0))
        elif a == "-n":
            n = int(args.pop(0))
        elif a == "--json":
            as_json = True
        elif a == "--in-netns":
            pass
        else:
            raise SystemExit(__doc__)
    if "--in-netns" not in argv:
        os.execvp("unshare", ["unshare", "-n", sys.executable] + argv + ["--in-netns"])
    results = measure(frozen, n, baseline)
    if as_json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for label, r in results.items():
            extra = "  (%.2fx source)" % r["ratio_to_source"] if "ratio_to_source" in r else ""
            extra += "  (%.2fx baseline)" % r["ratio_to_baseline"] if "ratio_to_baseline" in r else ""
            print("%-32s median %6.2f ms  p90 %6.2f ms  CPU %6.2f ms  added %+6.2f ms  %5.2fx direct  "
                  "execve %s  syscalls %s%s" % (label, r["median_ms"], r["p90_ms"], r["cpu_median_ms"], r["added_ms"],
                                               r["ratio_to_direct"], r["execve"], r["syscalls"], extra))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
