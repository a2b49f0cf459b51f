"""The frozen shim in a musl-only root (SPEC "Images and libcs": the tree needs nothing from the
image but a Linux kernel): no glibc file anywhere in the root, the frozen tree copied in at
/opt/iptables-shim and installed there, then the core cases run through it, each read back from
the kernel with this machine's own iptables-legacy-save / iptables-nft-save in that netns.

The root (tests/musl.py) is Debian's musl, busybox-static and netbase, and bookworm's iptables
built for musl. Debian serves no source of libmnl or libnftnl, so its iptables is legacy only and
its default names are the legacy variant: a case whose rules are in nft must end in the shim's
one-line error naming the missing nft binary, with nothing written anywhere (never a fallback to
legacy), and `explain` must say nft.

The chroot is entered as tests/rootfs.py's ChrootContainer enters its roots (a private mount and
PID namespace, /dev and a fresh /proc mounted inside it, then chroot), but nothing of the machine
is bind-mounted into it: every program that runs in there is the root's own. Every case has a
netns of its own (the `netns` fixture), seeded from outside with the machine's binaries.

The shim is called by the path of its tree (/opt/iptables-shim/iptables): a shell that cannot
execute a program found on PATH goes on searching PATH (busybox ash does), so a plain `iptables`
through a tree that cannot start silently runs the root's own iptables instead. One case calls it
plainly, through the installed /usr/local/sbin, and shows what that costs.

Mark `images` (it uses the frozen build of tests/images). From scratch the amd64 root takes about
15-40 s (downloads, configure, make); cached, nothing.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

import elf
import musl
from images import Workspace
from rootfs import ADDR4, ADDR6, MARK, landed
from shim_output import shim_error_line

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chroot, mount and PID namespaces, netns"),
    pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make") and shutil.which("dpkg-source")),
                       reason="needs gcc, make and dpkg-dev to build iptables for musl"),
]

TREE = "/opt/iptables-shim"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The shim by its tree's path: see the module docstring.
SHIM = {name: TREE + "/" + name for name in ("iptables", "ip6tables", "iptables-save", "iptables-restore",
                                             "ip6tables-save", "ip6tables-restore", "iptables-shim")}
WRITE4 = [SHIM["iptables"], "-A", "INPUT", "-s", ADDR4, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]
WRITE6 = [SHIM["ip6tables"], "-A", "INPUT", "-s", ADDR6, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]
SEED = "-A FORWARD -s 192.0.2.1/32 -j DROP"
SEED6 = "-A FORWARD -s 2001:db8::1/128 -j DROP"

# Runs as PID 1 of the new PID namespace, in the private mount namespace, on the machine's root.
ENTER = r"""
set -e
root=$1; shift
/usr/bin/mount --bind /dev "$root/dev"
/usr/bin/mount -t proc proc "$root/proc"
exec /usr/sbin/chroot "$root" "$@"
"""

# glibc's own file names (its sonames are elf.GLIBC_SONAMES): none may be in a musl root.
GLIBC_FILES = re.compile(r"^(ld-linux[-\w]*\.so\.\d+|ld64\.so\.\d+|lib[a-z_]+-2\.\d+\.so|ld-2\.\d+\.so)$")


class MuslChroot(object):
    """A copy of a musl root (this module's own), and the way into it."""

    __slots__ = ("root", "arch")

    def __init__(self, root, arch):
        self.root, self.arch = root, arch

    def run(self, cmd, netns, input=None, env=None, timeout=60):
        argv = ["/usr/bin/nsenter", "--net=" + netns.path, "/usr/bin/unshare", "--mount", "--pid", "--fork",
                "/bin/sh", "-c", ENTER, "enter", self.root] + list(cmd)
        full = {"PATH": PATH, "LC_ALL": "C"}
        full.update(env or {})
        return subprocess.run(argv, env=full, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)

    def sh(self, script, netns, **kw):
        return self.run(["/bin/sh", "-c", script], netns, **kw)

    def ok(self, cmd, netns, **kw):
        """cmd must succeed and say nothing on stderr (the shim writes nothing of its own there)."""
        r = self.run(cmd, netns, **kw)
        assert (r.returncode, r.stderr) == (0, b""), (cmd, r.returncode, r.stdout, r.stderr)
        return r.stdout.decode()

    def explain(self, netns, family="iptables"):
        r = self.run([SHIM["iptables-shim"], "explain", "--json", "--family", family], netns)
        assert (r.returncode, r.stderr) == (0, b""), (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout.decode())


# -- what is in a root -----------------------------------------------------------------------------

def glibc_findings(root, loader, resolve_under=("/",)):
    """Everything in root that is glibc or needs it: a glibc file name, an ELF file whose
    interpreter is not musl's loader, or that needs a glibc soname or symbol version; and, for
    files under resolve_under, a DT_NEEDED found nowhere in musl's library path of the root (its
    /etc/ld-musl-ARCH.path). [] when clean."""
    with open(os.path.join(root, "etc", os.path.basename(loader)[:-len(".so.1")] + ".path")) as f:
        libdirs = [l.strip() for l in f if l.strip()]
    found = []
    for d, dirs, files in os.walk(root):
        found += ["%s: a glibc file name" % os.path.join(d, n)[len(root):] for n in files + dirs
                  if GLIBC_FILES.match(n) or elf.GLIBC_SONAMES.match(n)]
    programs = elf.elf_files(root)
    assert programs, "no ELF file in %s" % root
    for path in programs:
        rel = path[len(root):]
        e = elf.read(path)
        if e.interp is not None and e.interp != loader:
            found.append("%s: interpreter %s" % (rel, e.interp))
        if e.glibc_versions():
            found.append("%s: needs glibc versions %s" % (rel, sorted(set(e.glibc_versions()))[-1:]))
        for lib in e.needed:
            if elf.GLIBC_SONAMES.match(lib):
                found.append("%s: needs %s" % (rel, lib))
            elif rel.startswith(resolve_under) and not any(
                    os.path.exists(os.path.join(root, l.lstrip("/"), lib)) for l in libdirs):
                found.append("%s: needs %s, not in %s" % (rel, lib, libdirs))
    return found


# -- fixtures --------------------------------------------------------------------------------------

class Setup(object):
    __slots__ = ("ws", "base", "chroot", "install")

    def __init__(self, ws, base, chroot, install):
        self.ws, self.base, self.chroot, self.install = ws, base, chroot, install


def make_setup(ws, base, tree, workdir, netns_factory):
    """A copy of the cached root under workdir with the frozen tree at /opt/iptables-shim, and the
    outcome of `iptables-shim install /usr/local/sbin` run in it (asserted by its own test, so
    that every other case shows its own failure when the tree cannot start)."""
    root = os.path.join(workdir, "root")
    shutil.copytree(base.path, root, symlinks=True)
    os.rmdir(os.path.join(root, TREE.lstrip("/")))
    shutil.copytree(tree, os.path.join(root, TREE.lstrip("/")), symlinks=True)
    chroot = MuslChroot(root, base.arch)
    with netns_factory() as ns:
        install = chroot.run([SHIM["iptables-shim"], "install", "/usr/local/sbin"], ns)
    ws.log("musl %s: iptables-shim install: rc=%d %s" % (base.arch, install.returncode, install.stderr.decode().strip()))
    return Setup(ws, base, chroot, install)


@pytest.fixture(scope="module")
def amd64(tmp_path_factory):
    from namespaces import Netns

    ws = Workspace.open()
    try:
        base = musl.Builder(ws).root("amd64")
        dist, _ = ws.frozen()
        yield make_setup(ws, base, os.path.join(dist, "iptables-shim"), str(tmp_path_factory.mktemp("musl-amd64")),
                         Netns.create)
    finally:
        ws.close()


def rules(netns, backend, family="iptables"):
    return netns.rules(backend, family)


# -- the root itself -------------------------------------------------------------------------------

def test_the_musl_root_holds_no_glibc_file(amd64):
    assert glibc_findings(amd64.base.path, amd64.base.loader) == []
    sbin = os.path.join(amd64.base.path, "usr/sbin")
    assert elf.read(os.path.join(sbin, "xtables-legacy-multi")).interp == "/lib/ld-musl-x86_64.so.1"
    assert os.readlink(os.path.join(sbin, "iptables")) == "xtables-legacy-multi"
    assert not [n for n in os.listdir(sbin) if "nft" in n], os.listdir(sbin)


def test_the_roots_own_iptables_writes_legacy_rules(amd64, netns):
    """The root is sound without the shim: its iptables (musl) writes where it says."""
    assert amd64.chroot.ok(["iptables", "-V"], netns).startswith("iptables v1.8.9 (legacy)")
    amd64.chroot.ok(["iptables", "-A", "INPUT", "-s", ADDR4, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"], netns)
    assert landed(netns) == {"nft": [], "legacy": ["-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)]}


def test_with_the_frozen_tree_the_root_still_holds_no_glibc_file(amd64):
    """The tree needs nothing of the image: no loader, no libc, nothing of glibc."""
    root = amd64.chroot.root
    assert glibc_findings(root, amd64.base.loader, resolve_under=("/usr/", "/lib/", "/bin/", "/sbin/")) == []


def test_install_into_usr_local_sbin(amd64):
    r = amd64.install
    assert (r.returncode, r.stderr) == (0, b""), (r.returncode, r.stdout, r.stderr)
    local = os.path.join(amd64.chroot.root, "usr/local/sbin")
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        assert os.path.realpath(os.path.join(local, name)).endswith(TREE + "/iptables-shim"), name


# -- the core cases, through the frozen tree ------------------------------------------------------

def test_fresh_netns_the_images_alias_legacy_and_detection_changes_nothing(amd64, netns):
    before = netns.snapshot()
    report = amd64.chroot.explain(netns)
    assert netns.snapshot() == before
    assert report["context"]["value"] == "container", report["context"]
    assert report["decision"]["backend"] == "legacy", report["decision"]
    amd64.chroot.ok(WRITE4, netns)
    amd64.chroot.ok(WRITE6, netns)
    where = landed(netns)
    assert where["nft"] == [] and len(where["legacy"]) == 2, where
    assert ADDR4 in where["legacy"][0] and ADDR6 in where["legacy"][1], where


def test_legacy_rules_present(amd64, netns):
    netns.ok("iptables-legacy %s" % SEED)
    amd64.chroot.ok(WRITE4, netns)
    assert rules(netns, "legacy") == [SEED, "-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)]
    assert rules(netns, "nft") == []


def assert_nft_refused(setup, netns, seeded):
    """The decision is nft, the root has no nft binary: explain says so, a write is the shim's own
    one-line error naming iptables-nft, and nothing changes in either backend."""
    before = netns.snapshot()
    report = setup.chroot.explain(netns)
    assert report["decision"]["backend"] == "nft", report["decision"]
    assert report["runs"].startswith("error: ") and "iptables-nft" in report["runs"], report["runs"]
    for cmd in (WRITE4, [SHIM["iptables-save"]]):
        line = shim_error_line(setup.chroot.run(cmd, netns))
        assert "iptables-nft" in line.split(":", 1)[1], line
    assert netns.snapshot() == before
    assert seeded(), "the seeded rules changed"


def test_nft_rules_present_is_refused_not_written_to_legacy(amd64, netns):
    netns.ok("iptables-nft %s" % SEED)
    assert_nft_refused(amd64, netns, lambda: rules(netns, "nft") == [SEED] and netns.legacy_tables() == [])


def test_nft_rules_present_a_plain_call_through_path_is_refused_too(amd64, netns):
    """As callers run it: `iptables` found on PATH (the installed /usr/local/sbin first). A tree
    that cannot start lets the shell run /usr/sbin/iptables, legacy, behind it."""
    netns.ok("iptables-nft %s" % SEED)
    r = amd64.chroot.sh("iptables -A INPUT -s %s -j ACCEPT" % ADDR4, netns)
    line = shim_error_line(r)
    assert "iptables-nft" in line, line
    assert netns.legacy_tables() == [] and rules(netns, "nft") == [SEED]


def test_hint_in_legacy_beats_nft_rules(amd64, netns):
    netns.ok("iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; iptables-nft %s" % SEED)
    assert amd64.chroot.explain(netns)["decision"]["backend"] == "legacy"
    amd64.chroot.ok(WRITE4, netns)
    assert rules(netns, "legacy") == ["-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)]
    assert rules(netns, "nft") == [SEED]


def test_hint_in_nft_beats_legacy_rules_and_is_refused(amd64, netns):
    netns.ok("iptables-nft -t mangle -N KUBE-IPTABLES-HINT; iptables-legacy %s" % SEED)
    assert_nft_refused(amd64, netns, lambda: rules(netns, "legacy") == [SEED] and rules(netns, "nft") == [])


def test_save_restore_passthrough_with_stdin(amd64, netns):
    netns.ok("iptables-legacy %s; ip6tables-legacy %s" % (SEED, SEED6))
    saved = amd64.chroot.ok([SHIM["iptables-save"]], netns)
    assert [l for l in saved.splitlines() if l.startswith("-A ")] == [SEED]
    assert "*filter" in saved and "COMMIT" in saved
    # A pipe from save to restore, as `iptables-save | sed | iptables-restore` scripts do.
    script = ("{s} | sed 's,192.0.2.1/32,192.0.2.2/32,' | {r} && {s6} | sed 's,2001:db8::1/128,2001:db8::2/128,' | {r6}"
              .format(s=SHIM["iptables-save"], r=SHIM["iptables-restore"], s6=SHIM["ip6tables-save"],
                      r6=SHIM["ip6tables-restore"]))
    r = amd64.chroot.sh(script, netns)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), (r.returncode, r.stdout, r.stderr)
    assert rules(netns, "legacy") == [SEED.replace("192.0.2.1", "192.0.2.2")]
    assert rules(netns, "legacy", "ip6tables") == [SEED6.replace("::1/", "::2/")]
    # stdin from the caller, straight into the real restore.
    amd64.chroot.ok([SHIM["iptables-restore"], "--noflush"], netns,
                    input=("*filter\n-A INPUT -s %s/32 -j ACCEPT\nCOMMIT\n" % ADDR4).encode())
    assert rules(netns, "legacy") == [SEED.replace("192.0.2.1", "192.0.2.2"), "-A INPUT -s %s/32 -j ACCEPT" % ADDR4]
    assert rules(netns, "nft") == [] and rules(netns, "nft", "ip6tables") == []
