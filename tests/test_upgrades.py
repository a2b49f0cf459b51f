"""Upgrades under load: the .deb and iptables' own packages change while loops call all six names.

In test_deb's bookworm root (real dpkg and apt, iptables, ufw), one scenario per test runs in one
mount namespace: LOOPS start (each in its own private netns made with `unshare -n`, seeded legacy,
seeded nft or left empty; with the cache, without it (Python decides every call), or in a fresh
netns each round), then the package steps run one after the other while the loops call
/usr/sbin/iptables, -save, -restore and their ip6tables names as callers do, then the loops stop.

Each call through the shim is counted (one that ran while the alternative was iptables' own, by
hand or with the shim removed, is not the shim's): made, failed (exit status not 0, or anything on
stderr), misplaced (the rule it wrote is in the other backend, read back from the kernel with the
-legacy and -nft save binaries). Where a call lands is judged against what /etc/alternatives said before and after it:
the shim (the netns's own backend; legacy for an empty netns, the recorded default alias) or
iptables' own variant, whichever the alternative was (a call that overlapped a change of the
alternative may land by either).

The two package versions are the workspace's frozen tree and a second tree built by
packaging/build.sh from a copy of the checkout whose shim/ differs the way an upgrade's does (its
shim package imports a name only its shim.tools has: the two versions' modules cannot be mixed),
packaged with packaging/deb.sh as 9.0.1 and 9.0.2. The two executables differ; each carries its
own modules, so nothing of one version can be mixed with the other's inside a call. dpkg replaces
the executable with one rename: test_without_versioned_trees_one_file_loses_no_call runs the same
load over a package whose `current` leads into dpkg's own unpacked tree (the part
docs/packaging.md#upgrades adds, removed) and shows that no call fails there either.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO
import test_alternatives as alt
import test_deb

pytestmark = test_deb.pytestmark

LIBDIR = test_deb.LIBDIR
# shipped/ as dpkg unpacks the one-file tree (no lib/).
SHIPPED = ["BUILDINFO", "iptables-shim", "iptables-shim.frozen", "iptables", "iptables-save", "iptables-restore",
           "ip6tables", "ip6tables-save", "ip6tables-restore"]
V1, V2 = "9.0.1", "9.0.2"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 "

# One loop: $1 its name, $2 the seed (legacy, nft, empty), $3 the cache (on, off) or "fresh" (a new
# netns every round). Runs in its own netns (unshare -n). Prints one line per failed or misplaced
# call and, at the end, its counts.
LOOP = r"""
name=$1 seed=$2 mode=$3 calls=0 failed=0 misplaced=0 rounds=0
[ "$mode" = off ] && export IPTABLES_SHIM_CACHE=off  # Python decides every call
shim_in_force() {
    case $(readlink /etc/alternatives/iptables):$(readlink /etc/alternatives/ip6tables) in
        $LIBDIR/*:$LIBDIR/*) return 0 ;;
    esac
    return 1
}
call() {  # $1 what for the report; the rest the command; stdin passed on
    what=$1; shift
    shim_in_force && before=shim || before=own
    if ! timeout 30 "$@" >/tmp/loop-$name.out 2>/tmp/loop-$name.err || [ -s /tmp/loop-$name.err ]; then
        shim_in_force && after=shim || after=own
        err=$(head -c 300 /tmp/loop-$name.err | tr '\n' ' ')
        case $before:$after:$err in
            own:own:*)
                ;;  # iptables' own variant, chosen by hand or with the shim not installed
            *own*:*"line 2 failed"*|*own*:*"Bad rule (does a matching rule exist"*|*own*:*"legacy tables present"*)
                # The alternative changed around this call: iptables' own variant ran it against
                # a rule the shim had put in the other backend. Not the shim's call.
                echo "EXCUSED $name $what ($before -> $after): $err" ;;
            *)
                calls=$((calls + 1)) failed=$((failed + 1))
                echo "FAILED $name $what ($before -> $after): $err" ;;
        esac
    else
        shim_in_force && after=shim || after=own
        [ $before:$after = own:own ] || calls=$((calls + 1))
    fi
}
# One round: each family's rule written with -A, read back from the kernel, listed with -S and
# -save, deleted with -restore from stdin. Returns 1 when the alternative changed during it.
round() {
    rounds=$((rounds + 1))
    for fam in iptables ip6tables; do
        if [ $fam = iptables ]; then addr=198.51.100.$((rounds % 250 + 1)); else addr=2001:db8::$rounds; fi
        call "$fam -A" /usr/sbin/$fam -A INPUT -s $addr -j ACCEPT
        in_legacy=$($fam-legacy-save 2>/dev/null | grep -c -- "-s $addr/" || true)
        in_nft=$($fam-nft-save 2>/dev/null | grep -c -- "-s $addr/" || true)
        call "$fam -S" /usr/sbin/$fam -S INPUT
        call "$fam-save" /usr/sbin/$fam-save -t filter
        printf '*filter\n-D INPUT -s %s -j ACCEPT\nCOMMIT\n' $addr >/tmp/loop-$name.in
        call "$fam-restore" /usr/sbin/$fam-restore --noflush </tmp/loop-$name.in
        landed=none
        [ "$in_legacy" != 0 ] && landed=legacy
        [ "$in_nft" != 0 ] && landed=$([ $landed = none ] && echo nft || echo both)
        if ! shim_in_force; then
            return 1  # iptables' own variant may have run: this netns is not the shim's to judge now
        fi
        if [ $landed != none ] && [ $landed != "$want" ]; then
            misplaced=$((misplaced + 1))
            echo "MISPLACED $name $fam: landed in $landed, not $want"
        fi
        # What a failed -restore left, taken away where it is (never touching the other backend).
        [ "$in_legacy" != 0 ] && $fam-legacy -D INPUT -s $addr -j ACCEPT 2>/dev/null
        [ "$in_nft" != 0 ] && $fam-nft -D INPUT -s $addr -j ACCEPT 2>/dev/null
    done
    return 0
}
if [ "$mode" = epoch ] || [ "$mode" = epoch-once ]; then
    # One netns's life (this process runs in its own, from unshare -n): seeded, then rounds while
    # the shim is the alternative; it ends when that changes (a call may then have run iptables'
    # own variant here), or after one round for a loop that wants a fresh netns each time.
    case $seed in
        legacy|nft) iptables-$seed -A FORWARD -s 192.0.2.250 -j DROP &&
            ip6tables-$seed -A FORWARD -s 2001:db8:ffff::1 -j DROP ;;
    esac
    # Where the shim puts a call: the netns's own backend (empty: the recorded default alias), or
    # for a caller in the host's own context, the default alias (WANT).
    case $seed in nft) want=${WANT:-nft} ;; *) want=${WANT:-legacy} ;; esac
    while [ ! -e /tmp/stop ] && shim_in_force && round; do
        [ "$mode" = epoch-once ] && break
    done
    echo "COUNTS-PART $name calls=$calls failed=$failed misplaced=$misplaced"
    exit 0
fi
epochs=0 waits=0
while [ ! -e /tmp/stop ]; do
    if ! shim_in_force; then waits=$((waits + 1)); sleep 0.05; continue; fi
    epochs=$((epochs + 1))
    unshare -n sh /tmp/loop.sh "$name" "$seed" "$([ "$mode" = fresh ] && echo epoch-once || echo epoch)" </dev/null
done
echo "COUNTS $name calls=0 failed=0 misplaced=0 netns=$epochs"
""".replace("$LIBDIR", LIBDIR)

# The driver: the loops, then the steps ($STEPS), each followed by `state` (what the
# alternatives, the trees and the cache are after it), then stop and collect.
DRIVER = r"""
cp "${LOOP_BODY:-/opt/loop-body.sh}" /tmp/loop.sh
rm -f /tmp/stop
i=0
for seed in legacy nft empty; do
    for mode in on off fresh; do
        i=$((i + 1))
        sh /tmp/loop.sh loop$i-$seed-$mode $seed $mode >/tmp/loop$i.log 2>&1 &
    done
done
state() {
    echo "STATE $1"
    for fam in iptables ip6tables; do echo "alternative-$fam $(readlink /etc/alternatives/$fam)"; done
    echo "current $(readlink $LIBDIR/current 2>/dev/null || echo none)"
    echo "trees $(ls $LIBDIR/trees 2>/dev/null | tr '\n' ' ')"
    echo "shipped $(ls $LIBDIR/shipped 2>/dev/null | tr '\n' ' ')"
    echo "libdir $(ls $LIBDIR 2>/dev/null | tr '\n' ' ')"
    echo "record $(tr '\n' ' ' 2>/dev/null </var/lib/iptables-shim/alternatives || echo none)"
    echo "cache $(ls /run/iptables-shim 2>/dev/null | wc -l)"
    echo "status $(dpkg-query -W -f '${db:Status-Abbrev}${Version}' iptables-shim 2>/dev/null || echo none)"
    echo "iptables $(dpkg-query -W -f '${db:Status-Abbrev}${Version}' iptables)"
    unshare -n $LIBDIR/iptables-shim explain >/tmp/explain 2>&1
    echo "alias $(sed -n 's/^default alias: *//p' /tmp/explain)"
    echo "route $(sed -n 's/^route: *//p' /tmp/explain)"
    echo "END"
}
step() {
    echo "STEP $1"; shift
    sleep 2
    sh -c "$*" >/tmp/step.log 2>&1 || echo "STEP-FAILED"
    sed 's/^/| /' /tmp/step.log
    state "$STEP_NAME"
}
sleep 3
$STEPS
sleep 2
touch /tmp/stop
wait
cat /tmp/loop*.log
""".replace("$LIBDIR", LIBDIR)


def counts(out):
    """{loop: (calls, failed, misplaced)}, fresh-netns rounds summed into their loop."""
    total = {}
    for name, c, f, m in re.findall(r"^COUNTS(?:-PART)? (\S+) calls=(\d+) failed=(\d+) misplaced=(\d+)", out, re.M):
        t = total.get(name, (0, 0, 0))
        total[name] = (t[0] + int(c), t[1] + int(f), t[2] + int(m))
    return total


def states(out):
    """{step name: {key: value}} from the driver's STATE blocks."""
    result = {}
    for name, body in re.findall(r"^STATE ([^\n]*)\n(.*?)^END$", out, re.M | re.S):
        result[name] = dict(l.split(" ", 1) if " " in l else (l, "") for l in body.splitlines())
    return result


def steps(*pairs):
    """Shell for the driver: (name, command) pairs."""
    return "\n".join("STEP_NAME=%s step %s %s" % (shq(n), shq(n), shq(c)) for n, c in pairs)


def shq(s):
    return "'" + s.replace("'", "'\\''") + "'"


# -- the packages -----------------------------------------------------------------------------------

_DEBS = {}  # {version: the shim's package}
_BUILT = {}  # the other packages: "without-trees", "iptables"


# What one version's shim package imports from its shim.tools, the other's lacks: the versions'
# modules cannot be mixed (the executable carries its own, frozen in).
UPGRADE_IMPORTER, UPGRADE_PROVIDER = "shim/__init__.py", "shim/tools.py"
SHIPPED_EXE = LIBDIR + "/shipped/iptables-shim"


def upgraded_tree(ws, out):
    """A tree of version 2: packaging/build.sh run from a copy of the checkout (shim/, packaging/,
    pyproject.toml) whose shim package imports a name only its shim.tools has, with the
    workspace's build cache (the interpreter is cached: it relinks in seconds). Its executable
    differs from the workspace's."""
    src = out + ".src"
    shutil.rmtree(src, ignore_errors=True)
    for part in ("shim", "packaging"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(src, part), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), src)
    with open(os.path.join(src, UPGRADE_PROVIDER), "a") as f:
        f.write("\nUPGRADE_MARK = 2  # tests/test_upgrades.py\n")
    with open(os.path.join(src, UPGRADE_IMPORTER), "a") as f:
        f.write("\nfrom shim.tools import UPGRADE_MARK  # noqa: tests/test_upgrades.py\n")
    epoch = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%ct"], stdout=subprocess.PIPE).stdout.strip()
    env = dict(os.environ, IPTABLES_SHIM_BUILD_CACHE=os.path.join(ws.root, "build"),
               SOURCE_DATE_EPOCH=epoch.decode() or "0")
    ws.run([os.path.join(src, "packaging", "build.sh"), "--out", out], what="packaging/build.sh (version 2)",
           env=env, timeout=3600)
    shutil.rmtree(src)
    return os.path.join(out, "iptables-shim")


def debs(without_trees=False):
    """{version: path} of the two packages (built once per run); `without_trees`: the same packages
    with the versioned trees taken out (trees/ID a link to dpkg's shipped/, so calls run from the
    tree dpkg is replacing), rebuilt with dpkg-deb -R / -b."""
    if without_trees:
        return mutated(debs())
    if not _DEBS:
        ws = test_deb.workspace()
        tree = test_deb.frozen_tree()
        out = os.path.join(ws.root, "deb", "upgrades")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        tree2 = upgraded_tree(ws, os.path.join(out, "tree2"))
        with open(os.path.join(tree, "iptables-shim"), "rb") as one, open(os.path.join(tree2, "iptables-shim"), "rb") as two:
            assert one.read() != two.read(), "the two versions' executables are the same"
        for version, t in ((V1, tree), (V2, tree2)):
            r = ws.run([test_deb.DEB_SH, "--tree", t, "--out", out, "--version", version],
                       what="packaging/deb.sh " + version)
            _DEBS[version] = r.stdout.decode().strip()
    return _DEBS


# trees_make with its hard-linked copy taken out: the tree is dpkg's own shipped/.
WITHOUT_TREES = """trees_make() {
    mkdir -p "$LIBDIR/trees"; [ -e "$LIBDIR/trees/$2" ] || ln -s ../shipped "$LIBDIR/trees/$2"
}"""


def mutated(packages):
    if "without-trees" not in _BUILT:
        ws = test_deb.workspace()
        out = os.path.join(ws.root, "deb", "upgrades-without-trees")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        result = {}
        for version, deb in packages.items():
            x = os.path.join(out, version)
            subprocess.run(["dpkg-deb", "-R", deb, x], check=True)
            for script in ("preinst", "postinst", "prerm", "postrm"):
                path = os.path.join(x, "DEBIAN", script)
                text, n = re.subn(r"(?ms)^trees_make\(\) \{$.*?^\}$", WITHOUT_TREES, open(path).read())
                assert n == 1, script
                with open(path, "w") as f:
                    f.write(text)
            result[version] = os.path.join(out, "without-trees-%s.deb" % version)
            subprocess.run(["dpkg-deb", "--root-owner-group", "-b", x, result[version]], check=True,
                           stdout=subprocess.DEVNULL)
        _BUILT["without-trees"] = result
    return _BUILT["without-trees"]


def make_root(tmp_path, packages):
    base, tree, fresh = alt._tree()
    r = alt.Root(tree, str(tmp_path / "root"))
    os.makedirs(os.path.join(r.upper, "root"), exist_ok=True)
    os.makedirs(os.path.join(r.upper, "opt"), exist_ok=True)
    for version, deb in packages.items():
        shutil.copy(deb, os.path.join(r.upper, "root", "shim-%s.deb" % version))
    with open(os.path.join(r.upper, "opt", "loop-body.sh"), "w") as f:
        f.write(LOOP)
    # The machine's choice before the shim: legacy, by hand (recorded as the default alias).
    r.ok("update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null; "
         "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null")
    return r


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path, debs())


def run_scenario(root, pairs, timeout=900):
    rc, out, err = root.run(DRIVER.replace("$STEPS", steps(*pairs)), timeout=timeout)
    assert rc == 0, (out, err)
    return out


def assert_no_call_lost(out, min_calls=8):
    c = counts(out)
    assert len(c) == 9, out
    bad = [l for l in out.splitlines() if l.startswith(("FAILED", "MISPLACED", "STEP-FAILED"))]
    assert bad == [], "\n".join(bad[:40])
    assert all(calls >= min_calls for calls, _, _ in c.values()), c
    return c


def report(what, c):
    calls = sum(v[0] for v in c.values())
    failed = sum(v[1] for v in c.values())
    misplaced = sum(v[2] for v in c.values())
    print("%s: %d calls, %d failed, %d misplaced (%s)" % (what, calls, failed, misplaced, c))


def assert_installed(state, version):
    for fam in ("iptables", "ip6tables"):
        assert state["alternative-" + fam] == "%s/%s" % (LIBDIR, fam), state
    assert state["status"] == "ii " + version, state
    tree = state["current"]
    assert re.fullmatch(r"trees/%s-[0-9a-f]{12}" % re.escape(version), tree), state
    # The old tree went once no call was in it: one tree, the current one.
    assert state["trees"].split() == [tree[len("trees/"):]], state
    assert sorted(state["shipped"].split()) == sorted(SHIPPED), state


def assert_removed(state):
    for fam in ("iptables", "ip6tables"):
        assert state["alternative-" + fam] == "/usr/sbin/%s-legacy" % fam, state
    assert state["current"] == "none" and state["trees"] == "" and state["libdir"] == "", state
    assert state["record"] == "none" and state["cache"] == "0", state


# -- the shim's own package ------------------------------------------------------------------------

def test_shim_upgrades_downgrades_remove_purge_reinstall_lose_no_call(root):
    out = run_scenario(root, [
        ("install-1", APT + "install /root/shim-%s.deb" % V1),
        ("upgrade-1-2", APT + "install /root/shim-%s.deb" % V2),
        ("downgrade-2-1", APT + "install --allow-downgrades /root/shim-%s.deb" % V1),
        ("upgrade-1-2-again", "dpkg -i /root/shim-%s.deb" % V2),
        ("reinstall-2", APT + "install --reinstall /root/shim-%s.deb" % V2),
        ("remove", APT + "remove iptables-shim"),
        ("install-2", APT + "install /root/shim-%s.deb" % V2),
        ("purge", APT + "purge iptables-shim"),
        ("install-1-again", APT + "install /root/shim-%s.deb" % V1),
    ])
    c = assert_no_call_lost(out)
    report("shim 1 -> 2 -> 1 -> 2, reinstall, remove, install, purge, install", c)
    s = states(out)
    assert_installed(s["install-1"], V1)
    assert_installed(s["upgrade-1-2"], V2)
    assert_installed(s["downgrade-2-1"], V1)
    assert_installed(s["upgrade-1-2-again"], V2)
    assert_installed(s["reinstall-2"], V2)
    assert_removed(s["remove"])
    assert s["remove"]["status"] == "rc " + V2, s["remove"]
    assert_installed(s["install-2"], V2)
    assert_removed(s["purge"])
    assert s["purge"]["status"] == "none" or s["purge"]["status"].startswith("un"), s["purge"]
    assert_installed(s["install-1-again"], V1)
    # The record holds the choice from before the first install, whatever happened in between.
    assert "group iptables manual /usr/sbin/iptables-legacy %s/iptables 100" % LIBDIR in s["install-1-again"]["record"], s


# dpkg -i of version 2 killed (SIGKILL) the moment its executable is renamed into place, about 20
# renames before the last: dpkg's shipped/ then holds version 2's executable beside version 1's
# other files, and stays so until the package is installed again. Those 20 renames take
# milliseconds: the watcher runs at real-time priority and dpkg niced, or on a loaded machine dpkg
# finished its unpack (status iU) before the watcher was scheduled (seen in a full run).
KILL_MID_UNPACK = r"""cp %s /tmp/executable-before
nice -n 19 dpkg -i /root/shim-%s.deb >/tmp/dpkg.log 2>&1 & pid=$!
chrt -f 50 python3 - $pid <<'PY'
import os, signal, sys, time
pid, path = int(sys.argv[1]), "%s"
ino, deadline = os.stat(path).st_ino, time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if os.stat(path).st_ino != ino:
            os.kill(pid, signal.SIGKILL)
            print("killed dpkg")
            break
    except FileNotFoundError:
        pass
PY
wait $pid || true
# Whether version 2's executable is in shipped/ (the last command: its status is the step's).
if ! cmp -s %s /tmp/executable-before; then echo "executable replaced"; fi
""" % (SHIPPED_EXE, V2, SHIPPED_EXE, SHIPPED_EXE)


def kill_scenario():
    return [
        ("install-1", APT + "install /root/shim-%s.deb" % V1),
        ("killed-1-2", KILL_MID_UNPACK),
        ("configure-a", "dpkg --configure -a; echo configure-rc=$?"),
        ("again-2", "dpkg -i /root/shim-%s.deb" % V2),
    ]


def test_dpkg_killed_mid_unpack_then_configure_a_loses_no_call(root):
    """The unpack of 2 killed with shipped/ half replaced: calls go on in 1's tree, untouched;
    `dpkg --configure -a` leaves it so (the package must be installed again, as dpkg says);
    installing 2 again completes the upgrade. Zero failed, zero misplaced calls throughout."""
    out = run_scenario(root, kill_scenario())
    c = assert_no_call_lost(out)
    report("dpkg killed mid-unpack, configure -a, install again", c)
    assert "killed dpkg" in out and "executable replaced" in out, out
    s = states(out)
    killed = s["killed-1-2"]
    # dpkg's record of an unpack it did not finish: half-installed, reinstall required.
    assert killed["status"].startswith("iHR"), killed
    assert killed["current"] == s["install-1"]["current"], (killed, s["install-1"])
    assert_installed(s["again-2"], V2)


def test_without_versioned_trees_one_file_loses_no_call(tmp_path):
    """The part docs/packaging.md#upgrades adds, taken out (calls run from dpkg's own shipped/):
    with the tree's program in one file, which dpkg replaces by one rename, the same kill
    mid-unpack leaves shipped/ with version 2's whole executable, and no call fails or lands
    wrong. (With the bytecode in lib/, one file per module, every call Python answered failed
    here until the package was installed again: 490 of 3,184.)"""
    root = make_root(tmp_path, debs(without_trees=True))
    out = run_scenario(root, kill_scenario())
    c = assert_no_call_lost(out)
    report("without the versioned trees: dpkg killed mid-unpack", c)
    assert "killed dpkg" in out and "executable replaced" in out, out
    killed = states(out)["killed-1-2"]
    assert killed["status"].startswith("iHR"), killed


# -- iptables' own package --------------------------------------------------------------------------

BUMPED = "1.8.9-2+shimtest1"


def bumped_iptables():
    """Debian's own iptables and the three libraries it depends on exactly, as the root's apt
    cache has them, rebuilt with dpkg-deb -R / -b under a higher version (what an upgrade brings)."""
    if "iptables" not in _BUILT:
        base, tree, fresh = alt._tree()
        archives = os.path.join(tree, "var", "cache", "apt", "archives")
        out = os.path.join(test_deb.workspace().root, "deb", "iptables-bumped")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        made = []
        for package in ("iptables", "libip4tc2", "libip6tc2", "libxtables12"):
            deb = [f for f in os.listdir(archives) if f.startswith(package + "_1.8.9-2_")]
            assert len(deb) == 1, (package, os.listdir(archives))
            x = os.path.join(out, package)
            subprocess.run(["dpkg-deb", "-R", os.path.join(archives, deb[0]), x], check=True)
            control = os.path.join(x, "DEBIAN", "control")
            text = open(control).read().replace("Version: 1.8.9-2\n", "Version: %s\n" % BUMPED)
            text = text.replace("(= 1.8.9-2)", "(= %s)" % BUMPED)
            open(control, "w").write(text)
            made.append(os.path.join(out, "%s_%s_amd64.deb" % (package, BUMPED)))
            subprocess.run(["dpkg-deb", "--root-owner-group", "-b", x, made[-1]], check=True, stdout=subprocess.DEVNULL)
        _BUILT["iptables"] = made
    return _BUILT["iptables"]


def test_iptables_reinstall_upgrade_and_a_hand_choice_lose_no_call(tmp_path):
    """iptables' own postinst re-registers its alternatives on reinstall and upgrade: the shim stays
    the alternative in force, its default alias the recorded legacy, which the new iptables still
    ships. A choice by hand (`update-alternatives --set iptables /usr/sbin/iptables-nft`) wins: the
    shim's upgrade leaves it; `--auto` brings the shim back."""
    root = make_root(tmp_path, debs())
    for deb in bumped_iptables():
        shutil.copy(deb, os.path.join(root.upper, "root"))
    out = run_scenario(root, [
        ("install-1", APT + "install /root/shim-%s.deb" % V1),
        ("reinstall-iptables", APT + "install --reinstall iptables"),
        ("upgrade-iptables", APT + "install " + " ".join("/root/" + os.path.basename(d) for d in bumped_iptables())),
        ("hand-choice-nft", "update-alternatives --set iptables /usr/sbin/iptables-nft"),
        ("upgrade-shim-under-hand-choice", APT + "install /root/shim-%s.deb" % V2),
        ("auto-again", "update-alternatives --auto iptables"),
    ])
    c = assert_no_call_lost(out)
    report("iptables reinstalled and upgraded, a hand choice, the shim upgraded under it", c)
    s = states(out)
    for name in ("install-1", "reinstall-iptables", "upgrade-iptables"):
        assert_installed(s[name], V1)
        assert s[name]["alias"] == "/usr/sbin/iptables-legacy -> legacy (by symlink chain)", s[name]
    assert s["reinstall-iptables"]["iptables"] == "ii 1.8.9-2", s
    assert s["upgrade-iptables"]["iptables"] == "ii " + BUMPED, s
    assert s["upgrade-iptables"]["record"] == s["install-1"]["record"], s
    hand = s["hand-choice-nft"]
    assert hand["alternative-iptables"] == "/usr/sbin/iptables-nft", hand
    assert hand["alternative-ip6tables"] == LIBDIR + "/ip6tables", hand
    upgraded = s["upgrade-shim-under-hand-choice"]
    assert upgraded["alternative-iptables"] == "/usr/sbin/iptables-nft", upgraded
    assert upgraded["status"] == "ii " + V2, upgraded
    assert "iptables-shim: the alternatives are left as they are" in out, out
    assert_installed(s["auto-again"], V2)
    assert s["auto-again"]["record"] == s["install-1"]["record"], s


# -- piuparts' checks, written out -----------------------------------------------------------------

def test_maintainer_scripts_twice_and_every_file_owned_once(tmp_path):
    """What piuparts checks beyond what test_deb does (every file back after remove and purge):
    each maintainer script run a second time changes nothing and fails nothing; every file of the
    package is owned by it alone, and what the scripts make (trees/, current) by no package."""
    root = make_root(tmp_path, debs())
    root.ok(APT + "install /root/shim-%s.deb" % V1)
    snap = "ls -lR --time-style=+ %s; update-alternatives --query iptables; update-alternatives --query " \
           "ip6tables; cat /var/lib/iptables-shim/alternatives" % LIBDIR
    installed = root.ok(snap)
    info = "/var/lib/dpkg/info/iptables-shim."
    # Twice each, as dpkg may run them after an interruption; the state is the installed one after.
    for script in ("preinst upgrade %s" % V1, "postinst configure %s" % V1):
        for _ in range(2):
            root.ok(info + script)
        assert root.ok(snap) == installed, script
    # prerm and postrm remove twice, then configure again: back to the installed state.
    for _ in range(2):
        root.ok(info + "prerm remove")
    assert LIBDIR not in root.ok("update-alternatives --query iptables"), "prerm left the shim registered"
    assert root.ok("ls %s" % LIBDIR).split() == sorted(
        ["shipped", "iptables-shim", "iptables", "iptables-save", "iptables-restore", "ip6tables",
         "ip6tables-save", "ip6tables-restore"]), "prerm left a tree"
    for _ in range(2):
        root.ok(info + "postrm remove")
    root.ok(info + "postinst configure %s" % V1)
    again = root.ok(snap)
    assert again.replace(" ", "") == installed.replace(" ", ""), (installed, again)
    # Owned once: every path the package lists, by this package alone.
    owners = root.ok("dpkg-query -L iptables-shim | while read -r p; do [ -d \"$p\" ] && continue; "
                     "dpkg-query -S \"$p\"; done")
    lines = owners.splitlines()
    assert lines and all(l.startswith("iptables-shim: ") for l in lines), [l for l in lines if not l.startswith("iptables-shim: ")]
    rc, out, err = root.run("dpkg-query -S %s/current %s/trees" % (LIBDIR, LIBDIR))
    assert rc != 0 and "no path found" in err, (rc, out, err)



# -- host context: in a VM ------------------------------------------------------------------------

def test_host_context_upgrades_lose_no_call():
    """The loops as the host's own callers (a chroot is never the host's context): in the bookworm
    VM of tests/vm.py (Debian's 6.1 kernel, its dpkg), PID 1's root, where the shim answers with
    the recorded default alias (legacy, step 2), in C for every call. 1 -> 2 -> 1, remove, install."""
    import vm

    share = os.path.join(test_deb.workspace().root, "deb", "upgrades-vm")
    shutil.rmtree(share, ignore_errors=True)
    os.makedirs(share)
    for version, deb in debs().items():
        shutil.copy(deb, os.path.join(share, "shim-%s.deb" % version))
    with open(os.path.join(share, "loop-body.sh"), "w") as f:
        f.write(LOOP)
    pairs = [
        ("install-1", "dpkg -i /mnt/debs/shim-%s.deb" % V1),
        ("upgrade-1-2", "dpkg -i /mnt/debs/shim-%s.deb" % V2),
        ("downgrade-2-1", "dpkg -i /mnt/debs/shim-%s.deb" % V1),
        ("remove", "dpkg -r iptables-shim"),
        ("install-2", "dpkg -i /mnt/debs/shim-%s.deb" % V2),
    ]
    script = ("update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null\n"
              "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null\n"
              "export LOOP_BODY=/mnt/debs/loop-body.sh WANT=legacy\n"
              + DRIVER.replace("$STEPS", steps(*pairs)))
    rc, out = vm.vms().run("bookworm", script, shares={"debs": share}, timeout=1500)
    assert rc == 0, out[-6000:]
    c = assert_no_call_lost(out, min_calls=4)
    report("host context (bookworm VM): 1 -> 2 -> 1, remove, install", c)
    s = states(out)
    assert_installed(s["install-1"], V1)
    assert_installed(s["upgrade-1-2"], V2)
    assert_installed(s["downgrade-2-1"], V1)
    assert_installed(s["install-2"], V2)
    for fam in ("iptables", "ip6tables"):
        assert s["remove"]["alternative-" + fam] == "/usr/sbin/%s-legacy" % fam, s["remove"]
    # The host's own calls are the C route's (step 2, from the recorded alias), through every step.
    for name in ("install-1", "upgrade-1-2", "downgrade-2-1", "install-2"):
        assert s[name]["route"].startswith("launcher"), s[name]
        assert s[name]["alias"] == "/usr/sbin/iptables-legacy -> legacy (by symlink chain)", s[name]
