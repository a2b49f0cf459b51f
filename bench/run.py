#!/usr/bin/python3
"""What a call through the shim costs, side by side with what it replaces. One command, as root:

    /usr/bin/python3 bench/run.py                 # ~1-2 minutes; --reps N (default 50), --json FILE,
                                                  # --frozen dist/iptables-shim (issue 4's ratio too)

Every scenario runs in its own fresh network namespace (`unshare -n`; the machine's own rules are
never touched), set up like a Kubernetes node of that backend: kubelet's hint chain
KUBE-IPTABLES-HINT in mangle (so a decision is grounded and cached), an empty filter table, and N
rules (0, 1,000, 100,000) loaded with `*-restore` into raw PREROUTING (a built-in chain, as
kube-proxy's jumps are) or, in the worst case for legacy, into user chains only. Then, interleaved
round by round so that drift on a shared machine hits every column alike, whole commands are
timed (posix_spawn + waitpid, output to /dev/null), medians in milliseconds:

  cold     bin/iptables -t filter -S   IPTABLES_SHIM_CACHE=off: every fact gathered, probes included
  cached   bin/iptables -t filter -S   a warm per-netns cache entry (the hot path)
  direct   iptables-<backend> -t filter -S, the real binary alone
  pass     /usr/bin/python3 -I -S -c pass, the interpreter alone
  save     iptables-<backend>-save, the reference probe the kernel probes replace
  probe    the backend's kernel probe in-process (nft_kernel.probe / legacy_kernel.probe), microseconds

The shim runs as in a container (IPTABLES_SHIM_CONTEXT=container), so it decides from the rules and
execs the backend that holds them. Targets (issue 3) are printed with the measured ratio and whether
each is met; where one is missed, by how much.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(REPO, "bin", "iptables")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON = "/usr/bin/python3"
HINT = "KUBE-IPTABLES-HINT"

# (key, label, backend, rules, layout)
SCENARIOS = [
    ("fresh", "fresh netns (no table anywhere)", None, 0, None),
    ("nft-0", "nft, 0 rules (hint, empty filter)", "nft", 0, "builtin"),
    ("nft-1k", "nft, 1,000 rules", "nft", 1000, "builtin"),
    ("nft-100k", "nft, 100,000 rules", "nft", 100000, "builtin"),
    ("legacy-0", "legacy, 0 rules (hint, empty filter)", "legacy", 0, "builtin"),
    ("legacy-1k", "legacy, 1,000 rules", "legacy", 1000, "builtin"),
    ("legacy-100k", "legacy, 100,000 rules", "legacy", 100000, "builtin"),
    ("legacy-100k-user", "legacy, 100,000 rules in user chains only", "legacy", 100000, "user"),
]


def restore_text(rules, layout):
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT",
             "*mangle", ":%s - [0:0]" % HINT, "COMMIT", "*raw", ":PREROUTING ACCEPT [0:0]"]
    chains = ["PREROUTING"] if layout == "builtin" else ["BENCH-%d" % i for i in range(100)]
    if layout == "user":
        lines += [":%s - [0:0]" % c for c in chains]
    for i in range(rules):
        lines.append("-A %s -s 10.%d.%d.%d/32 -j ACCEPT" % (chains[i % len(chains)], i >> 16, (i >> 8) & 255, i & 255))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def spawn_times(argv, env):
    """(wall-clock seconds, CPU seconds user+sys) of one run of argv, stdio on /dev/null. The CPU
    time is the work the process did, less disturbed than the wall clock by other load."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)]
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(devnull)
    if status != 0:
        raise RuntimeError("%s exited with status %d" % (argv, status))
    return elapsed, usage.ru_utime + usage.ru_stime


def spawn_time(argv, env):
    return spawn_times(argv, env)[0]


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def in_process_probe(backend, reps):
    """Median seconds of the backend's kernel probe called in this process (no interpreter start)."""
    sys.path.insert(0, REPO)
    from shim.facts import legacy_kernel, nft_kernel

    probe = nft_kernel.probe if backend == "nft" else legacy_kernel.probe
    probe()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        probe()
        times.append(time.perf_counter() - start)
    return median(times), probe()


def worker(key, reps):
    """Runs inside a fresh netns: set up one scenario, measure it, print JSON."""
    _, label, backend, rules, layout = [s for s in SCENARIOS if s[0] == key][0]
    if backend:
        proc = subprocess.run(["iptables-%s-restore" % backend], input=restore_text(rules, layout).encode(),
                              stderr=subprocess.PIPE, env={"PATH": SYSTEM_PATH})
        if proc.returncode:
            raise SystemExit("restore failed: %s" % proc.stderr.decode())
    real = "/usr/sbin/iptables-%s" % (backend or "nft")
    base = {"PATH": os.path.join(REPO, "bin") + ":" + SYSTEM_PATH, "LC_ALL": "C",
            "IPTABLES_SHIM_CONTEXT": "container"}
    cache_dir = tempfile.mkdtemp(prefix="shim-bench-")
    cold_env = dict(base, IPTABLES_SHIM_CACHE="off")
    cached_env = dict(base, IPTABLES_SHIM_CACHE_DIR=os.path.join(cache_dir, "c"))
    # Warm the cache, and check that it holds an entry where a decision is grounded.
    check = subprocess.run([SHIM, "-t", "filter", "-S"], env=dict(cached_env, IPTABLES_SHIM_DEBUG="1"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    debug = check.stderr.decode().strip()
    if check.returncode or not debug.startswith("iptables-shim: iptables -> %s:" % real):
        raise SystemExit("unexpected decision in %s: %s" % (label, debug))
    commands = {"pass": ([PYTHON, "-I", "-S", "-c", "pass"], base),
                "direct": ([real, "-t", "filter", "-S"], {"PATH": SYSTEM_PATH, "LC_ALL": "C"}),
                "cold": ([SHIM, "-t", "filter", "-S"], cold_env)}
    if backend:
        commands["cached"] = ([SHIM, "-t", "filter", "-S"], cached_env)
        # The same hit with a configuration file to read (docs/configuration.md), and a
        # host-context call, which the caller's own facts answer (step 2) without the cache.
        conf = os.path.join(cache_dir, "iptables-shim.conf")
        with open(conf, "w") as f:
            f.write("# bench: a few lines that change nothing\nIPTABLES_SHIM_CACHE=on\n"
                    "IPTABLES_SHIM_SYSLOG_SOCKET=off\n")
        commands["conf"] = ([SHIM, "-t", "filter", "-S"], dict(cached_env, IPTABLES_SHIM_CONFIG=conf))
        host_real = os.path.realpath("/usr/sbin/iptables")
        if host_real.endswith("-%s-multi" % backend) or host_real.endswith("-" + backend):
            commands["host"] = ([SHIM, "-t", "filter", "-S"],
                                dict(cached_env, IPTABLES_SHIM_CONTEXT="host"))
    times = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for _ in range(reps):
        for name, (argv, env) in commands.items():
            wall, used = spawn_times(argv, env)
            times[name].append(wall)
            cpu[name].append(used)
    result = {name: median(t) * 1000 for name, t in times.items()}
    result["cpu"] = {name: median(t) * 1000 for name, t in cpu.items()}
    result["decision"] = debug.split(": ", 2)[2] if debug else ""
    if backend:
        save = ["/usr/sbin/iptables-%s-save" % backend]
        save_reps = 5 if rules >= 100000 else 15
        result["save"] = median([spawn_time(save, {"PATH": SYSTEM_PATH}) for _ in range(save_reps)]) * 1000
        probe_time, answer = in_process_probe(backend, 200)
        result["probe_us"] = probe_time * 1e6
        result["probe_answer"] = list(answer)
        if not answer[1] or answer[0] != (rules > 0):
            raise SystemExit("kernel probe answered %s in %s" % (answer, label))
    print(json.dumps(result))


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ipt = subprocess.run(["/usr/sbin/iptables-nft", "--version"], stdout=subprocess.PIPE).stdout.decode().strip()
    py = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                        stdout=subprocess.PIPE).stdout.decode().strip()
    return ("%s UTC | %s | kernel %s | %s, %d CPUs, load %.1f | %s %s | %s" % (
        time.strftime("%Y-%m-%d %H:%M", time.gmtime()), platform.node(), platform.release(), cpu,
        os.cpu_count() or 0, os.getloadavg()[0], PYTHON, py, ipt))


def verdict(name, value, limit, cpu_value=None):
    """One target line: the wall-clock ratio decides; the CPU-time ratio is shown beside it."""
    ok = value <= limit
    cpu = "  (cpu %.3f)" % cpu_value if cpu_value is not None else ""
    line = "  %-62s %7.3f <= %.3f  %s%s" % (name, value, limit, "met   " if ok else "MISSED", cpu)
    if not ok:
        line += "  by %.0f%%" % ((value / limit - 1) * 100)
    return line, ok


def main():
    args = sys.argv[1:]
    if args[:1] == ["--worker"]:
        return worker(args[1], int(args[2]))
    if os.geteuid() != 0:
        raise SystemExit("run as root: every scenario needs its own network namespace (%s %s)"
                         % (PYTHON, " ".join(sys.argv)))
    reps = int(args[args.index("--reps") + 1]) if "--reps" in args else 50
    json_out = args[args.index("--json") + 1] if "--json" in args else None
    frozen = os.path.abspath(args[args.index("--frozen") + 1]) if "--frozen" in args else None
    print("iptables-shim benchmark: %s" % machine())
    print("medians of %d interleaved runs per command, wall-clock milliseconds (save: 15 runs, 5 at 100k);\n"
          "targets judged on wall-clock medians, the same ratio in CPU time (user+sys) beside it\n" % reps)
    results = {}
    for key, label, _, _, _ in SCENARIOS:
        proc = subprocess.run(["unshare", "-n", PYTHON, os.path.abspath(__file__), "--worker", key, str(reps)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode:
            raise SystemExit("%s: %s" % (label, proc.stderr.decode() or proc.stdout.decode()))
        results[key] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    head = "%-44s %7s %7s %7s %7s %9s %9s %11s" % ("scenario", "cold", "cached", "direct", "pass", "save",
                                                  "cold/hit", "probe (us)")
    print(head)
    print("-" * len(head))
    for key, label, backend, _, _ in SCENARIOS:
        r = results[key]
        fmt = lambda k, w=7, p=1: ("%*.*f" % (w, p, r[k])) if k in r else "%*s" % (w, "-")  # noqa: E731
        ratio = "%9.2f" % (r["cold"] / r["cached"]) if "cached" in r else "%9s" % "-"
        print("%-44s %s %s %s %s %s %s %s" % (label, fmt("cold"), fmt("cached"), fmt("direct"), fmt("pass"),
                                              fmt("save", 9), ratio, fmt("probe_us", 11, 0)))
    print("\ndecisions: " + "; ".join("%s -> %s" % (k, results[k]["decision"].split(" (")[0]) for k, *_ in SCENARIOS))
    print("\ntargets (issue 3):")
    lines, met = [], []
    c = lambda key, name: results[key]["cpu"][name]  # noqa: E731
    for b in ("nft", "legacy"):
        hi, lo = b + "-100k", b + "-0"
        lines.append(verdict("cold@100k / cold@0, %s" % b, results[hi]["cold"] / results[lo]["cold"], 1.5,
                             c(hi, "cold") / c(lo, "cold")))
    lines.append(verdict("cold@100k / iptables-nft-save@100k, nft",
                         results["nft-100k"]["cold"] / results["nft-100k"]["save"], 0.05))
    for key, label, backend, _, _ in SCENARIOS:
        r = results[key]
        if "cached" not in r:
            continue
        lines.append(verdict("cold / cached, %s" % label, r["cold"] / r["cached"], 1.5,
                             c(key, "cold") / c(key, "cached")))
    for key, label, backend, _, _ in SCENARIOS:
        r = results[key]
        if "cached" not in r:
            continue
        lines.append(verdict("cached / (pass + direct), %s" % label, r["cached"] / (r["pass"] + r["direct"]), 1.15,
                             c(key, "cached") / (c(key, "pass") + c(key, "direct"))))
    for line, ok in lines:
        print(line)
        met.append(ok)
    print("\ninformation (no target):")
    for key in ("nft-0", "legacy-0"):
        r = results[key]
        if "conf" in r:
            print("  %-62s %7.3f (cpu %.3f): docs/configuration.md" % (
                "cached with a configuration file / cached, " + key, r["conf"] / r["cached"],
                r["cpu"]["conf"] / r["cpu"]["cached"]))
        if "host" in r:
            print("  %-62s %7.3f (cpu %.3f): step 2, never cached, no probe" % (
                "host context (the host's alias) / cached, " + key, r["host"] / r["cached"],
                r["cpu"]["host"] / r["cpu"]["cached"]))
    print("  %-62s %7.3f (legacy-save is fast: this is mostly interpreter start-up)"
          % ("cold@100k / iptables-legacy-save@100k, legacy",
             results["legacy-100k"]["cold"] / results["legacy-100k"]["save"]))
    print(verdict("cold@100k in user chains only / cold@0, legacy",
                  results["legacy-100k-user"]["cold"] / results["legacy-0"]["cold"], 1.5)[0])
    for key in ("nft-0", "legacy-0", "nft-100k", "legacy-100k"):
        r, u = results[key], results[key]["cpu"]
        print("  %-62s %7.2f ms wall, %.2f ms cpu (cached - direct - pass: the shim's own work on a hit)"
              % ("hit overhead, " + key, r["cached"] - r["direct"] - r["pass"], u["cached"] - u["direct"] - u["pass"]))
        print("  %-62s %7.2f ms wall, %.2f ms cpu (cold - cached: gathering every fact)"
              % ("cold extra, " + key, r["cold"] - r["cached"], u["cold"] - u["cached"]))
    if frozen:
        # Issue 4: the frozen shim's cached call beside the source shim's, in one run of their own.
        proc = subprocess.run([PYTHON, os.path.join(os.path.dirname(os.path.abspath(__file__)), "frozen.py"),
                               "--frozen", frozen, "-n", str(reps), "--json"], stdout=subprocess.PIPE)
        frozen_results = json.loads(proc.stdout.decode())
        print("\nfrozen shim (issue 4), cached `iptables -V`, medians of %d interleaved runs:" % reps)
        for label, r in sorted(frozen_results.items()):
            print("  %-62s %7.2f ms" % (label, r["median_ms"]))
        line, ok = verdict("frozen cached / source cached",
                           frozen_results["frozen shim iptables -V"]["ratio_to_source"], 2.0)
        print(line)
        met.append(ok)
        results["frozen"] = frozen_results
    print("\n%d of %d targets met" % (sum(met), len(met)))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"machine": machine(), "reps": reps, "results": results}, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
