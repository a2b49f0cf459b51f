"""Every verb of `iptables-shim`, and plain calls, on Debian's python3-minimal.

python3-minimal is the smallest Python Debian ships and common in slim images: no `json`, no
`ctypes` (no `_ctypes`), a fraction of the standard library. Each verb must work there or print
ONE `iptables-shim:` line naming what it lacks, never a traceback; `iptables -S` through the shim
must work; and the image of docs/callers.md#contexts-supported whose only names are plain `iptables*`
pointing at legacy (kubelet's hint in legacy, junk in nft) must get legacy, the legacy facts
coming from the alias's own `iptables-save` where ctypes is missing.

Trees: `debootstrap --variant=minbase --include=iptables,python3-minimal` of bullseye (Python 3.9,
iptables 1.8.7) and bookworm (3.11, 1.8.9), cached under
$IPTABLES_SHIM_TEST_CACHE/minimal (default /var/cache/iptables-shim-tests/minimal); with
IPTABLES_SHIM_TEST_FRESH=1 (what .ci/run sets) built in a temporary directory and removed after.
About two minutes for both, built concurrently. A tree is entered as a container: private mount
and PID namespaces, an overlay whose upper layer is a tmpfs of that mount namespace (so a test may
change the image and the cached tree never changes), the checkout read-only at
/opt/iptables-shim, then chroot; the netns is entered first, as a runtime does.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BIN, REPO
from shim.tools import SHIM_NAMES
from shim_output import is_shim_error

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, mount and PID namespaces, chroot"),
]

SUITES = ("bullseye", "bookworm")
PACKAGES = "iptables,python3-minimal"
MIRROR = os.environ.get("IPTABLES_SHIM_MIRROR", "http://deb.debian.org/debian")
SHIM_DIR = "/opt/iptables-shim"
IMAGE_PATH = SHIM_DIR + "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARK = "iptables-shim-minimal"

# $1 tree (lower layer), $2 checkout, $3 a directory for this namespace's tmpfs, $4 shell run in the
# image's root before chroot (changes land in the tmpfs); the rest: the command, run in the chroot.
ENTER = r"""
set -e
tree=$1; shim=$2; t=$3; prepare=$4; shift 4
mount --make-rprivate /
mount -t tmpfs none "$t"
mkdir "$t/upper" "$t/work" "$t/root"
mount -t overlay overlay -o "lowerdir=$tree,upperdir=$t/upper,workdir=$t/work" "$t/root"
root=$t/root
mount --bind /dev "$root/dev"
mount -t proc proc "$root/proc"
mkdir -p "$root/opt/iptables-shim"
mount --bind -o ro "$shim" "$root/opt/iptables-shim"
(cd "$root" && sh -c "$prepare")
exec chroot "$root" "$@"
"""

# Item 6's image: the only iptables names are the plain ones, pointing at legacy; no variant names,
# no nft binary.
ONLY_PLAIN_LEGACY = r"""
cd usr/sbin
rm -f iptables-nft* ip6tables-nft* iptables-legacy* ip6tables-legacy* xtables-nft-multi xtables-monitor \
      *-translate ebtables* arptables* iptables ip6tables iptables-save ip6tables-save \
      iptables-restore ip6tables-restore
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s xtables-legacy-multi "$n"
done
"""


def log(msg):
    sys.stderr.write("[minimal] %s %s\n" % (time.strftime("%H:%M:%S"), msg))


@pytest.fixture(scope="session")
def trees():
    """{suite: tree path}, built with debootstrap where not cached (both at once)."""
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    fresh = os.environ.get("IPTABLES_SHIM_TEST_FRESH") == "1"
    if fresh:
        base = tempfile.mkdtemp(prefix="iptables-shim-minimal-", dir="/var/tmp")
    else:
        base = os.path.join(os.environ.get("IPTABLES_SHIM_TEST_CACHE", "/var/cache/iptables-shim-tests"), "minimal")
    for d in ("trees", "logs"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    paths = {s: os.path.join(base, "trees", s) for s in SUITES}
    procs = {}
    t0 = time.monotonic()
    for suite, path in paths.items():
        if os.path.exists(path + ".done"):
            continue
        shutil.rmtree(path, ignore_errors=True)
        debs = os.path.join(base, "debs", suite)
        os.makedirs(debs, exist_ok=True)
        logf = open(os.path.join(base, "logs", "debootstrap-%s.log" % suite), "w")
        cmd = ["debootstrap", "--variant=minbase", "--cache-dir=" + debs, "--include=" + PACKAGES, suite, path, MIRROR]
        log("start: " + " ".join(cmd))
        procs[suite] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf)
    failed = []
    for suite, (p, logf) in procs.items():
        rc = p.wait(timeout=1800)
        logf.close()
        log("debootstrap %s rc=%d after %.0f s" % (suite, rc, time.monotonic() - t0))
        if rc != 0:
            failed.append("%s (see %s)" % (suite, logf.name))
        else:
            with open(paths[suite] + ".done", "w") as f:
                f.write("%s %s %.0f s\n" % (suite, PACKAGES, time.monotonic() - t0))
    try:
        if failed:
            pytest.skip("debootstrap failed (no Debian mirror reachable?): " + ", ".join(failed))
        yield paths
    finally:
        if fresh:
            shutil.rmtree(base, ignore_errors=True)


def in_image(tree, cmd, netns=None, prepare="true", env=None, tmp=None):
    t = tempfile.mkdtemp(prefix="shim-minimal-mnt-", dir=tmp)
    try:
        argv = ["unshare", "--mount", "--pid", "--fork", "sh", "-c", ENTER, "enter", tree, REPO, t, prepare] + list(cmd)
        if netns is not None:
            argv = ["nsenter", "--net=" + netns.path] + argv
        return subprocess.run(argv, env=env or {"PATH": IMAGE_PATH, "LC_ALL": "C"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120, check=False)
    finally:
        os.rmdir(t)


def works_or_one_line(r, what):
    """rc 0, or one `iptables-shim:` line and a non-zero exit; never a traceback."""
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, (what, err)
    if r.returncode == 0:
        return True
    assert is_shim_error(r, returncode=None), (what, r.returncode, r.stdout, err)
    return False


def verbs():
    """The verbs `iptables-shim --help` lists on this checkout (doctor only where it exists)."""
    r = subprocess.run([os.path.join(BIN, "iptables-shim"), "--help"], stdout=subprocess.PIPE, check=True)
    usage = r.stdout.decode()
    out = [["--help"], ["explain"], ["explain", "--json"], ["explain", "--family", "ip6tables"],
           ["install", "/root/shim-links"]]
    if "uninstall" in usage:
        out.append(["uninstall", "/root/shim-links"])
    if "doctor" in usage:
        out += [["doctor"], ["doctor", "--json"]]
    return out


@pytest.mark.parametrize("suite", SUITES)
def test_the_trees_are_python3_minimal(trees, suite):
    """What the other tests rest on: no json, no _ctypes in these trees."""
    r = in_image(trees[suite], ["/usr/bin/python3", "-I", "-S", "-c",
                                "import importlib.util as u; print(u.find_spec('json'), u.find_spec('_ctypes'))"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["None", "None"], r.stdout


@pytest.mark.parametrize("suite", SUITES)
def test_every_verb_works_or_says_in_one_line_what_it_lacks(trees, netns, suite):
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j ACCEPT")
    results = {}
    for args in verbs():
        # install and uninstall see the same image only within one namespace: run them together.
        if args[0] == "uninstall":
            continue
        cmd = [SHIM_DIR + "/bin/iptables-shim"] + args
        if args[0] == "install":
            script = 'mkdir -p /root/shim-links && "$@" && ls /root/shim-links && /opt/iptables-shim/bin/iptables-shim uninstall /root/shim-links'
            cmd = ["sh", "-c", script, "install-then-uninstall"] + cmd
        r = in_image(trees[suite], cmd, netns=netns)
        if args[0] == "doctor" and r.returncode == 1 and r.stdout:
            # doctor's exit 1 means "the audit found problems", reported on stdout (here at least:
            # legacy unreadable without ctypes); the verb itself worked.
            assert "Traceback" not in r.stderr.decode("utf-8", "replace"), r.stderr
            r = subprocess.CompletedProcess(r.args, 0, r.stdout, r.stderr)
        ok = works_or_one_line(r, " ".join(args))
        results[" ".join(args)] = ok
        if ok and args == ["doctor", "--json"]:
            json.loads(r.stdout.decode())
        if ok and args == ["explain", "--json"]:
            report = json.loads(r.stdout.decode())
            assert report["decision"]["backend"] == "legacy", report["decision"]
        if ok and args == ["explain"]:
            assert b"legacy" in r.stdout, r.stdout
        if ok and args[0] == "install":
            names = r.stdout.decode().split()
            assert "iptables" in " ".join(names), r.stdout
    log("%s verbs: %s" % (suite, results))


@pytest.mark.parametrize("suite", SUITES)
def test_plain_iptables_through_the_shim(trees, netns, suite):
    """`iptables -S` and `iptables-save` in a container whose image aliases nft (Debian's default),
    in a netns where legacy holds the rules: the legacy variant's output, nothing else."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j ACCEPT")
    direct = in_image(trees[suite], ["iptables-legacy", "-S"], netns=netns)
    assert direct.returncode == 0, direct.stderr
    r = in_image(trees[suite], ["iptables", "-S"], netns=netns)
    assert (r.returncode, r.stdout, r.stderr) == (0, direct.stdout, b""), r.stderr
    r = in_image(trees[suite], ["iptables", "-A", "INPUT", "-m", "comment", "--comment", MARK, "-j", "ACCEPT"],
                 netns=netns)
    assert r.returncode == 0, r.stderr
    assert [l for l in netns.rules("nft") if MARK in l] == []
    assert len([l for l in netns.rules("legacy") if MARK in l]) == 1


@pytest.mark.parametrize("suite", SUITES)
def test_image_with_only_plain_names_to_legacy_chooses_legacy(trees, netns, suite):
    """Issue item 6's image: the only names are `iptables*` -> xtables-legacy-multi; kubelet's hint
    is in legacy, junk rules in nft. Without ctypes the legacy facts come from a save binary, and
    here the only one is the alias's own `iptables-save` (it runs legacy): the shim must use it and
    choose legacy, never refuse, never nft."""
    netns.ok("iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; "
             "iptables-nft -N BAD-1; iptables-nft -A BAD-1 -j ACCEPT; iptables-nft -N BAD-2; iptables-nft -A BAD-2 -j DROP")
    listing = in_image(trees[suite], ["sh", "-c", "ls /usr/sbin | grep -E 'tables' | sort"], netns=netns,
                       prepare=ONLY_PLAIN_LEGACY)
    names = set(listing.stdout.decode().split()) - {"iptables-apply", "ip6tables-apply"}  # shell scripts
    assert names == SHIM_NAMES | {"xtables-legacy-multi"}, names
    before_nft = netns.rules("nft")
    r = in_image(trees[suite], ["iptables", "-A", "INPUT", "-m", "comment", "--comment", MARK, "-j", "ACCEPT"],
                 netns=netns, prepare=ONLY_PLAIN_LEGACY)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r.stderr
    assert netns.rules("nft") == before_nft
    assert len([l for l in netns.rules("legacy") if MARK in l]) == 1
    rep = in_image(trees[suite], [SHIM_DIR + "/bin/iptables-shim", "explain"], netns=netns, prepare=ONLY_PLAIN_LEGACY)
    if works_or_one_line(rep, "explain"):
        assert b"legacy" in rep.stdout.splitlines()[0], rep.stdout
