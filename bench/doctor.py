#!/usr/bin/python3
"""What `iptables-shim doctor` costs on a node with many network namespaces, beside the peers' way.
One command, as root (never touches the machine's own netns; every namespace it makes is deleted):

    /usr/bin/python3 bench/doctor.py                # as root, ~1-2 min; --netns N (default 1000), --reps R

1. N named namespaces (`ip -batch`), each with a few rules loaded by `*-restore` (two thirds nft,
   one third legacy, as a node mid-migration), plus two with 100,000 rules each (one nft, one
   legacy, in filter INPUT, loaded with `*-restore` of a generated file).
2. The audit of the whole node, `bin/iptables-shim doctor --json`, as a command (interpreter start
   included): wall time, and the audit's own `duration_seconds`. Target: <= 5 s for 1,000.
3. Cost per namespace against its ruleset, 3 rules against 100,000: `doctor --netns` of that one
   namespace, interleaved R times, the median `duration_seconds` (fork, setns, probes, two
   resolutions, and the audit's fixed costs); and the reading alone (reading.read_here) timed
   in-process inside the namespace, median of 4R. Target: no growth with the rules.
4. The peers' way: in each namespace, `nsenter --net=PATH iptables-legacy-save` and `nsenter
   --net=PATH iptables-nft-save` (the same parallelism as the audit); the ratio peers / doctor.
   Run last: on a namespace without legacy tables `iptables-legacy-save` may create them.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(REPO, "bin", "iptables-shim")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREFIX = "shimbench-doc-%d-" % os.getpid()
TARGET_SECONDS = 5.0
PARALLEL = 2  # the audit's own parallelism on this 2-core machine (shim.doctor.parallelism)


def env(cache_dir):
    return {"PATH": SYSTEM_PATH, "LC_ALL": "C", "IPTABLES_SHIM_CACHE_DIR": cache_dir,
            "IPTABLES_SHIM_CONFIG": "/nonexistent/iptables-shim.conf"}


def ip_batch(lines):
    subprocess.run(["ip", "-batch", "-"], input="".join(l + "\n" for l in lines).encode(), check=True)


def few_rules(i):
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -s 10.%d.%d.0/24 -j ACCEPT\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
            "-A FORWARD -j DROP\nCOMMIT\n" % (i // 256 % 256, i % 256))


def many_rules(n):
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += ["-A INPUT -s 10.%d.%d.%d/32 -j ACCEPT" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(n)]
    return "\n".join(lines + ["COMMIT", ""]).encode()


def run_parallel(commands, parallel=PARALLEL, inputs=None):
    """Run every command (argv lists), `parallel` at a time; the wall time in seconds."""
    started = time.monotonic()
    running = []
    for i, cmd in enumerate(commands):
        while len(running) >= parallel:
            running.pop(0).wait()
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE if inputs else subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env("/nonexistent"))
        if inputs:
            p.stdin.write(inputs[i])
            p.stdin.close()
        running.append(p)
    for p in running:
        p.wait()
    return time.monotonic() - started


def doctor(args, cache_dir):
    t0 = time.monotonic()
    r = subprocess.run([SHIM, "doctor", "--json"] + args, env=env(cache_dir), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    wall = time.monotonic() - t0
    if r.returncode not in (0, 1):
        raise SystemExit("doctor failed (%d): %s" % (r.returncode, r.stderr.decode()))
    return wall, json.loads(r.stdout)


READ = """
import sys, time
sys.path.insert(0, %r)
from shim.config import load_settings
from shim.doctor.reading import read_here
settings = load_settings({"IPTABLES_SHIM_CONFIG": "/nonexistent/iptables-shim.conf"})
settings["PATH"] = %r
read_here(settings, %r)
times = []
for _ in range(%d):
    t = time.perf_counter()
    read_here(settings, %r)
    times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2])
"""


def reading_time(name, reps):
    """Median seconds of what the audit reads in one namespace (shim.doctor.reading.read_here:
    kernel records and two resolutions), in-process inside it: no fork, no interpreter start."""
    code = READ % (REPO, SYSTEM_PATH, SHIM, reps, SHIM)
    r = subprocess.run(["nsenter", "--net=/run/netns/" + name, "/usr/bin/python3", "-IS", "-c", code],
                       stdout=subprocess.PIPE, check=True, env=env("/nonexistent"))
    return float(r.stdout)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    n = 1000
    reps = 15
    args = sys.argv[1:]
    while args:
        opt = args.pop(0)
        if opt == "--netns":
            n = int(args.pop(0))
        elif opt == "--reps":
            reps = int(args.pop(0))
        else:
            raise SystemExit(__doc__)
    if os.geteuid() != 0:
        raise SystemExit("run as root: creates network namespaces")
    names = [PREFIX + "%04d" % i for i in range(n)]
    big = {"nft": PREFIX + "big-nft", "legacy": PREFIX + "big-legacy"}
    small = PREFIX + "small"
    everything = names + list(big.values()) + [small]
    cache_dir = tempfile.mkdtemp(prefix="shimbench-doctor-cache-")
    print("cpus: %d, kernel %s" % (len(os.sched_getaffinity(0)), os.uname().release))
    try:
        t0 = time.monotonic()
        ip_batch(["netns add " + name for name in everything])
        created = time.monotonic() - t0
        backends = ["nft" if i % 3 else "legacy" for i in range(n)]
        t0 = time.monotonic()
        run_parallel([["nsenter", "--net=/run/netns/" + name, "iptables-%s-restore" % b]
                      for name, b in zip(names + [small], backends + ["nft"])],
                     inputs=[few_rules(i).encode() for i in range(n + 1)])
        for backend, name in big.items():
            subprocess.run(["nsenter", "--net=/run/netns/" + name, "iptables-%s-restore" % backend],
                           input=many_rules(100000), check=True)
        print("set-up: %d netns in %.1f s, their rules in %.1f s (+ 2 x 100,000 rules)"
              % (len(everything), created, time.monotonic() - t0))

        # 2. the whole node
        walls, durations = [], []
        for _ in range(3):
            wall, report = doctor([], cache_dir)
            walls.append(wall)
            durations.append(report["duration_seconds"])
        audited = report["counts"]["audited"]
        ours = sum(1 for ns in report["namespaces"] if any(x.startswith("/run/netns/" + PREFIX) for x in ns["names"]))
        split = [ns["names"] for ns in report["namespaces"] if any(p["kind"] == "split" for p in ns["problems"])
                 and any(x.startswith("/run/netns/" + PREFIX) for x in ns["names"])]
        assert ours == len(everything) and not split, (ours, split)
        print("audit of the node (%d namespaces, %d of them ours): command %.2f s (runs: %s), audit %.2f s"
              " -> %.2f ms per namespace; target <= %.0f s for 1,000: %s"
              % (audited, ours, median(walls), ", ".join("%.2f" % w for w in walls), median(durations),
                 median(durations) * 1000 / audited, TARGET_SECONDS,
                 "met" if median(walls) * 1000 / audited <= TARGET_SECONDS else "MISSED"))

        # 3. per namespace, against its ruleset
        per = {"small (3 rules)": small, "nft 100,000 rules": big["nft"], "legacy 100,000 rules": big["legacy"]}
        times = {label: [] for label in per}
        for _ in range(reps):
            for label, name in per.items():
                times[label].append(doctor(["--netns", "/run/netns/" + name], cache_dir)[1]["duration_seconds"])
        base = median(times["small (3 rules)"])
        reads = {label: reading_time(name, reps * 4) for label, name in per.items()}
        for label in per:
            print("  one namespace, %-22s doctor --netns: audit %6.2f ms (x%.2f); the reading alone %.2f ms (x%.2f)"
                  % (label, median(times[label]) * 1000, median(times[label]) / base, reads[label] * 1000,
                     reads[label] / reads["small (3 rules)"]))

        # 4. the peers' way, last (legacy-save may create tables where none were)
        peer_cmds = [["nsenter", "--net=/run/netns/" + name, "iptables-%s-save" % b]
                     for name in everything for b in ("legacy", "nft")]
        peers = run_parallel(peer_cmds)
        print("peers' way (iptables-legacy-save + iptables-nft-save in each of %d namespaces, %d at a time):"
              " %.2f s -> doctor is %.1fx faster (command) / %.1fx (audit)"
              % (len(everything), PARALLEL, peers, peers / median(walls), peers / median(durations)))
        for backend in ("nft", "legacy"):
            t0 = time.monotonic()
            subprocess.run(["nsenter", "--net=/run/netns/" + big[backend], "iptables-%s-save" % backend],
                           stdout=subprocess.DEVNULL, check=True)
            print("  iptables-%s-save of the 100,000-rule namespace alone: %.2f s" % (backend, time.monotonic() - t0))
    finally:
        ip_batch(["netns delete " + name for name in everything if os.path.exists("/run/netns/" + name)])
        subprocess.run(["rm", "-rf", cache_dir])
        left = [x for x in os.listdir("/run/netns") if x.startswith(PREFIX)]
        print("cleaned up: %d bench namespaces left" % len(left))


if __name__ == "__main__":
    main()
