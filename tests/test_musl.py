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

Mark `images` (it uses the frozen build of tests/images; the VM cases also `vm`). From scratch the
amd64 root takes ~30 s, the arm64 root and its VM ~1 min, one aarch64 boot ~15 s; the amd64 cases
~2 s. Run: `/usr/bin/python3 -m pytest -q tests/test_musl.py`.
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
    assert amd64.chroot.ok(["/usr/sbin/iptables", "-V"], netns).startswith("iptables v1.8.9 (legacy)")
    amd64.chroot.ok(["/usr/sbin/iptables", "-A", "INPUT", "-s", ADDR4, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"], netns)
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
    assert sorted(rules(netns, "legacy")) == sorted([SEED, "-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)])
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
    assert sorted(rules(netns, "legacy")) == sorted([SEED.replace("192.0.2.1", "192.0.2.2"), "-A INPUT -s %s/32 -j ACCEPT" % ADDR4])
    assert rules(netns, "nft") == [] and rules(netns, "nft", "ip6tables") == []


# -- arm64: the same root in an aarch64 VM ---------------------------------------------------------
#
# tests/vm.py boots Debian's arm64 kernel (qemu-system-aarch64, TCG) with an initramfs whose root
# is the arm64 musl root itself; a copy of it at /musl is the container the cases run in (a private
# mount and PID namespace, chroot, as above), and /seed holds Debian's glibc iptables, the machine's
# own binaries that seed each netns and read it back (tests/musl.py, Builder.vm_boot). The arm64
# frozen tree (the Workspace's cross build, dist-arm64/, as tests/test_arm64.py's) is copied in
# from a 9p share. One boot
# runs every case (~15 s), each in a netns of its own (`unshare -n`).

# As tests/test_arm64.py's switch; qemu-user runs the arm64 busybox while the root is made.
arm64_case = pytest.mark.skipif(
    os.environ.get("IPTABLES_SHIM_TEST_ARM64") == "0" or not os.path.exists("/usr/bin/qemu-aarch64-static"),
    reason="IPTABLES_SHIM_TEST_ARM64=0, or no qemu-user-static (apt-get install -y qemu-user-static)")

VM_FUNCTIONS = r"""
export LC_ALL=C
S=/opt/iptables-shim
section() { echo "=== $*"; }
machine() { chroot /seed "$@"; }
# inroot CMD...: CMD in the musl root as a container process with a container's PATH.
inroot() {
    unshare -m -p -f sh -c 'mount --bind /dev /musl/dev && mount -t proc proc /musl/proc &&
        exec chroot /musl /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"' \
        inroot "$@"
}
# shim CMD...: CMD in the root; its exit code, stdout and stderr, one line each.
shim() {
    inroot "$@" > /tmp/o 2> /tmp/e; echo "call $1 rc=$?"; sed 's/^/out: /' /tmp/o; sed 's/^/err: /' /tmp/e
}
explain() {
    inroot $S/iptables-shim explain --json > /tmp/x 2> /tmp/e; echo "explain rc=$? $(tr -d '\n' < /tmp/x)"
    sed 's/^/err: /' /tmp/e
}
# The -A lines of both backends, read with the machine's binaries (legacy only where tables exist).
readback() {
    { machine iptables-nft-save; machine ip6tables-nft-save; } 2>/dev/null | sed -n 's/^-A/nft -A/p'
    tables=$(cat /proc/net/ip_tables_names 2>/dev/null)
    [ -z "$tables" ] || machine iptables-legacy-save | sed -n 's/^-A/legacy -A/p'
    tables6=$(cat /proc/net/ip6_tables_names 2>/dev/null)
    [ -z "$tables6" ] || machine ip6tables-legacy-save | sed -n 's/^-A/legacy -A/p'
    echo "tables: $(echo $tables $tables6 | tr ' ' '\n' | sort | tr '\n' ' ')"
}
"""

W4 = " ".join(WRITE4[1:])
W6 = " ".join(WRITE6[1:])
PIPE = ("$S/iptables-save | sed s,192.0.2.1/32,192.0.2.2/32, | $S/iptables-restore && "
        "$S/ip6tables-save | sed s,2001:db8::1/128,2001:db8::2/128, | $S/ip6tables-restore")
# name: what runs in the case's own netns (after the functions above).
VM_CASES = {
    "own iptables": "shim /usr/sbin/iptables -V; shim /usr/sbin/iptables %s; readback" % W4,
    "fresh": 'a=$(readback); explain; b=$(readback); [ "$a" = "$b" ] && echo unchanged; '
             "shim $S/iptables %s; shim $S/ip6tables %s; readback" % (W4, W6),
    "legacy rules": "machine iptables-legacy %s; shim $S/iptables %s; readback" % (SEED, W4),
    "nft rules": 'machine iptables-nft %s; a=$(readback); explain; shim $S/iptables %s; shim $S/iptables-save; '
                 'b=$(readback); [ "$a" = "$b" ] && echo unchanged; readback' % (SEED, W4),
    "nft rules plain call": "machine iptables-nft %s; shim iptables -A INPUT -s %s -j ACCEPT; readback" % (SEED, ADDR4),
    "hint legacy": "machine iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; machine iptables-nft %s; explain; "
                   "shim $S/iptables %s; readback" % (SEED, W4),
    "hint nft": 'machine iptables-nft -t mangle -N KUBE-IPTABLES-HINT; machine iptables-legacy %s; a=$(readback); '
                'explain; shim $S/iptables %s; shim $S/iptables-save; b=$(readback); [ "$a" = "$b" ] && echo unchanged; '
                'readback' % (SEED, W4),
    "save restore": "machine iptables-legacy %s; machine ip6tables-legacy %s; shim $S/iptables-save; "
                    "shim sh -c '%s'; printf '*filter\\n-A INPUT -s %s/32 -j ACCEPT\\nCOMMIT\\n' | "
                    "shim $S/iptables-restore --noflush; readback" % (SEED, SEED6, PIPE.replace("$S", TREE), ADDR4),
}


def vm_script():
    parts = ["cat > /tmp/fns.sh <<'FNS_EOF'\n%s\nFNS_EOF\n. /tmp/fns.sh" % VM_FUNCTIONS,
             "mount -t proc proc /seed/proc",
             "cp -a /mnt/arm64shim/. /musl/opt/iptables-shim/",
             # What a node has loaded before any container runs (a container cannot load modules:
             # iptables-legacy's own modprobe finds no /lib/modules in there).
             "modprobe ip_tables && modprobe ip6_tables",
             'section boot; echo "machine: $(uname -m)"; echo "release: $(uname -r)"',
             # Before install: the root's own iptables, found on PATH.
             "section 'own iptables'; unshare -n sh -c '. /tmp/fns.sh; %s'" % VM_CASES["own iptables"].replace("'", "'\\''"),
             "section install; shim $S/iptables-shim install /usr/local/sbin"]
    for name, body in VM_CASES.items():
        if name != "own iptables":
            parts.append("section '%s'; unshare -n sh -c '. /tmp/fns.sh; %s'" % (name, body.replace("'", "'\\''")))
    return "\n".join(parts) + "\nexit 0\n"


class Case(object):
    """What one VM section printed: the calls (argv[0], rc, stdout and stderr lines), explain's
    report, the -A lines read back per backend, the legacy tables, whether a snapshot held."""

    __slots__ = ("calls", "explain", "explain_errors", "rules", "tables", "unchanged", "text")

    def __init__(self, text):
        self.text, self.calls, self.explain, self.explain_errors = text, [], None, []
        self.rules, self.tables, self.unchanged = {"nft": [], "legacy": []}, None, "unchanged" in text.splitlines()
        last = None
        for line in text.splitlines():
            m = re.match(r"^call (\S+) rc=(\d+)$", line)
            if m:
                last = [m.group(1), int(m.group(2)), [], []]
                self.calls.append(last)
            elif line.startswith("explain rc="):
                rc, _, report = line[len("explain rc="):].partition(" ")
                last = None
                self.explain = json.loads(report) if rc == "0" else "rc=" + rc
            elif line.startswith(("out: ", "err: ")):
                if last is None:
                    self.explain_errors.append(line)
                else:
                    last[2 if line.startswith("out") else 3].append(line[5:])
            elif line.startswith(("nft -A", "legacy -A")):
                backend, rule = line.split(" ", 1)
                self.rules[backend] = sorted(self.rules[backend] + [rule])
            elif line.startswith("tables:"):
                self.tables = line[len("tables:"):].split()

    def call(self, i, rc=0):
        """The i-th call: asserted to exit rc, and with rc 0 to say nothing on stderr."""
        name, got, out, err = self.calls[i]
        assert got == rc and (rc != 0 or err == []), (self.calls[i], self.text)
        return out, err

    def refused(self, i):
        """The i-th call was the shim's own one-line error naming iptables-nft (exit 127)."""
        out, err = self.call(i, 127)
        assert out == [] and len(err) == 1 and err[0].startswith("iptables-shim: "), self.text
        assert "iptables-nft" in err[0], err
        return err[0]


class Arm64(object):
    __slots__ = ("base", "tree")

    def __init__(self, base, tree):
        self.base, self.tree = base, tree


@pytest.fixture(scope="module")
def arm64():
    """The arm64 musl root and the arm64 frozen tree."""
    ws = Workspace.open()
    try:
        base = musl.Builder(ws).root("arm64")
        dist, _ = ws.frozen("arm64")
        yield Arm64(base, os.path.join(dist, "iptables-shim"))
    finally:
        ws.close()


@pytest.fixture(scope="module")
def arm64_vm(arm64):
    import vm

    vm.skip_unless_arm64_vm()

    ws = Workspace.open()
    try:
        boot = musl.Builder(ws).vm_boot("arm64")
        v = vm.VMs.open()
        try:
            # A disk of vm.py's kind, made here: the root is the initramfs (the blank disk is unread).
            v.disks["musl-arm64"] = vm.Disk("musl-arm64", boot.image, boot.kernel, boot.initrd, boot.release, "arm64")
            rc, out = v.run("musl-arm64", vm_script(), shares={"arm64shim": arm64.tree})
        finally:
            v.close()
    finally:
        ws.close()
    assert rc == 0, out
    return arm64.base, {name: Case(text) for name, text in vm.sections(out).items()}


@arm64_case
def test_the_arm64_musl_root_holds_no_glibc_file_with_or_without_the_tree(arm64, tmp_path):
    base = arm64.base
    assert elf.read(os.path.join(base.path, "usr/sbin/xtables-legacy-multi")).machine == "aarch64"
    assert glibc_findings(base.path, base.loader) == []
    root = str(tmp_path / "root")
    shutil.copytree(base.path, root, symlinks=True)
    shutil.rmtree(os.path.join(root, "opt/iptables-shim"))
    shutil.copytree(arm64.tree, os.path.join(root, "opt/iptables-shim"), symlinks=True)
    assert elf.read(os.path.join(root, "opt/iptables-shim/iptables-shim")).machine == "aarch64"
    assert glibc_findings(root, base.loader, resolve_under=("/usr/", "/lib/", "/bin/", "/sbin/")) == []


@arm64_case
@pytest.mark.vm
def test_arm64_vm_boots_the_arm64_kernel_and_the_roots_own_iptables_works(arm64_vm):
    base, cases = arm64_vm
    boot = cases["boot"].text
    assert "machine: aarch64" in boot and re.search(r"release: \S+-arm64", boot), boot
    own = cases["own iptables"]
    assert own.call(0)[0][0].startswith("iptables v1.8.9 (legacy)")
    own.call(1)
    assert own.rules == {"nft": [], "legacy": ["-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)]}


@arm64_case
@pytest.mark.vm
def test_arm64_install_into_usr_local_sbin(arm64_vm):
    arm64_vm[1]["install"].call(0)


@arm64_case
@pytest.mark.vm
def test_arm64_fresh_netns_legacy_and_detection_changes_nothing(arm64_vm):
    c = arm64_vm[1]["fresh"]
    assert c.explain_errors == [] and isinstance(c.explain, dict), c.text
    assert c.explain["decision"]["backend"] == "legacy" and c.explain["context"]["value"] == "container", c.text
    assert c.unchanged, c.text
    c.call(0)
    c.call(1)
    assert c.rules["nft"] == [] and len(c.rules["legacy"]) == 2, c.text


@arm64_case
@pytest.mark.vm
def test_arm64_legacy_rules_present(arm64_vm):
    c = arm64_vm[1]["legacy rules"]
    c.call(0)
    assert c.rules == {"nft": [], "legacy": sorted([SEED, "-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)])}


@arm64_case
@pytest.mark.vm
@pytest.mark.parametrize("name,seeded", [("nft rules", {"nft": [SEED], "legacy": []}),
                                         ("hint nft", {"nft": [], "legacy": [SEED]})])
def test_arm64_nft_decided_is_refused_and_nothing_written(arm64_vm, name, seeded):
    c = arm64_vm[1][name]
    assert isinstance(c.explain, dict) and c.explain["decision"]["backend"] == "nft", c.text
    assert "iptables-nft" in c.explain["runs"], c.explain["runs"]
    c.refused(0)
    c.refused(1)
    assert c.unchanged and c.rules == seeded, c.text


@arm64_case
@pytest.mark.vm
def test_arm64_nft_rules_a_plain_call_through_path_is_refused_too(arm64_vm):
    c = arm64_vm[1]["nft rules plain call"]
    c.refused(0)
    assert c.rules == {"nft": [SEED], "legacy": []} and c.tables == [], c.text


@arm64_case
@pytest.mark.vm
def test_arm64_hint_in_legacy_beats_nft_rules(arm64_vm):
    c = arm64_vm[1]["hint legacy"]
    assert isinstance(c.explain, dict) and c.explain["decision"]["backend"] == "legacy", c.text
    c.call(0)
    assert c.rules == {"nft": [SEED], "legacy": ["-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)]}


@arm64_case
@pytest.mark.vm
def test_arm64_save_restore_passthrough_with_stdin(arm64_vm):
    c = arm64_vm[1]["save restore"]
    saved = c.call(0)[0]
    assert [l for l in saved if l.startswith("-A ")] == [SEED] and "COMMIT" in saved, c.text
    assert c.call(1)[0] == []
    c.call(2)
    assert c.rules == {"nft": [], "legacy": sorted([SEED.replace("192.0.2.1", "192.0.2.2"), "-A INPUT -s %s/32 -j ACCEPT" % ADDR4,
                                                   SEED6.replace("::1/", "::2/")])}, c.text
