"""Debian's own modular kernels under qemu (TCG): the VM harness of tests/test_vm_kernels.py.

Per suite (bullseye 5.10: no netns cookie; bookworm 6.1; trixie 6.12), one debootstrap minbase tree
with the suite's kernel, iptables, nftables and python3-minimal, made into an ext4 disk
(`mkfs.ext4 -d`), with the kernel and initrd copied beside it. A boot mounts that disk as a
throw-away snapshot (qemu `snapshot=on`: the disk is never changed), the project read-only over 9p
at /opt/iptables-shim, and a job directory read-write over 9p at /job; the init (/shim-vm-init, a
shell script) runs /job/script.sh with its output in /job/out, then powers off. A boot costs about
20-40 s under TCG, so tests batch many scenarios into one script: `run_in_vm(suite, script)`.

Variants, prepared in the init before anything can load a module: "nolegacy" deletes the legacy
x_tables modules (ip_tables, ip6_tables, iptable_*, ip6table_*) from the VM's /lib/modules,
"nonft" deletes nf_tables and nft_*; each installs module indexes made at build time by depmod on
the reduced set, so the VM looks exactly like a kernel built without that backend. The disk is a
snapshot, so the deletions vanish with the boot.

Cache: $IPTABLES_SHIM_TEST_CACHE/vm (default /var/cache/iptables-shim-tests/vm), one stamp per
suite. IPTABLES_SHIM_TEST_FRESH=1 (.ci/run) builds in a temporary directory removed at the end
(`close()`), so CI builds from scratch. Build steps and boot times go to logs/vm.log there.

arm64 (tests/test_arm64.py): `disk(name, arch="arm64", tree=TREE)` makes the disk from a tree built
elsewhere (tests/debroot.py: Debian's arm64 .debs extracted, its kernel, modules and a small
initrd), and boots it with qemu-system-aarch64 (`-M virt`, cortex-a57, TCG, console ttyAMA0).
Such a disk has no variants (they need the tree's own depmod, which would run emulated).

Run by hand: `/usr/bin/python3 tests/vm.py build bookworm` or
`/usr/bin/python3 tests/vm.py run bookworm 'uname -r; cat /proc/modules'`, and for a tree
`/usr/bin/python3 tests/vm.py run-tree arm64 TREE 'uname -m'`.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import debootstrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CACHE = "/var/cache/iptables-shim-tests"
SUITES = ("bullseye", "bookworm", "trixie")
PACKAGES = "linux-image-amd64,initramfs-tools,kmod,iptables,nftables,iproute2,util-linux,python3-minimal"
# Bump when the tree's customisation (init, variants) changes: cached disks are rebuilt.
LAYOUT = "1"

# Per architecture: the emulator and its machine, the serial console's name in the kernel.
QEMU = {
    "amd64": (["qemu-system-x86_64", "-accel", "tcg"], "ttyS0"),
    # cortex-a57 rather than max: max adds features (pointer authentication) that TCG emulates slowly.
    # No NIC (the tests need none; a PCI NIC would want ipxe's option ROM, not installed with
    # --no-install-recommends).
    "arm64": (["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-nic", "none"], "ttyAMA0"),
}
SHIM_MOUNT = "/opt/iptables-shim"

# Module files removed per variant (basename without .ko*), matched by shell glob in the init and
# by fnmatch at build time.
VARIANTS = {
    "nolegacy": ("ip_tables", "ip6_tables", "iptable_*", "ip6table_*"),
    "nonft": ("nf_tables", "nft_*"),
}

INIT = r"""#!/bin/sh
# PID 1 of a test VM (tests/vm.py): mount what a test needs, prepare the variant, run the job, power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
variant=
shares=
for word in $(cat /proc/cmdline); do
    case "$word" in
        shim.variant=*) variant=${word#shim.variant=} ;;
        shim.shares=*) shares=$(echo "${word#shim.shares=}" | tr , ' ') ;;
    esac
done
# 9p first: on 5.10 its transport is a module, and a variant must not remove what loads it.
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
mkdir -p /opt/iptables-shim /job
mount -t 9p -o trans=virtio,version=9p2000.L,ro shim /opt/iptables-shim
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /job
for tag in $shares; do
    mkdir -p /mnt/$tag && mount -t 9p -o trans=virtio,version=9p2000.L,ro $tag /mnt/$tag
done
rel=$(uname -r)
if [ -n "$variant" ]; then
    for pattern in $(cat /usr/lib/shim-vm/$variant.patterns); do
        find /lib/modules/$rel -name "$pattern.ko*" -delete
    done
    cp /usr/lib/shim-vm/$variant/modules.* /lib/modules/$rel/
fi
echo "shim-vm: $(uname -r) variant=${variant:-none} ready $(cut -d' ' -f1 /proc/uptime)" > /dev/console
cd /tmp
/bin/sh /job/script.sh > /job/out 2>&1 < /dev/null
echo $? > /job/rc
echo "shim-vm: done $(cut -d' ' -f1 /proc/uptime)" > /dev/console
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


class VMError(AssertionError):
    pass


class Disk(object):
    """A built suite: the ext4 image, its kernel and initrd, the kernel release, the architecture."""

    __slots__ = ("suite", "image", "kernel", "initrd", "release", "arch")

    def __init__(self, suite, image, kernel, initrd, release, arch="amd64"):
        self.suite, self.image, self.kernel, self.initrd, self.release = suite, image, kernel, initrd, release
        self.arch = arch


class VMs(object):
    """The cache directory of built disks, and the way to boot them."""

    def __init__(self, root, fresh):
        self.root = root
        self.fresh = fresh
        self.logfile = os.path.join(root, "logs", "vm.log")
        for d in ("trees", "debs", "disks", "logs", "jobs"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.disks = {}
        self.log("vm cache %s (fresh=%s)" % (root, fresh))

    @classmethod
    def open(cls):
        if os.environ.get("IPTABLES_SHIM_TEST_FRESH") == "1":
            return cls(tempfile.mkdtemp(prefix="iptables-shim-vm-", dir="/var/tmp"), True)
        return cls(os.path.join(os.environ.get("IPTABLES_SHIM_TEST_CACHE", DEFAULT_CACHE), "vm"), False)

    def close(self):
        if self.fresh:
            keep = os.path.join(DEFAULT_CACHE, "vm-logs", "vm-fresh-%s.log" % time.strftime("%Y%m%dT%H%M%S"))
            os.makedirs(os.path.dirname(keep), exist_ok=True)
            shutil.copyfile(self.logfile, keep)
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self, msg):
        debootstrap.log_line(self.logfile, "vm", msg)

    def _run(self, cmd, what, timeout=1800, **kw):
        t0 = time.monotonic()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, **kw)
        self.log("%-50s rc=%d %7.1f s" % (what[:50], r.returncode, time.monotonic() - t0))
        if r.returncode != 0:
            raise VMError("%s failed (%d):\n%s" % (what, r.returncode, r.stdout[-4000:].decode("utf-8", "replace")))
        return r.stdout.decode("utf-8", "replace")

    # -- building ------------------------------------------------------------------------------
    def stamp(self, suite):
        return os.path.join(self.root, "disks", suite + ".stamp")

    def disk(self, suite, arch="amd64", tree=None):
        """The built Disk of a suite, building it if the cache has none (or an older layout).
        With `tree`, the disk is made from that debootstrap tree (for `arch`) instead of one of
        its own; it is made again when the tree's build stamp (build.sh's) changes."""
        if suite in self.disks:
            return self.disks[suite]
        if arch not in QEMU or (arch != "amd64" and tree is None):
            raise ValueError("arch %r: amd64, or arm64 with a tree" % arch)
        stamp = self.stamp(suite)
        want = [LAYOUT, arch] + ([_tree_key(tree)] if tree else [])
        ok = False
        if os.path.exists(stamp):
            with open(stamp) as f:
                words = f.read().split()
            ok = len(words) == len(want) + 1 and words[:1] + words[2:] == want
            if not tree and len(words) == 2 and words[0] == LAYOUT:
                ok = True  # an amd64 stamp of before the arch field
        if not ok:
            if tree:
                self.build_from_tree(suite, tree, arch)
            else:
                self.build(suite)
        with open(stamp) as f:
            release = f.read().split()[1]
        base = os.path.join(self.root, "disks", suite)
        disk = Disk(suite, base + ".img", base + ".vmlinuz", base + ".initrd", release, arch)
        self.disks[suite] = disk
        return disk

    def start_tree(self, suite):
        """Start debootstrap for a suite's tree (None if one is already there): the downloads of
        the three suites overlap when started together."""
        return debootstrap.start(suite, os.path.join(self.root, "trees", suite), PACKAGES, self.root,
                                 os.path.join(self.root, "logs", "debootstrap-%s.log" % suite), self.log)

    def finish_tree(self, run):
        debootstrap.finish(run, 3600, self.log, VMError)

    def build(self, suite):
        t0 = time.monotonic()
        self.finish_tree(self.start_tree(suite))
        tree = os.path.join(self.root, "trees", suite)
        release = _release(suite, tree)
        self._customize(tree, release)
        self._make_disk(suite, tree, release, [LAYOUT, release, "amd64"])
        self.log("built %s (%s) in %.1f s" % (suite, release, time.monotonic() - t0))

    def build_from_tree(self, name, tree, arch):
        """A disk from a tree made elsewhere (build.sh's arm64 build root): only the init is added
        to it; the tree is otherwise left as it is (it is still a build root)."""
        t0 = time.monotonic()
        release = _release(name, tree)
        _write_init(tree)
        self._make_disk(name, tree, release, [LAYOUT, release, arch, _tree_key(tree)])
        self.log("built %s (%s, %s, from %s) in %.1f s" % (name, release, arch, tree, time.monotonic() - t0))

    def _make_disk(self, suite, tree, release, stamp):
        base = os.path.join(self.root, "disks", suite)
        shutil.copyfile(os.path.join(tree, "boot", "vmlinuz-" + release), base + ".vmlinuz")
        shutil.copyfile(os.path.join(tree, "boot", "initrd.img-" + release), base + ".initrd")
        if os.path.exists(base + ".img"):
            os.unlink(base + ".img")
        size = int(self._run(["du", "-sm", tree], "du " + suite).split()[0]) + 400
        self._run(["mkfs.ext4", "-q", "-F", "-L", "shimvm", "-d", tree, base + ".img", "%dM" % size],
                  "mkfs.ext4 -d %s (%d MiB)" % (suite, size))
        with open(self.stamp(suite), "w") as f:
            f.write(" ".join(stamp) + "\n")

    def _customize(self, tree, release):
        """The init, and per variant the module indexes of the reduced module set (made by the
        tree's own depmod on a copy of the module tree made of hard links)."""
        _write_init(tree)
        # Space the tests do not need.
        for d in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
            shutil.rmtree(os.path.join(tree, d), ignore_errors=True)
        data = os.path.join(tree, "usr", "lib", "shim-vm")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        import fnmatch

        modules = os.path.join(tree, "lib", "modules", release)
        for variant, patterns in VARIANTS.items():
            with open(os.path.join(data, variant + ".patterns"), "w") as f:
                f.write("\n".join(patterns) + "\n")
            work = os.path.join(tree, "tmp", "variant")
            shutil.rmtree(work, ignore_errors=True)
            target = os.path.join(work, "lib", "modules", release)
            removed = []

            def skip(d, names):
                gone = [n for n in names if ".ko" in n and any(fnmatch.fnmatch(n.split(".ko")[0], p) for p in patterns)]
                removed.extend(gone)
                return gone

            shutil.copytree(modules, target, symlinks=True, copy_function=os.link, ignore=skip)
            if not removed:
                raise VMError("variant %s removed nothing from %s" % (variant, release))
            self._run(["chroot", tree, "depmod", "-b", "/tmp/variant", release], "depmod %s %s" % (variant, release))
            os.makedirs(os.path.join(data, variant))
            for name in os.listdir(target):
                if name.startswith("modules.") and os.path.isfile(os.path.join(target, name)):
                    shutil.copyfile(os.path.join(target, name), os.path.join(data, variant, name))
            shutil.rmtree(work)
            self.log("variant %s: %d module files removed" % (variant, len(removed)))

    # -- booting -------------------------------------------------------------------------------
    def run(self, suite, script, variant=None, timeout=900, memory=1024, shares=None):
        """Boot the suite's kernel fresh, run `script` (sh) as root in it, return (rc, output).
        The project is at /opt/iptables-shim (read-only); /job is a scratch directory shared with
        the host; shares {tag: host directory} are mounted read-only at /mnt/TAG."""
        if variant is not None and variant not in VARIANTS:
            raise ValueError("unknown variant %r" % variant)
        disk = self.disk(suite)
        job = tempfile.mkdtemp(prefix="%s-" % suite, dir=os.path.join(self.root, "jobs"))
        try:
            with open(os.path.join(job, "script.sh"), "w") as f:
                f.write(script)
            console = os.path.join(job, "console.log")
            qemu, tty = QEMU[disk.arch]
            append = "root=/dev/vda rw console=%s init=/shim-vm-init panic=-1 quiet loglevel=3" % tty
            if variant:
                append += " shim.variant=" + variant
            shares = dict(shares or {})
            if shares:
                append += " shim.shares=" + ",".join(sorted(shares))
            cmd = qemu + ["-m", str(memory), "-smp", "1",
                   "-display", "none", "-monitor", "none", "-serial", "file:" + console, "-no-reboot",
                   "-kernel", disk.kernel, "-initrd", disk.initrd,
                   "-drive", "file=%s,format=raw,if=virtio,snapshot=on" % disk.image,
                   "-virtfs", "local,path=%s,mount_tag=shim,security_model=none,readonly=on" % REPO,
                   "-virtfs", "local,path=%s,mount_tag=job,security_model=none" % job,
                   "-append", append]
            for tag, path in sorted(shares.items()):
                cmd[-2:-2] = ["-virtfs", "local,path=%s,mount_tag=%s,security_model=none,readonly=on" % (path, tag)]
            t0 = time.monotonic()
            try:
                subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise VMError("%s VM timed out after %d s; console:\n%s" % (suite, timeout, _tail(console)))
            took = time.monotonic() - t0
            if not os.path.exists(os.path.join(job, "rc")):
                raise VMError("%s VM ended without running the job (%.0f s); console:\n%s" % (suite, took, _tail(console)))
            with open(os.path.join(job, "rc")) as f:
                rc = int(f.read().strip() or "255")
            with open(os.path.join(job, "out"), "rb") as f:
                out = f.read().decode("utf-8", "replace")
            ready = [l for l in _read(console).splitlines() if l.startswith("shim-vm:")]
            self.log("boot %s%s: %.1f s in all; %s" % (suite, "/" + variant if variant else "", took, " | ".join(ready)))
            return rc, out
        finally:
            shutil.rmtree(job, ignore_errors=True)


def skip_unless_arm64_vm():
    """Skip the calling test (fixture) where the aarch64 VM is off or cannot run here."""
    import pytest

    if os.environ.get("IPTABLES_SHIM_TEST_ARM64_VM") == "0":
        pytest.skip("IPTABLES_SHIM_TEST_ARM64_VM=0: the aarch64 VM is off")
    if not os.path.exists("/usr/bin/qemu-system-aarch64"):
        pytest.skip("needs qemu-system-arm (apt-get install -y --no-install-recommends qemu-system-arm)")


def _release(suite, tree):
    releases = sorted(os.listdir(os.path.join(tree, "lib", "modules")))
    if len(releases) != 1:
        raise VMError("%s: expected one kernel, found %s" % (suite, releases))
    return releases[0]


def _write_init(tree):
    with open(os.path.join(tree, "shim-vm-init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(tree, "shim-vm-init"), 0o755)


def _tree_key(tree):
    """What identifies a tree made elsewhere: its build stamp's change time (tests/debroot.py
    writes it last, and a remade tree writes it again)."""
    st = os.stat(os.path.join(tree, ".iptables-shim-build-root"))
    return "%d" % st.st_ctime_ns


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path, n=60):
    return "\n".join(_read(path).splitlines()[-n:])


_vms = []


def vms():
    """The process-wide VMs (opened once)."""
    if not _vms:
        _vms.append(VMs.open())
    return _vms[0]


def run_in_vm(suite, script, variant=None, **kw):
    """Boot `suite` fresh, run `script`; its output (stdout and stderr). A non-zero exit of the
    script raises VMError with the output."""
    rc, out = vms().run(suite, script, variant, **kw)
    if rc != 0:
        raise VMError("script exited %d in %s VM:\n%s" % (rc, suite, out[-6000:]))
    return out


def sections(out):
    """{name: text} of the output's `=== name` sections (a batched script prints one per scenario)."""
    found, name, lines = {}, None, []
    for line in out.splitlines():
        if line.startswith("=== "):
            if name is not None:
                found[name] = "\n".join(lines)
            name, lines = line[4:].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        found[name] = "\n".join(lines)
    return found


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "build":
        v = vms()
        procs = [v.start_tree(s) for s in sys.argv[2:]]
        for p in procs:
            v.finish_tree(p)
        for s in sys.argv[2:]:
            v.disk(s)
        v.close()
    elif len(sys.argv) == 5 and sys.argv[1] == "run-tree":
        arch, tree = sys.argv[2], os.path.abspath(sys.argv[3])
        v = vms()
        v.disk("tree-" + arch, arch=arch, tree=tree)
        rc, out = v.run("tree-" + arch, sys.argv[4])
        sys.stdout.write(out)
        sys.exit(rc)
    elif len(sys.argv) >= 4 and sys.argv[1] == "run":
        variant = sys.argv[4] if len(sys.argv) > 4 else None
        rc, out = vms().run(sys.argv[2], sys.argv[3], variant)
        sys.stdout.write(out)
        sys.exit(rc)
    else:
        sys.exit("usage: vm.py build SUITE... | run SUITE SCRIPT [VARIANT] | run-tree ARCH TREE SCRIPT")
