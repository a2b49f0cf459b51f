"""The .deb (packaging/deb.sh) installed with apt-get into a real Debian bookworm root, and lintian.

The root is test_alternatives' (debootstrap minbase with iptables, ufw and python3-minimal; an
overlay per test over the cached tree, entered with private mount and PID namespaces, /proc and
/dev mounted there, then chroot): `apt-get install ./iptables-shim_*.deb` runs the package's own
maintainer scripts. ufw, which runs /usr/sbin/iptables by full path, then goes through the shim:
its rules land in the backend the netns already holds (nft) although the machine's alternative
was legacy. `apt-get remove` and `purge` give back `update-alternatives --query` byte for byte and
every file of the root (type, mode, size, content of /etc, /var, /run, /lib/systemd) but dpkg's
and apt's own logs and database. ufw only ever runs in a named netns made here.

The frozen tree is the image tests' (tests/images Workspace.frozen(): cached, rebuilt when shim/ or
packaging/ change, from scratch in CI); the bookworm root is cached as test_alternatives says.
From scratch, beyond those two: the .deb in ~10 s, lintian ~10 s, each install/remove round ~10 s.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO
from images import Workspace, elf_machine
import test_alternatives as alt

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, mounts, chroot, netns"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb"),
]

DEB_SH = os.path.join(REPO, "packaging", "deb.sh")
LIBDIR = "/usr/lib/iptables-shim"
_SHARED = {}


def workspace():
    """tests/images' Workspace (in CI, the run's one fresh workspace, removed at its end)."""
    if "ws" not in _SHARED:
        _SHARED["ws"] = Workspace.open()
    return _SHARED["ws"]


def frozen_tree(arch="amd64"):
    """The frozen tree for arch, dist/iptables-shim of the workspace (built there, or cached)."""
    if arch not in _SHARED:
        dist, key = workspace().frozen(arch)
        _SHARED[arch] = (os.path.join(dist, "iptables-shim"), key)
    return _SHARED[arch][0]


def built_deb(arch="amd64"):
    """The path of the .deb packaging/deb.sh makes of the frozen tree (its SBOM beside it)."""
    if "deb-" + arch not in _SHARED:
        tree = frozen_tree(arch)
        out = os.path.join(workspace().root, "deb", arch)
        shutil.rmtree(out, ignore_errors=True)
        r = workspace().run([DEB_SH, "--tree", tree, "--out", out], what="packaging/deb.sh " + arch)
        _SHARED["deb-" + arch] = r.stdout.decode().strip()
    return _SHARED["deb-" + arch]


@pytest.fixture(scope="module")
def deb():
    return built_deb()


# -- the package as built --------------------------------------------------------------------------

def test_package_holds_the_tree_whole_and_depends_on_iptables(deb):
    tree = frozen_tree()
    arch = {62: "amd64", 183: "arm64"}[elf_machine(os.path.join(tree, "iptables-shim"))]
    version = [l.split('"')[1] for l in open(os.path.join(REPO, "pyproject.toml")) if l.startswith("version = ")][0]
    assert os.path.basename(deb) == "iptables-shim_%s_%s.deb" % (version, arch)
    field = lambda name: subprocess.run(["dpkg-deb", "-f", deb, name], stdout=subprocess.PIPE,
                                        check=True).stdout.decode().strip()
    assert field("Architecture") == arch
    # iptables, and the C library only where the tree's own files are linked against it.
    dynamic = subprocess.run("find %s -type f -exec readelf -d {} + 2>/dev/null | grep -F '(NEEDED)' | "
                             "grep -c 'libc\\.so\\.6'" % tree, shell=True, stdout=subprocess.PIPE).stdout.strip()
    if dynamic == b"0":
        assert field("Depends") == "iptables"
    else:
        assert re.fullmatch(r"libc6 \(>= 2\.\d+\), iptables", field("Depends")), field("Depends")
    listing = subprocess.run(["dpkg-deb", "-c", deb], stdout=subprocess.PIPE, check=True).stdout.decode()
    packaged = {l.split(None, 5)[5].split(" -> ")[0][1:].rstrip("/") for l in listing.splitlines()}
    # The tree whole in shipped/, and beside it the seven names, each a link through `current`
    # (docs/packaging.md#upgrades).
    shipped = LIBDIR + "/shipped"
    names = sorted(n for n in os.listdir(tree) if os.path.islink(os.path.join(tree, n))) + ["iptables-shim"]
    assert len(names) == 7, names
    assert {p for p in packaged if p.startswith(LIBDIR + "/")} == {shipped} | {
        shipped + "/" + os.path.relpath(os.path.join(d, n), tree)
        for d, dirs, files in os.walk(tree) for n in dirs + files} | {LIBDIR + "/" + n for n in names}
    for n in names:
        assert "%s/%s -> current/%s" % (LIBDIR, n, n) in listing, n
    for unit in ("iptables-shim-doctor.service", "iptables-shim-doctor.timer"):
        assert "/lib/systemd/system/" + unit in packaged
    assert os.path.exists(os.path.join(os.path.dirname(deb), "iptables-shim_%s_%s.cdx.json" % (version, arch)))


def assert_lintian_clean(deb):
    if shutil.which("lintian") is None:
        pytest.skip("needs lintian (.ci/setup installs it)")
    r = subprocess.run(["lintian", "--fail-on", "error,warning", "--display-info", "--tag-display-limit", "0", deb],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = r.stdout.decode()
    tags = [l for l in out.splitlines() if re.match(r"[EW]: ", l) or re.search(r": (unused|mismatched)-override ", l)]
    assert r.returncode == 0 and tags == [], out


def test_lintian_clean(deb):
    """No error and no warning; the overrides shipped in the package say why each does not apply,
    and each is used."""
    assert_lintian_clean(deb)


def test_arm64_package(tmp_path):
    """The cross-compiled aarch64 tree (tests/test_arm64.py's) gives iptables-shim_V_arm64.deb,
    as clean, its SBOM naming aarch64 files."""
    deb = built_deb("arm64")
    assert deb.endswith("_arm64.deb")
    assert subprocess.run(["dpkg-deb", "-f", deb, "Architecture"], stdout=subprocess.PIPE).stdout == b"arm64\n"
    assert subprocess.run(["dpkg-deb", "-f", deb, "Depends"], stdout=subprocess.PIPE).stdout == b"iptables\n"
    assert_lintian_clean(deb)
    x = str(tmp_path / "x")
    subprocess.run(["dpkg-deb", "-x", deb, x], check=True)
    assert elf_machine(os.path.join(x, LIBDIR.lstrip("/"), "shipped", "iptables-shim")) == 183
    sbom = json.load(open(os.path.join(x, "usr", "share", "doc", "iptables-shim", "sbom.cdx.json")))
    machines = {p["value"] for c in sbom["components"] if c["type"] == "file" for p in c["properties"]}
    assert machines == {"aarch64"}, machines


def test_architecture_from_the_elf_header_and_bad_trees_refused(tmp_path):
    """An aarch64 ELF header gives an arm64 package, the same twice over; anything that is not a
    tree, one line."""
    tree = tmp_path / "tree"
    tree.mkdir()
    exe = tree / "iptables-shim"
    data = bytearray(open("/bin/true", "rb").read())
    data[18:20] = (183).to_bytes(2, "little")
    exe.write_bytes(bytes(data))
    exe.chmod(0o755)
    for n in ("iptables", "ip6tables-save"):
        (tree / n).symlink_to("iptables-shim")
    made = []
    for out in (tmp_path / "again", tmp_path / "out"):
        r = subprocess.run([DEB_SH, "--tree", str(tree), "--out", str(out), "--version", "9.8.7"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"))
        assert r.returncode == 0, r.stderr.decode()
        deb = r.stdout.decode().strip()
        made.append(open(deb, "rb").read())
    assert made[0] == made[1]  # the same tree and time: the same package, byte for byte
    assert os.path.basename(deb) == "iptables-shim_9.8.7_arm64.deb"
    assert subprocess.run(["dpkg-deb", "-f", deb, "Architecture"], stdout=subprocess.PIPE).stdout == b"arm64\n"

    data[18:20] = (40).to_bytes(2, "little")  # ARM (32-bit)
    exe.write_bytes(bytes(data))
    for args in (["--tree", str(tree)], ["--tree", str(tmp_path / "missing")], ["--tree", "/etc"], [],
                 ["--frobnicate"]):
        r = subprocess.run([DEB_SH, "--out", str(out)] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = r.stderr.decode()
        assert r.returncode != 0 and r.stdout == b"" and len(err.splitlines()) == 1, (args, err)
        assert err.startswith("deb.sh: "), err
    assert sorted(os.listdir(str(out))) == ["iptables-shim_9.8.7_arm64.cdx.json", "iptables-shim_9.8.7_arm64.deb"]


# -- installed into a bookworm root ----------------------------------------------------------------

# Everything in the root but what apt and dpkg keep about themselves: path, type, mode, size,
# link target; and the content of every file where configuration and state live.
SNAPSHOT = r"""
find / -xdev \( -path /opt/iptables-shim -o -path /proc -o -path /dev \) -prune -o \
    \( -type d -printf 'd %m %p\n' \) -o \( -type l -printf 'l %p -> %l\n' \) -o \
    \( -type f -printf 'f %m %s %p\n' \) -o -printf '%y %m %p\n'
find /etc /var /run /root /lib/systemd /usr/local -xdev -type f -exec sha256sum {} +
"""
# apt's and dpkg's own bookkeeping: logs, caches, the package database.
BOOKKEEPING = re.compile(r"(/var/log/|/var/cache/(apt|debconf|ldconfig)/|/var/lib/apt/|/tmp/|"
                         r"/var/lib/dpkg/(status|status-old|available|lock|lock-frontend|triggers/|info/format)\b)")
DPKG_RECORD = re.compile(r"/var/lib/dpkg/info/iptables-shim\.")
# What ufw itself writes when enabled and given a rule: the caller's state, not the package's.
UFW_STATE = re.compile(r"/etc/ufw/|/run/ufw\.lock")


def snapshot(root, *also_ignore):
    lines = set()
    for line in root.ok(SNAPSHOT).splitlines():
        if BOOKKEEPING.search(line) or any(r.search(line) for r in also_ignore):
            continue
        lines.add(line)
    return lines


def assert_same(before, after):
    assert sorted(after - before) == [] and sorted(before - after) == [], (
        "appeared or changed: %s\nvanished or changed: %s" % (sorted(after - before), sorted(before - after)))


@pytest.fixture(scope="module")
def bookworm():
    base, tree, fresh = alt._tree()
    yield tree
    if fresh:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def root(bookworm, deb, tmp_path):
    r = alt.Root(bookworm, str(tmp_path / "root"))
    os.makedirs(os.path.join(r.upper, "root"), exist_ok=True)
    shutil.copy(deb, os.path.join(r.upper, "root"))
    r.deb = "/root/" + os.path.basename(deb)
    # ufw's sysctl file is left out (IPT_SYSCTL empty): these tests are about its rules.
    r.ok("sed -i 's|^IPT_SYSCTL=.*|IPT_SYSCTL=|' /etc/default/ufw")
    return r


APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q "


def installed_alternatives(root):
    out = root.ok("readlink -f /usr/sbin/iptables /usr/sbin/iptables-save /usr/sbin/ip6tables-restore "
                  "%s/iptables-shim; readlink %s/current" % (LIBDIR, LIBDIR))
    # Through the package's own links and `current` into the versioned tree (docs/packaging.md#upgrades).
    *real, current = out.split()
    assert re.fullmatch(r"trees/[^/]+-[0-9a-f]{12}", current), out
    assert real == ["%s/%s/iptables-shim" % (LIBDIR, current)] * 4, out
    return root.query()


def test_install_routes_ufw_through_the_shim_and_remove_puts_everything_back(root, netns):
    """Manual legacy before: after remove, and again after purge, the alternatives and the files
    are exactly as before."""
    root.ok("update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null; "
            "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null")
    before_query, before_files = root.query(), snapshot(root, UFW_STATE)
    assert "Status: manual\nBest: /usr/sbin/iptables-nft\nValue: /usr/sbin/iptables-legacy\n" in before_query

    out = root.ok(APT + "install " + root.deb)
    assert "iptables alternative: %s/iptables (registered)" % LIBDIR in out, out
    query = installed_alternatives(root)
    # Above iptables' own priorities (nft 20, legacy 10), and chosen by hand as legacy was.
    assert "Status: manual\nBest: %s/iptables\nValue: %s/iptables\n" % (LIBDIR, LIBDIR) in query, query
    assert re.search(r"Alternative: %s/iptables\nPriority: (\d+)" % LIBDIR, query).group(1) == "100"
    # The audit timer is enabled, as Debian enables a packaged unit.
    assert root.ok("readlink /etc/systemd/system/timers.target.wants/iptables-shim-doctor.timer").strip() == \
        "/lib/systemd/system/iptables-shim-doctor.timer"

    # ufw, by full path and with ufw-init's own PATH, in a netns whose rules are in nft: they land
    # in nft, though the machine's alternative (the shim's default alias) is legacy.
    root.assert_ufw_lands_in(netns, "nft", "192.0.2.7")

    root.ok(APT + "remove iptables-shim")
    assert root.query() == before_query
    # dpkg keeps its record of a removed package with a postrm (state rc) until purge: nothing else.
    assert_same(before_files, snapshot(root, UFW_STATE, DPKG_RECORD))
    assert root.ok("dpkg-query -W -f '${db:Status-Abbrev}' iptables-shim").strip() == "rc"
    root.ok(APT + "purge iptables-shim")
    assert root.query() == before_query
    assert_same(before_files, snapshot(root, UFW_STATE))


def test_auto_mode_purged_directly_is_auto_again(root):
    root.ok("update-alternatives --auto iptables >/dev/null; update-alternatives --auto ip6tables >/dev/null")
    before_query, before_files = root.query(), snapshot(root)
    assert "Status: auto\n" in before_query
    root.ok(APT + "install " + root.deb)
    assert "Status: auto\nBest: %s/iptables\n" % LIBDIR in installed_alternatives(root)
    # A reinstall over itself changes nothing (the maintainer scripts are idempotent).
    installed = root.query()
    out = root.ok(APT + "install --reinstall " + root.deb)
    assert "(already this shim)" in out and root.query() == installed, out
    root.ok(APT + "purge iptables-shim")
    assert root.query() == before_query
    assert_same(before_files, snapshot(root))


def test_remove_keeps_a_choice_made_since_and_leaves_nothing_into_the_tree(root):
    """The administrator chose nft by hand after the install: `uninstall --alternatives` refuses
    to undo that, so prerm removes only the shim's entries; remove still succeeds."""
    root.ok("update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null")
    root.ok(APT + "install " + root.deb)
    root.ok("update-alternatives --set iptables /usr/sbin/iptables-nft >/dev/null")
    rc, out, err = root.run(APT + "purge iptables-shim")
    assert rc == 0, (out, err)
    query = root.query()
    assert LIBDIR not in query, query
    assert "Name: iptables\nLink: /usr/sbin/iptables\n" in query
    assert "Status: manual\nBest: /usr/sbin/iptables-nft\nValue: /usr/sbin/iptables-nft\n" in query, query
    # ip6tables, which still selected the shim, goes back to auto mode (docs/packaging.md).
    assert "Name: ip6tables\nLink: /usr/sbin/ip6tables\n" in query
    assert "Status: auto\nBest: /usr/sbin/ip6tables-nft\nValue: /usr/sbin/ip6tables-nft\n" in query, query
    assert root.ok("ls -d /var/lib/iptables-shim %s 2>/dev/null || echo gone" % LIBDIR).strip() == "gone"
