#!/usr/bin/python3
"""The one-file tree beside the tree before it and the Go peer, from one run: sizes and first calls.

    /usr/bin/python3 bench/onefile.py --baseline OLD-TREE --frozen NEW-TREE [--frozen-arm64 TREE]
        [--baseline-arm64 TREE] [-n 40] [--hint] [--json FILE|-] [--root DIR] [--peer-source TAR]

As root. Sizes, for each tree (and the peer's one binary): regular files, bytes (the sum of the
regular files, and `du -s --apparent-size`), and the image layer it makes: `tar -c` of the tree's
contents made reproducibly (--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0) through
`gzip -9`, in bytes.

The peer is kubernetes-sigs/iptables-wrappers v3 (--peer-source: its `git archive`, by default
../shared/peers/iptables-wrappers-v3.tar.gz beside the checkout), built here into a temporary
directory with Debian's golang-go as its README says (`CGO_ENABLED=0 go build -ldflags="-s -w"`),
offline; never kept. It is a peer to measure against, never code to copy.

Calls: every command runs in a copy of one bookworm minbase root with iptables (--root, else
made once with debootstrap under /var/cache/iptables-shim-bench), each a fresh overlayfs over
it, all in one private mount+net+pid namespace (`unshare`) whose netns holds one nft rule
(with --hint also kubelet's KUBE-IPTABLES-HINT chain in mangle, as on a node: the peer then
stops after one probe). Installed as each documents it: the peer as its Debian test image does
(`/usr/sbin/iptables-wrapper install`: the six names link to it; on its first call it probes,
relinks them to xtables-<mode>-multi, and runs the command again); each shim tree copied to
/opt/iptables-shim and `iptables-shim install /usr/local/sbin`. The timer (this script, from
the host) chroots itself into a root around each call and posix_spawns it (bench/run.py's
spawn_times): a call is timed alone, with no chroot or mount in front of it. Columns, all
`... -S`:

  direct              /usr/sbin/iptables-nft -S
  peer, first call    /usr/sbin/iptables -S in a fresh root per round (detects, relinks, runs)
  peer, later call    /usr/sbin/iptables -S once its links point at xtables-nft-multi
  TREE, first call    /usr/local/sbin/iptables -S, IPTABLES_SHIM_CACHE=off, container context:
                      every call is a netns's first (Python decides)
  TREE, cache hit     the same with a warm per-netns cache entry (the C route, where the tree has it)

Rounds are interleaved (each round runs every column once, starting at a different column), so
load from elsewhere hits each alike. Per column: the wall-clock median with p10-p90, the median
of the per-round ratios to direct with their p10-p90, and the CPU time (user+sys, the call and
the children it waited for). Then one run of each under `strace -f`: the system calls between the
command's own execve and the real binary's (the last execve: the shim's exec of iptables-nft, the
peer's rerun of its relinked name), every process counted, and the execve calls. Judged against
the targets of docs/benchmark.md "One file". --json FILE writes every figure there too (- : on
stdout, instead of the table). Never a timed test: bench only.
"""

import json
import os
import re
import resource  # noqa: F401 os.wait4 imports it on first use, when the timer is chrooted
import shutil
import stat
import subprocess
import sys
import tempfile

from run import REPO, SYSTEM_PATH, spawn_times  # bench/ is sys.path[0]: one way to time a command

PYTHON = "/usr/bin/python3"
BENCH_CACHE = "/var/cache/iptables-shim-bench"
MIRROR = os.environ.get("IPTABLES_SHIM_MIRROR", "http://deb.debian.org/debian")
PEER_SOURCE = os.path.join(os.path.dirname(REPO), "shared", "peers", "iptables-wrappers-v3.tar.gz")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RULE = ["-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"]
RULE_TEXT = "-A INPUT -s 192.0.2.1/32 -j DROP"
SHIM_DIR = "/opt/iptables-shim"
REPRODUCIBLE_TAR = ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"]

# Targets (issue "One file"): MB = 10**6 bytes.
MAX_BYTES, MAX_LAYER, MAX_FILES = 4 * 10**6, 2 * 10**6, 6
MAX_FIRST_VS_OLD, MAX_SYSCALLS, MAX_HIT_VS_OLD = 0.6, 400, 1.05


# -- sizes ------------------------------------------------------------------------------------------

def sizes(tree):
    """Regular files, their bytes, du's apparent size and the reproducible gzip -9 layer of `tree`."""
    files = total = 0
    for top, dirs, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    du = int(subprocess.run(["du", "-s", "--apparent-size", "--block-size=1", tree], check=True,
                            stdout=subprocess.PIPE).stdout.split()[0])
    tar = subprocess.Popen(["tar", "-c"] + REPRODUCIBLE_TAR + ["-C", tree, "."], stdout=subprocess.PIPE)
    gz = subprocess.run(["gzip", "-9", "-n"], stdin=tar.stdout, stdout=subprocess.PIPE, check=True)
    tar.stdout.close()
    if tar.wait():
        raise SystemExit("bench: tar of %s failed" % tree)
    return {"regular_files": files, "regular_bytes": total, "du_apparent_bytes": du,
            "layer_gzip9_bytes": len(gz.stdout)}


def build_peer(source, out, goarch):
    """The peer's binary for `goarch`, built offline from its archive into `out` (a temporary directory)."""
    if not shutil.which("go"):
        raise SystemExit("bench: Debian's golang-go builds the peer: apt-get install -y golang-go (.ci/setup)")
    src = os.path.join(out, "src")
    if not os.path.isdir(src):
        os.mkdir(src)
        subprocess.run(["tar", "-xzf", source, "-C", src, "--strip-components=1"], check=True)
    exe = os.path.join(out, goarch, "iptables-wrapper")
    os.makedirs(os.path.dirname(exe))
    env = {"PATH": SYSTEM_PATH, "HOME": out, "GOCACHE": os.path.join(out, "gocache"),
           "GOPATH": os.path.join(out, "gopath"),
           "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": goarch}
    subprocess.run(["go", "build", "-ldflags=-s -w", "-o", exe, "."], cwd=src, env=env, check=True)
    return exe


def bookworm_root(root):
    """A bookworm minbase root with iptables: `root` if given, else made once and kept in BENCH_CACHE."""
    if root:
        return root
    tree = os.path.join(BENCH_CACHE, "bookworm-iptables")
    if not os.path.exists(tree + ".done"):
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(os.path.join(BENCH_CACHE, "debs"), exist_ok=True)
        print("bench: debootstrap --variant=minbase --include=iptables bookworm %s (once)" % tree, file=sys.stderr)
        subprocess.run(["debootstrap", "--variant=minbase", "--cache-dir=" + os.path.join(BENCH_CACHE, "debs"),
                        "--include=iptables", "bookworm", tree, MIRROR], check=True, stdout=subprocess.DEVNULL)
        open(tree + ".done", "w").close()
    return tree


# -- inside the namespace ---------------------------------------------------------------------------

def sh(*argv):
    subprocess.run(list(argv), check=True, env={"PATH": SYSTEM_PATH})


class Roots(object):
    """Overlay roots over one lower tree, made under a tmpfs in this (private) mount namespace."""

    __slots__ = ("base", "top", "count")

    def __init__(self, base, top):
        self.base, self.top, self.count = base, top, 0

    def mount(self, layers=()):
        """A new root: a fresh upper over `layers` (upper-most first) and the base; /proc and /dev in it."""
        self.count += 1
        d = os.path.join(self.top, "r%d" % self.count)
        upper, work, merged = (os.path.join(d, x) for x in ("upper", "work", "merged"))
        for x in (upper, work, merged):
            os.makedirs(x)
        lower = ":".join(list(layers) + [self.base])
        sh("mount", "-t", "overlay", "overlay", "-o",
           "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), merged)
        sh("mount", "-t", "proc", "proc", os.path.join(merged, "proc"))
        sh("mount", "--bind", "/dev", os.path.join(merged, "dev"))
        return merged, upper

    def layer(self, setup):
        """A read-only layer: a root made, `setup(merged)` run in it, unmounted; its upper is the layer."""
        merged, upper = self.mount()
        setup(merged)
        sh("umount", os.path.join(merged, "dev"))
        sh("umount", os.path.join(merged, "proc"))
        sh("umount", merged)
        return upper


def in_root(merged, argv, env):
    """argv in the root (chroot from the host's side), its stdout; for set-up and checks, never timed."""
    r = subprocess.run(["/usr/sbin/chroot", merged] + argv, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode:
        raise SystemExit("bench: %s in %s: exit %d: %s" % (argv, merged, r.returncode, r.stderr.decode()))
    return r.stdout.decode()


class Chroot(object):
    """Enter a root and come back: the timer itself changes root around a call (root may leave a
    chroot through a directory opened outside it)."""

    __slots__ = ("host",)

    def __init__(self):
        self.host = os.open("/", os.O_RDONLY | os.O_DIRECTORY)

    def enter(self, merged):
        os.chroot(merged)
        os.chdir("/")

    def leave(self):
        os.fchdir(self.host)
        os.chroot(".")
        os.chdir("/")


SYSCALL = re.compile(r'^(\d+ +)?([a-z_0-9]+)\(')
EXECVE = re.compile(r'^(\d+ +)?execve\("([^"]*)"')
RESUMED_OK = re.compile(r'^(\d+ +)?<\.\.\. execve resumed>.* = 0$')


def syscalls_before_exec(merged, argv, env, trace):
    """(system calls between the command's execve and the last one, programs run, the ten most
    frequent of those calls) of one run under
    `strace -f`: every process counted; a call strace splits in two (`<unfinished ...>`, then
    `<... resumed>`) counts once."""
    r = subprocess.run(["strace", "-f", "-qq", "-o", trace, "/usr/sbin/chroot", merged] + argv, env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode:
        raise SystemExit("bench: strace of %s: %s" % (argv, r.stderr.decode()))
    with open(trace) as f:
        lines = f.read().splitlines()
    count, execs, pending, names = 0, [], {}, []
    for line in lines:
        resumed = RESUMED_OK.match(line)
        if resumed and resumed.group(1) in pending:
            execs.append(pending.pop(resumed.group(1)))
            continue
        if not SYSCALL.match(line):
            continue  # exits, signals, the second half of a split call
        e = EXECVE.match(line)
        if e and line.endswith("<unfinished ...>"):
            pending[e.group(1)] = (count, e.group(2))
        elif e and line.endswith(" = 0"):
            execs.append((count, e.group(2)))
        names.append(SYSCALL.match(line).group(2))
        count += 1
    execs.sort()
    start = [i for i, (_, path) in enumerate(execs) if path == argv[0]]
    if not start:
        raise SystemExit("bench: no execve of %s in the trace %s" % (argv[0], trace))
    first, last = execs[start[0]][0], execs[-1][0]
    window = {}
    for name in names[first + 1:last]:
        window[name] = window.get(name, 0) + 1
    top = dict(sorted(window.items(), key=lambda kv: -kv[1])[:10])
    return max(0, last - first - 1), len(execs) - start[0], top


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def stats(values, scale=1.0, digits=2):
    def r(v):
        return round(v * scale, digits)
    return {"median": r(percentile(values, 0.5)), "p10": r(percentile(values, 0.1)),
            "p90": r(percentile(values, 0.9)), "min": r(min(values)), "max": r(max(values))}


def worker(cfg):
    top = cfg["workdir"]
    sh("mount", "-t", "tmpfs", "-o", "mode=0700", "bench", top)  # every root goes with the namespace
    sh("iptables-nft", *RULE)
    if cfg["hint"]:
        sh("iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    roots = Roots(cfg["root"], top)
    env = {"PATH": CONTAINER_PATH, "LC_ALL": "C"}

    def peer_setup(merged):
        shutil.copy2(cfg["peer"], os.path.join(merged, "usr/sbin/iptables-wrapper"))
        in_root(merged, ["/usr/sbin/iptables-wrapper", "install"], env)
        link = os.readlink(os.path.join(merged, "usr/sbin/iptables"))
        if link != "/usr/sbin/iptables-wrapper":
            raise SystemExit("bench: the peer's install left /usr/sbin/iptables -> %s" % link)

    def shim_setup(tree):
        def setup(merged):
            shutil.copytree(tree, os.path.join(merged, SHIM_DIR.lstrip("/")), symlinks=True)
            in_root(merged, [SHIM_DIR + "/iptables-shim", "install", "/usr/local/sbin"], env)
        return setup

    peer_layer = roots.layer(peer_setup)
    trees = [(name, roots.layer(shim_setup(path))) for name, path in cfg["trees"]]

    # (label, root or None for a fresh root per call, argv, env, a cache entry expected)
    cases = [("direct iptables-nft -S", roots.mount()[0], ["/usr/sbin/iptables-nft", "-S"], env, False)]
    cases.append(("peer, first call", None, ["/usr/sbin/iptables", "-S"], env, False))
    peer_later = roots.mount([peer_layer])[0]
    cases.append(("peer, later call", peer_later, ["/usr/sbin/iptables", "-S"], env, False))
    for name, layer in trees:
        merged = roots.mount([layer])[0]
        shim_env = dict(env, IPTABLES_SHIM_CONTEXT="container")
        cases.append(("%s, first call" % name, merged, ["/usr/local/sbin/iptables", "-S"],
                      dict(shim_env, IPTABLES_SHIM_CACHE="off"), False))
        cases.append(("%s, cache hit" % name, merged, ["/usr/local/sbin/iptables", "-S"],
                      dict(shim_env, IPTABLES_SHIM_CACHE_DIR="/run/iptables-shim-bench"), True))
    n = cfg["rounds"]
    fresh = [roots.mount([peer_layer])[0] for _ in range(n + 5)]  # one per peer first call

    def root_of(case):
        return case[1] if case[1] else fresh.pop()

    # Check each column once (its answer holds the rule; the peer relinked), then warm it.
    for case in cases:
        label, _, argv, cenv, cached = case
        merged = root_of(case)
        out = in_root(merged, argv, cenv)
        if RULE_TEXT not in out:
            raise SystemExit("bench: %s did not list the rule: %r" % (label, out))
        if label.startswith("peer"):
            link = os.readlink(os.path.join(merged, "usr/sbin/iptables"))
            if link != "/usr/sbin/xtables-nft-multi":
                raise SystemExit("bench: after its first call the peer's iptables -> %s" % link)
        if cached and not os.listdir(os.path.join(merged, "run/iptables-shim-bench")):
            raise SystemExit("bench: %s wrote no cache entry; not a cache-hit measurement" % label)
    chroot = Chroot()
    for case in cases:
        for _ in range(2):
            chroot.enter(root_of(case))
            try:
                spawn_times(case[2], case[3])
            finally:
                chroot.leave()

    wall = {c[0]: [] for c in cases}
    cpu = {c[0]: [] for c in cases}
    for i in range(n):
        k = i % len(cases)
        for case in cases[k:] + cases[:k]:
            merged = root_of(case)
            chroot.enter(merged)
            try:
                w, u = spawn_times(case[2], case[3])
            finally:
                chroot.leave()
            wall[case[0]].append(w)
            cpu[case[0]].append(u)
    results = {}
    direct = wall[cases[0][0]]
    for label, _, _, _, _ in cases:
        results[label] = {"ms": stats(wall[label], 1000), "cpu_ms": stats(cpu[label], 1000),
                          "x_direct": stats([a / b for a, b in zip(wall[label], direct)], 1, 3), "n": n}
    for i, case in enumerate(cases):
        label, _, argv, cenv, _ = case
        before, execs, most = syscalls_before_exec(root_of(case), argv, cenv, os.path.join(top, "trace%d" % i))
        results[label].update(syscalls_before_exec=before, programs_run=execs, syscalls_most=most)
    # Paired ratios between columns of one round: the new tree against the old, and the peer.
    pairs = {}
    for a, b in cfg["pairs"]:
        if a in wall and b in wall:
            pairs["%s / %s" % (a, b)] = dict(stats([x / y for x, y in zip(wall[a], wall[b])], 1, 3),
                                             cpu=stats([x / y for x, y in zip(cpu[a], cpu[b])], 1, 3))
    print(json.dumps({"calls": results, "order": [c[0] for c in cases], "pairs": pairs}))


# -- report ---------------------------------------------------------------------------------------------

def report(out):
    lines = []
    sz = out["sizes"]
    names = list(sz)
    lines.append("  %-28s %s" % ("sizes", "  ".join("%15s" % n for n in names)))
    for key, label in (("regular_files", "regular files"), ("regular_bytes", "bytes, regular files"),
                       ("du_apparent_bytes", "bytes, du --apparent-size"),
                       ("layer_gzip9_bytes", "layer, tar | gzip -9")):
        cells = []
        for n in names:
            v = sz[n][key]
            cells.append("%d" % v if key == "regular_files" else "%s" % format(v, ","))
        lines.append("  %-28s %s" % (label, "  ".join("%15s" % c for c in cells)))
    lines.append("  (columns: %s)" % ", ".join("%s = %s" % (n, sz[n]["path"]) for n in names))
    lines.append("")
    calls = out["calls"]
    lines.append("one `iptables -S`, %d interleaved rounds: ms median (p10-p90) | x direct, median of per-round ratios"
                 " (p10-p90)"
                 " | CPU ms | system calls before the real binary's execve | programs run" % out["rounds"])
    for label in out["order"]:
        r = calls[label]
        lines.append("  %-26s %6.2f (%5.2f-%6.2f) | %6.2fx (%5.2f-%5.2f) | %6.2f | %5d | %d" % (
            label, r["ms"]["median"], r["ms"]["p10"], r["ms"]["p90"], r["x_direct"]["median"], r["x_direct"]["p10"],
            r["x_direct"]["p90"], r["cpu_ms"]["median"], r["syscalls_before_exec"], r["programs_run"]))
    lines.append("")
    for name, r in out["pairs"].items():
        lines.append("  paired, per round: %-40s %.3f (p10-p90 %.3f-%.3f); CPU time %.3f (%.3f-%.3f)" % (
            name, r["median"], r["p10"], r["p90"], r["cpu"]["median"], r["cpu"]["p10"], r["cpu"]["p90"]))
    for label in out["order"]:
        most = calls[label]["syscalls_most"]
        if most:
            lines.append("  before the real execve, %s: %s" % (
                label, ", ".join("%d %s" % (v, k) for k, v in most.items())))
    lines.append("")
    lines.append("targets:")
    for name, value, limit, ok in out["targets"]:
        lines.append("  %-58s %14s  %-10s %s" % (name, value, limit, "met" if ok else "NOT MET"))
    return "\n".join(lines)


def targets(out):
    t = []
    sz, calls, pairs = out["sizes"], out["calls"], out["pairs"]
    for name in [n for n in sz if n.startswith("new")]:
        s = sz[name]
        most = max(s["regular_bytes"], s["du_apparent_bytes"])
        t.append(("%s: bytes on disk (du)" % name, format(most, ","), "<= 4 MB", most <= MAX_BYTES))
        t.append(("  the same in MiB (4 MiB = 4,194,304 bytes)", "%.2f MiB" % (most / 1048576.0), "<= 4 MiB",
                  most <= 4 * 1048576))
        t.append(("%s: gzip -9 layer" % name, format(s["layer_gzip9_bytes"], ","), "<= 2 MB",
                  s["layer_gzip9_bytes"] <= MAX_LAYER))
        t.append(("%s: regular files" % name, str(s["regular_files"]), "<= %d" % MAX_FILES,
                  s["regular_files"] <= MAX_FILES))
    if "new, first call" in calls:
        new, peer = calls["new, first call"], calls["peer, first call"]
        t.append(("new first call below the peer's first call (median ms)", "%.2f vs %.2f" % (
            new["ms"]["median"], peer["ms"]["median"]), "<", new["ms"]["median"] < peer["ms"]["median"]))
        p = pairs.get("new, first call / peer, first call")
        if p:
            t.append(("  the same, paired per round (p90 of new/peer)", "%.3f" % p["p90"], "< 1", p["p90"] < 1))
        p = pairs.get("new, first call / old, first call")
        if p:
            t.append(("new first call / old first call (paired, median)", "%.3f" % p["median"],
                      "<= %.1f" % MAX_FIRST_VS_OLD,
                      p["median"] <= MAX_FIRST_VS_OLD))
        t.append(("new first call: system calls before the real execve", str(new["syscalls_before_exec"]),
                  "<= %d" % MAX_SYSCALLS, new["syscalls_before_exec"] <= MAX_SYSCALLS))
        p = pairs.get("new, cache hit / old, cache hit")
        if p:
            t.append(("new cache hit / old cache hit (paired, median)", "%.3f" % p["median"],
                      "<= %.2f" % MAX_HIT_VS_OLD,
                      p["median"] <= MAX_HIT_VS_OLD))
    return t


def main(argv):
    args = list(argv[1:])
    if args[:1] == ["--worker"]:
        return worker(json.loads(args[1]))
    opts = {"--baseline": None, "--frozen": None, "--frozen-arm64": None, "--baseline-arm64": None, "--root": None,
            "--peer-source": PEER_SOURCE}
    rounds, as_json, hint = 40, False, False
    while args:
        a = args.pop(0)
        if a in opts and args:
            opts[a] = os.path.abspath(args.pop(0))
        elif a == "-n" and args:
            rounds = int(args.pop(0))
        elif a == "--json" and args:
            as_json = args.pop(0)
        elif a == "--hint":
            hint = True
        else:
            raise SystemExit(__doc__)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (namespaces, overlay mounts, chroot)")
    for tool in ("strace", "unshare", "tar", "gzip"):
        if not shutil.which(tool, path=SYSTEM_PATH):
            raise SystemExit("bench: %s is needed (.ci/setup installs it)" % tool)
    if not opts["--frozen"] or not opts["--baseline"]:
        raise SystemExit("bench: --frozen NEW-TREE and --baseline OLD-TREE are needed\n" + __doc__)
    out = {"rounds": rounds, "hint": hint, "sizes": {}, "machine": os.uname().release,
           "load": os.getloadavg()}
    tmp = tempfile.mkdtemp(prefix="onefile-bench-", dir="/var/tmp")
    try:
        peer = build_peer(opts["--peer-source"], tmp, "amd64")
        trees = [("old", opts["--baseline"]), ("new", opts["--frozen"])]
        for name, path in trees + [("peer", os.path.dirname(peer))]:
            out["sizes"][name] = dict(sizes(path), path=path)
        for name, key in (("old arm64", "--baseline-arm64"), ("new arm64", "--frozen-arm64")):
            if opts[key]:
                out["sizes"][name] = dict(sizes(opts[key]), path=opts[key])
        if opts["--frozen-arm64"] or opts["--baseline-arm64"]:
            arm = build_peer(opts["--peer-source"], tmp, "arm64")
            out["sizes"]["peer arm64"] = dict(sizes(os.path.dirname(arm)), path=os.path.dirname(arm))
        work = os.path.join(tmp, "ns")
        os.mkdir(work, 0o700)
        pairs = [("new, first call", "old, first call"), ("new, first call", "peer, first call"),
                 ("new, cache hit", "old, cache hit"), ("peer, later call", "new, cache hit")]
        cfg = {"workdir": work, "root": bookworm_root(opts["--root"]), "peer": peer, "trees": trees,
               "rounds": rounds, "hint": hint, "pairs": pairs}
        proc = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--net", "--propagation", "private",
                               PYTHON, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                              stdout=subprocess.PIPE, env={"PATH": SYSTEM_PATH})
        if proc.returncode:
            raise SystemExit("bench: the worker failed (exit %d)" % proc.returncode)
        out.update(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["targets"] = targets(out)
    out["load_after"] = os.getloadavg()
    if as_json and as_json != "-":
        with open(as_json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
    if as_json == "-":
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print("bench/onefile.py: kernel %s, load %.1f -> %.1f%s" % (
            out["machine"], out["load"][0], out["load_after"][0], ", with kubelet's hint chain" if hint else ""))
        print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
