#!/usr/bin/python3
"""Start-up of the frozen shim against the source shim, on a cache hit.

    /usr/bin/python3 bench/frozen.py [--frozen dist/iptables-shim] [-n 200] [--json]

Runs itself in a fresh private netns (`unshare -n`, root), writes one nft rule there (so the
decision is grounded and cached), warms each shim's cache, then times N calls of `iptables -V` each
way, interleaved (os.posix_spawn + wait4: wall-clock median and p90, and the CPU time user+sys of the
whole call, less disturbed by other load). The real binary's own `iptables-nft -V` is measured
too, so the shim's overhead is the difference. Each call is also counted once under `strace -f -c`:
the execve calls (the shim's own start, then the real binary) and all system calls. Prints one line
per command and the ratios frozen/source of the medians (the target is <= 1.2).
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


def measure(frozen, n):
    subprocess.run(["iptables-nft", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"], check=True,
                   env={"PATH": SYSTEM_PATH})
    cases = [("real iptables-nft -V", ["/usr/sbin/iptables-nft", "-V"], None),
             ("python3 -I -S -c pass", ["/usr/bin/python3", "-I", "-S", "-c", "pass"], None),
             ("source shim iptables -V", [os.path.join(REPO, "bin", "iptables"), "-V"], os.path.join(REPO, "bin"))]
    if frozen:
        cases.append(("frozen shim iptables -V", [os.path.join(frozen, "iptables"), "-V"], frozen))
    times = {label: [] for label, _, _ in cases}
    cpu = {label: [] for label, _, _ in cases}
    with tempfile.TemporaryDirectory() as tmp:
        envs = []
        for i, (label, argv, bindir) in enumerate(cases):
            cache = os.path.join(tmp, str(i))
            os.mkdir(cache, 0o700)
            # Container context: the hint decides (step 3) and is cached; a host-context call is
            # answered by its own facts and never cached (docs/decision.md#cache).
            env = {"PATH": (bindir + ":" if bindir else "") + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache,
                   "IPTABLES_SHIM_CONTEXT": "container"}
            for _ in range(3):  # warm: page cache and the shim's per-netns entry
                spawn_times(argv, env)
            if bindir and not os.listdir(cache):
                raise SystemExit("bench: %s wrote no cache entry; not a cache-hit measurement" % label)
            envs.append(env)
        # Interleaved, one run of each in turn: load from elsewhere hits every case alike.
        for _ in range(n):
            for (label, argv, _), env in zip(cases, envs):
                wall, used = spawn_times(argv, env)
                times[label].append(wall)
                cpu[label].append(used)
        results = {label: summary(times[label], cpu[label]) for label, _, _ in cases}
        for (label, argv, _), env in zip(cases, envs):
            results[label]["execve"], results[label]["syscalls"] = syscall_counts(argv, env)
    src = results["source shim iptables -V"]
    if "frozen shim iptables -V" in results:
        r = results["frozen shim iptables -V"]
        r["ratio_to_source"] = round(r["median_ms"] / src["median_ms"], 2)
        r["cpu_ratio_to_source"] = round(r["cpu_median_ms"] / src["cpu_median_ms"], 2)
    return results


def main(argv):
    args = list(argv[1:])
    frozen = None
    n, as_json = 200, False
    while args:
        a = args.pop(0)
        if a == "--frozen":
            frozen = os.path.abspath(args.pop(0))
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
    results = measure(frozen, n)
    if as_json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for label, r in results.items():
            extra = ("  (%.2fx source, CPU %.2fx)" % (r["ratio_to_source"], r["cpu_ratio_to_source"])
                     if "ratio_to_source" in r else "")
            print("%-26s median %6.2f ms  p90 %6.2f ms  CPU %6.2f ms  execve %s  syscalls %s%s"
                  % (label, r["median_ms"], r["p90_ms"], r["cpu_median_ms"], r["execve"], r["syscalls"], extra))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
