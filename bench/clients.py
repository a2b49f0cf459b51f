#!/usr/bin/python3
"""Whole node operations of real clients, with and without the shim, side by side. As root:

    /usr/bin/python3 bench/clients.py [--frozen DIR] [--reps N] [--ops cni,podman,dockerd] [--json FILE]

DIR is a frozen tree (`iptables-shim` and the six names; tests/images Workspace.open().frozen()
builds one: dist/iptables-shim). Each operation runs on a "node" that is a private netns (the
machine's own is compared before and after), and each repetition runs it once per column, in
turn, so that load from elsewhere hits every column alike:

  direct   PATH=/usr/local/sbin:...:/sbin:/bin, the host's own iptables (nft here)
  python-exec  a stand-in first on PATH that starts /usr/bin/python3 -IS as the shim does and
           execs /usr/sbin/NAME at once: the interpreter's share of what the shim adds
  source   bin/ of this checkout first on PATH
  frozen   DIR first on PATH

All three run from the host's filesystem (host context: the shim answers from the caller's own
facts, step 2, on every call, as for a CNI plugin or a runtime on a node). The operations:

  cni      ADD + DEL of one pod (bridge + host-local, portmap with two port mappings, firewall;
           tests/test_cni.py's runtime), a fresh pod netns each time, one node netns throughout
  podman   `podman run --rm -p 18080:80 -p 18443:443 tiny true`: netavark's bridge and port
           forwarding set up and torn down, podman itself in the node netns, its own storage under
           /var/tmp, an image imported from a busybox-static root
  dockerd  dockerd start to ready (`GET /_ping` answers), a fresh netns and data root each time

Per operation: the median wall time of each column, the ratio to direct, the iptables calls it
makes (counted in one extra, untimed run of each column under `strace -f -e execve`: execs of the
six names), the time the shim adds per call beside the goal's budget per call (15 % of the direct
time over the calls), and the shim's share of the operation. Then, in the CNI node, one call alone
(`iptables -t nat -S`) each way beside `python3 -I -S -c pass`: where the time per call goes.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), REPO]

from run import PYTHON, SYSTEM_PATH, machine, median, spawn_time  # noqa: E402
from namespaces import Netns  # noqa: E402
from test_cni import CNI_PATH, Caller, Cni, Pod, conflist  # noqa: E402
from test_dockerd import Dockerd, api, host_state  # noqa: E402

BIN = os.path.join(REPO, "bin")
GOAL = 1.15
ENTRY = re.compile(r'execve\("([^"]*/)?(ip6?tables(-save|-restore)?)", .*\) = 0$')
BUSYBOX_DEB_CACHE = "/var/cache/iptables-shim-tests/musl/debs/amd64"
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


# The interpreter's share: a stand-in for bin/ that starts Python as the shim does and execs the
# host's own binary at once (no facts, no decision, no imports).
EXEC_ONLY = """#!/usr/bin/python3 -IS
import posix, sys
posix.execv("/usr/sbin/" + sys.argv[0].rpartition("/")[2], sys.argv)
"""


def exec_only_dir(base):
    d = os.path.join(base, "python-exec")
    os.mkdir(d)
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        with open(os.path.join(d, name), "w") as f:
            f.write(EXEC_ONLY)
        os.chmod(os.path.join(d, name), 0o755)
    return d


def columns(frozen, base):
    cols = [("direct", None), ("python-exec", exec_only_dir(base)), ("source", BIN)]
    if frozen:
        cols.append(("frozen", frozen))
    return cols


def path_for(bindir):
    return (bindir + ":" if bindir else "") + SYSTEM_PATH


def strace_prefix(outdir):
    return ["strace", "-f", "-ff", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", os.path.join(outdir, "t")]


def count_calls(outdir):
    """The iptables calls in an strace -ff output directory (one file per process): processes that
    exec one of the six names (a wrapper's exec of the real one is the same call)."""
    n = 0
    for name in os.listdir(outdir):
        with open(os.path.join(outdir, name), errors="replace") as f:
            n += any(ENTRY.search(l.rstrip()) for l in f)
    return n


# -- the operations --------------------------------------------------------------------------------

class CniOp(object):
    name = "cni"
    title = "CNI ADD+DEL of one pod, two port mappings (bridge, portmap, firewall)"

    def __init__(self, base):
        self.base = base
        self.node = Netns.create("shimbench-cni-")
        self.cni = Cni()

    def caller(self, bindir, wrap=()):
        return Caller("host", self.node, path_for(bindir) + ":" + CNI_PATH, os.path.join(self.base, "ipam"),
                      env={"LC_ALL": "C", "IPTABLES_SHIM_CACHE_DIR": os.path.join(self.base, "cache")},
                      wrap=wrap, wrap_only=[p["type"] for p in conflist("")["plugins"]])

    def once(self, bindir, wrap=()):
        caller = self.caller(bindir, wrap)
        pod = Pod(Netns.create("shimbench-pod-"))
        try:
            start = time.perf_counter()
            self.cni.add(caller, pod)
            self.cni.delete(caller, pod)
            return time.perf_counter() - start
        finally:
            pod.netns.delete()

    def count(self, bindir, outdir):
        self.once(bindir, wrap=strace_prefix(outdir))

    def close(self):
        self.node.delete()


class PodmanOp(object):
    name = "podman"
    title = "podman run --rm -p 18080:80 -p 18443:443 (netavark, runc) of a trivial container"

    def __init__(self, base):
        self.base = base
        self.node = Netns.create("shimbench-podman-")
        conf = os.path.join(base, "containers.conf")
        with open(conf, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
        # Its state under base, all but netavark's IPAM database: rootful podman keeps that in
        # /run/containers/networks whatever it is told (one per machine; the leases go at teardown).
        self.podman = PODMAN + ["--root", os.path.join(base, "storage"), "--runroot", os.path.join(base, "run"),
                                "--tmpdir", os.path.join(base, "tmp"), "--network-config-dir", os.path.join(base, "net")]
        self.env = {"LC_ALL": "C", "CONTAINERS_CONF": conf, "HOME": base}
        root = os.path.join(base, "rootfs")
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(busybox(base), os.path.join(root, "bin", "busybox"))
        os.symlink("busybox", os.path.join(root, "bin", "true"))
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(self.podman + ["import", "-", "shimbench-tiny"], stdin=tar.stdout, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(self.env, PATH=SYSTEM_PATH))
        tar.wait()

    def argv(self, wrap=()):
        # podman itself in the node netns (netavark writes where podman runs), its mounts private.
        return list(wrap) + ["unshare", "--mount", "nsenter", "--net=" + self.node.path] + self.podman + [
            "run", "--rm", "--network", "bridge", "-p", "18080:80", "-p", "18443:443", "shimbench-tiny", "true"]

    def once(self, bindir, wrap=()):
        start = time.perf_counter()
        r = subprocess.run(self.argv(wrap), env=dict(self.env, PATH=path_for(bindir)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
        elapsed = time.perf_counter() - start
        if r.returncode:
            raise RuntimeError("podman run failed (%s): %s" % (bindir, r.stderr.decode()[-500:]))
        return elapsed

    def count(self, bindir, outdir):
        self.once(bindir, wrap=strace_prefix(outdir))

    def close(self):
        subprocess.run(self.podman + ["rmi", "-a", "-f"], env=dict(self.env, PATH=SYSTEM_PATH),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.node.delete()


class TimedDockerd(Dockerd):
    """tests/test_dockerd.py's dockerd (private mount ns, nsenter into the netns, vfs), under an
    optional argv prefix; `stop` is that test's (every process under the base directory, mounts)."""

    def __init__(self, base, netns, env, wrap=()):
        self.base, self.netns = base, netns
        self.sock = os.path.join(base, "docker.sock")
        self.logfile = os.path.join(base, "dockerd.log")
        cmd = list(wrap) + ["unshare", "--mount", "nsenter", "--net=" + netns.path, "dockerd",
                            "--data-root", os.path.join(base, "data"), "--exec-root", os.path.join(base, "exec"),
                            "--pidfile", os.path.join(base, "dockerd.pid"), "-H", "unix://" + self.sock,
                            "--storage-driver", "vfs"]
        self.log = open(self.logfile, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ready_after(self, started, timeout=90):
        """Seconds from `started` to the first answered ping (polled every 10 ms)."""
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited: %s" % self.output()[-1500:])
            if os.path.exists(self.sock):
                try:
                    if api(self.sock, "GET", "/_ping", timeout=5) == (200, b"OK"):
                        return time.perf_counter() - started
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError("dockerd not ready after %d s: %s" % (timeout, self.output()[-1500:]))


class DockerdOp(object):
    name = "dockerd"
    title = "dockerd start to ready (GET /_ping), fresh netns and data root"

    def __init__(self, base):
        self.base = base
        self.n = 0

    def once(self, bindir, wrap=()):
        self.n += 1
        base = tempfile.mkdtemp(prefix="d%d-" % self.n, dir=self.base)  # short: the socket path < 108 bytes
        ns = Netns.create("shimbench-dockerd-")
        env = {"PATH": path_for(bindir), "LC_ALL": "C"}
        try:
            start = time.perf_counter()
            d = TimedDockerd(base, ns, env, wrap)
            try:
                return d.ready_after(start)
            finally:
                d.stop()
        finally:
            ns.delete()
            shutil.rmtree(base, ignore_errors=True)

    def count(self, bindir, outdir):
        self.once(bindir, wrap=strace_prefix(outdir))

    def close(self):
        pass


OPS = {"cni": CniOp, "podman": PodmanOp, "dockerd": DockerdOp}


def busybox(base):
    """busybox-static's binary: from the musl tests' cached .deb, else `apt-get download`."""
    debs = [os.path.join(BUSYBOX_DEB_CACHE, n) for n in sorted(os.listdir(BUSYBOX_DEB_CACHE))
            if n.startswith("busybox-static_")] if os.path.isdir(BUSYBOX_DEB_CACHE) else []
    if not debs:
        subprocess.run(["apt-get", "download", "-qq", "busybox-static"], cwd=base, check=True)
        debs = [os.path.join(base, n) for n in os.listdir(base) if n.startswith("busybox-static_")]
    out = os.path.join(base, "busybox-deb")
    subprocess.run(["dpkg-deb", "-x", debs[0], out], check=True)
    return os.path.join(out, "bin", "busybox")


# -- one call alone --------------------------------------------------------------------------------

def per_call(node, frozen, reps):
    """Median ms of one `iptables -t nat -S` in the CNI node each way (host context, as the plugins
    run), and of the interpreter alone: what each of the operation's calls pays."""
    cache = tempfile.mkdtemp(prefix="shimbench-cache-")
    cases = [("direct /usr/sbin/iptables", "/usr/sbin/iptables", None),
             ("source shim", os.path.join(BIN, "iptables"), BIN),
             ("python3 -I -S -c pass", PYTHON, None)]
    if frozen:
        cases.append(("frozen shim", os.path.join(frozen, "iptables"), frozen))
    times = {c[0]: [] for c in cases}
    nsenter = ["/usr/bin/nsenter", "--net=" + node.path]
    try:
        for _ in range(reps):
            for label, exe, bindir in cases:
                argv = [exe, "-I", "-S", "-c", "pass"] if exe == PYTHON else [exe, "-t", "nat", "-S"]
                env = {"PATH": path_for(bindir), "IPTABLES_SHIM_CACHE_DIR": cache, "LC_ALL": "C"}
                # nsenter's own cost is in every case alike; measured beside them.
                times[label].append(spawn_time(nsenter + argv, env))
        times["nsenter alone"] = [spawn_time(nsenter + ["/bin/true"], {"PATH": SYSTEM_PATH}) for _ in range(reps)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {label: round(median(t) * 1000, 2) for label, t in times.items()}


# -- the run ---------------------------------------------------------------------------------------

def measure(op, cols, reps):
    op.once(None)  # warm: page cache, the node's shared chains, podman's storage
    times = {c: [] for c, _ in cols}
    for _ in range(reps):
        for col, bindir in cols:
            times[col].append(op.once(bindir))
    calls = {}
    for col, bindir in cols:
        outdir = tempfile.mkdtemp(prefix="shimbench-strace-")
        try:
            op.count(bindir, outdir)
            calls[col] = count_calls(outdir)
        finally:
            shutil.rmtree(outdir, ignore_errors=True)
    result = {"title": op.title, "reps": reps, "columns": {}}
    direct = median(times["direct"])
    for col, _ in cols:
        m = median(times[col])
        row = {"median_s": round(m, 4), "min_s": round(min(times[col]), 4), "max_s": round(max(times[col]), 4),
               "iptables_calls": calls[col], "ratio": round(m / direct, 3)}
        if col != "direct":
            added = m - direct
            row["shim_share"] = round(added / m, 3)
            row["added_ms_per_call"] = round(added * 1000 / calls[col], 2) if calls[col] else None
            row["goal_met"] = row["ratio"] <= GOAL
            # What each call may add for the operation to stay within the goal.
            row["budget_ms_per_call"] = round((GOAL - 1) * direct * 1000 / calls[col], 2) if calls[col] else None
        result["columns"][col] = row
    return result


def table(result):
    cols = list(result["columns"])
    lines = ["### %s (median of %d)" % (result["title"], result["reps"]), "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label, fmt, key):
        cells = []
        for c in cols:
            v = result["columns"][c].get(key)
            cells.append("-" if v is None else fmt(v))
        lines.append("| %s | %s |" % (label, " | ".join(cells)))

    row("wall time, median (s)", lambda v: "%.3f" % v, "median_s")
    lines.append("| min - max (s) | " + " | ".join(
        "%.3f - %.3f" % (result["columns"][c]["min_s"], result["columns"][c]["max_s"]) for c in cols) + " |")
    row("ratio to direct", lambda v: "%.2f" % v, "ratio")
    row("iptables calls", lambda v: "%d" % v, "iptables_calls")
    row("added per call (ms)", lambda v: "%.1f" % v, "added_ms_per_call")
    row("goal's budget per call (ms)", lambda v: "%.2f" % v, "budget_ms_per_call")
    row("shim's share of the operation", lambda v: "%.0f%%" % (v * 100), "shim_share")
    row("goal <= %.2fx" % GOAL, lambda v: "met" if v else "MISSED", "goal_met")
    return "\n".join(lines)


def main(argv):
    args = list(argv[1:])
    frozen, reps, json_out, ops = None, 5, None, ["cni", "podman", "dockerd"]
    while args:
        a = args.pop(0)
        if a == "--frozen":
            frozen = os.path.abspath(args.pop(0))
            if not os.access(os.path.join(frozen, "iptables"), os.X_OK):
                raise SystemExit("bench: %s holds no frozen iptables" % frozen)
        elif a == "--reps":
            reps = int(args.pop(0))
        elif a == "--ops":
            ops = args.pop(0).split(",")
        elif a == "--json":
            json_out = args.pop(0)
        else:
            raise SystemExit(__doc__)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (network namespaces, podman, dockerd)")
    before = host_state()
    base = tempfile.mkdtemp(prefix="shimbench-", dir="/var/tmp")
    cols = columns(frozen, base)
    print(machine())
    print("columns: %s" % ", ".join("%s=%s" % (c, b or "host PATH") for c, b in cols))
    results = {}
    try:
        for name in ops:
            os.mkdir(os.path.join(base, name))
            op = OPS[name](os.path.join(base, name))
            try:
                n = reps * 4 if name == "cni" else reps
                results[name] = measure(op, cols, n)
                print()
                print(table(results[name]))
                sys.stdout.flush()
                if name == "cni":
                    results["per_call_ms"] = per_call(op.node, frozen, 40)
            finally:
                op.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if "per_call_ms" in results:
        print("\none call alone in the CNI node, `iptables -t nat -S` via nsenter, median ms:")
        for label, ms in results["per_call_ms"].items():
            print("  %-28s %7.2f" % (label, ms))
    assert host_state() == before, "the machine's own netns changed"
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
