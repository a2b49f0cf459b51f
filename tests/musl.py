"""musl-only roots for the frozen shim (tests/test_musl.py): no glibc file anywhere, as in an
Alpine image with its iptables-legacy package.

Per architecture (amd64, arm64), a root made of Debian's own packages only: `musl` (the loader
/lib/ld-musl-ARCH.so.1 and libc.so, unchanged), `busybox-static` (/bin/sh and the other applets,
as symlinks), `netbase` (/etc/protocols, /etc/services, /etc/ethertypes: what iptables reads for
`-p tcp`), and bookworm's iptables 1.8.9 (`apt-get source`) built against that musl. Debian's mirror
serves no source of libmnl or libnftnl, so iptables is built with --disable-nftables: the root has
the legacy variant only, and its default names (`iptables`, ...) are that variant, as the legacy
package of a musl distribution makes them (SPEC "How to test for real", "Other libcs").

The compiler is Debian's gcc driven by a specs file of its own (what musl-tools' musl-gcc does, with
the paths of a sysroot extracted here): the headers and start files of the arch's `musl-dev`, the
kernel headers of its `linux-libc-dev`, the programs dynamically linked against musl's libc.so with
PT_INTERP /lib/ld-musl-ARCH.so.1. For arm64 the gcc is Debian's cross gcc-12-aarch64-linux-gnu
(extracted, not installed); the result is checked under qemu-aarch64-static before anyone boots it.

Packages come from a private apt configuration (lists, archives and sources under the cache; both
architectures; the machine's dpkg architectures and apt state untouched): `apt-get download` and
`apt-get source --download-only`, then `dpkg -x` / `dpkg-source -x`. Nothing is installed.

Cached in $IPTABLES_SHIM_TEST_CACHE/musl (default /var/cache/iptables-shim-tests/musl), one root per
architecture, keyed on the recipe (the package lists, configure flags, specs, LAYOUT) and the
architecture: a changed recipe builds again. The stamp beside a root also names every .deb and .dsc that went in. IPTABLES_SHIM_TEST_FRESH=1
builds in the Workspace's temporary cache (tests/images). Steps and durations go to logs/images.log.
Measured from scratch on this 2-core machine (private apt lists, downloads, configure, make,
assemble): amd64 root ~30 s, arm64 root 20-45 s, the aarch64 VM's kernel and initramfs ~15-40 s.

By hand: `/usr/bin/python3 tests/musl.py amd64 arm64` prints the roots' paths.
"""

import gzip
import hashlib
import itertools
import os
import shutil
import stat
import time

import debootstrap

SUITE = "bookworm"
# Bump when how a root or a VM boot is put together changes (beyond the constants below, which
# are part of the key): cached roots are rebuilt.
LAYOUT = "1"
ARCHS = ("amd64", "arm64")
TRIPLET = {"amd64": "x86_64-linux-musl", "arm64": "aarch64-linux-musl"}
GNU = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
LOADER = {"amd64": "/lib/ld-musl-x86_64.so.1", "arm64": "/lib/ld-musl-aarch64.so.1"}
EM = {"amd64": 62, "arm64": 183}
# Of the target architecture: the root's own files, and the compiler's headers and start files.
TARGET_DEBS = ("musl", "musl-dev", "linux-libc-dev", "busybox-static", "netbase")
ARCH_ALL = ("netbase",)
# Of this machine (amd64), for arm64: Debian's cross compiler, extracted.
CROSS_DEBS = ("gcc-12-aarch64-linux-gnu", "cpp-12-aarch64-linux-gnu", "binutils-aarch64-linux-gnu",
              "libgcc-12-dev-arm64-cross", "libgcc-s1-arm64-cross")
CONFIGURE = ("--prefix=/usr", "--sbindir=/usr/sbin", "--disable-nftables", "--disable-libipq")
# Not copied into the root: iptables-apply is a bash script (no bash here); the rest is for builds.
LEFT_OUT = ("iptables-apply", "ip6tables-apply")
ROOT_DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "opt/iptables-shim", "usr/local/sbin", "usr/local/bin")

# The aarch64 VM (tests/test_musl.py): Debian's arm64 kernel and, in its initramfs, the musl root as
# the VM's own root, a second copy of it at /musl (the chroot the cases run in), and at /seed a
# glibc Debian root of iptables and kmod: the machine's own binaries, which seed rules and read them
# back, and the modprobe the kernel calls (the musl root has no nft variant to seed nft with).
KERNEL_META = "linux-image-arm64"
SEED_DEBS = ("libc6", "iptables", "libip4tc2", "libip6tc2", "libxtables12", "libmnl0", "libnftnl11",
             "libnetfilter-conntrack3", "libnfnetlink0", "netbase", "kmod", "libkmod2", "liblzma5", "libzstd1",
             "libssl3")
# Enough of the kernel's modules for netfilter (both backends) and the 9p shares of tests/vm.py.
VM_MODULES = ("kernel/net", "kernel/fs/9p", "kernel/fs/netfs", "kernel/fs/fscache", "kernel/drivers/virtio",
              "kernel/lib", "kernel/crypto")
# PID 1 in the initramfs: index the modules with the machine's depmod, bring up the PCI transport
# of the 9p shares (a module in Debian's arm64 kernel: its initrd would load it), then vm.py's init.
VM_INIT = """#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
chroot /seed /sbin/depmod -a "$(uname -r)"
modprobe virtio_pci
umount /proc
exec /shim-vm-init
"""
# The kernel's module helper (/proc/sys/kernel/modprobe is /sbin/modprobe): Debian's, in /seed.
VM_MODPROBE = """#!/bin/sh
exec /usr/sbin/chroot /seed /sbin/modprobe "$@"
"""

# Debian's musl-gcc.specs with the sysroot's paths ({s}: sysroot, {t}: triplet, {k}: kernel headers).
SPECS = """%rename cpp_options old_cpp_options

*cpp_options:
-nostdinc -isystem {s}/usr/include/{t} -isystem {k} -isystem include%s %(old_cpp_options)

*cc1:
%(cc1_cpu) -nostdinc -isystem {s}/usr/include/{t} -isystem {k} -isystem include%s

*link_libgcc:
-L{s}/lib/{t} -L{s}/usr/lib/{t} -L .%s

*libgcc:
libgcc.a%s %:if-exists(libgcc_eh.a%s)

*startfile:
%{{!shared: {s}/usr/lib/{t}/Scrt1.o}} {s}/usr/lib/{t}/crti.o crtbeginS.o%s

*endfile:
crtendS.o%s {s}/usr/lib/{t}/crtn.o

*link:
-dynamic-linker {loader} -nostdlib %{{shared:-shared}} %{{static:-static}} %{{rdynamic:-export-dynamic}}
"""


def recipe_key(what):
    """The cache key of a root ("amd64", "arm64") or of a VM boot ("vm-arm64"): what goes in."""
    parts = (LAYOUT, SUITE, what, TARGET_DEBS, CROSS_DEBS, CONFIGURE, LEFT_OUT, ROOT_DIRS, SPECS)
    if what.startswith("vm-"):
        parts += (KERNEL_META, SEED_DEBS, VM_MODULES, VM_INIT, VM_MODPROBE)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


class Root(object):
    """A built musl root: its directory, architecture, loader path, and the stamp's key."""

    __slots__ = ("path", "arch", "loader", "key")

    def __init__(self, path, arch, key):
        self.path, self.arch, self.loader, self.key = path, arch, LOADER[arch], key


class Boot(object):
    """What tests/vm.py boots for a musl VM: kernel, initramfs, a blank disk (vm.py attaches one;
    nothing reads it), the kernel release."""

    __slots__ = ("kernel", "initrd", "image", "release")

    def __init__(self, kernel, initrd, image, release):
        self.kernel, self.initrd, self.image, self.release = kernel, initrd, image, release


class Builder(object):
    """The musl part of a Workspace (tests/images): its directories and its private apt."""

    def __init__(self, ws):
        self.ws = ws
        self.top = os.path.join(ws.root, "musl")
        # amd64 native, arm64 beside it, and the sources (apt-get source iptables).
        self.apt = debootstrap.PrivateApt(ws, os.path.join(self.top, "apt"), SUITE, ("amd64", "arm64"), "musl",
                                          sources=True).run

    def download(self, names, arch, into):
        """The .deb files of names for arch, in `into` (emptied first): their paths."""
        shutil.rmtree(into, ignore_errors=True)
        os.makedirs(into)
        self.apt("apt-get", ["download"] + ["%s:%s" % (n, "all" if n in ARCH_ALL else arch) for n in names],
                 "musl: apt-get download %s (%s)" % (",".join(names)[:24], arch), cwd=into)
        return sorted(os.path.join(into, n) for n in os.listdir(into) if n.endswith(".deb"))

    def deb(self, debs, name):
        found = [d for d in debs if os.path.basename(d).startswith(name + "_")]
        assert len(found) == 1, (name, debs)
        return found[0]

    def source(self):
        """bookworm's iptables source (downloaded once): the .dsc path."""
        src = os.path.join(self.top, "src")
        dsc = [n for n in os.listdir(src) if n.endswith(".dsc")] if os.path.isdir(src) else []
        if not dsc:
            shutil.rmtree(src, ignore_errors=True)
            os.makedirs(src)
            self.apt("apt-get", ["source", "--download-only", "iptables"], "musl: apt-get source iptables", cwd=src)
            dsc = [n for n in os.listdir(src) if n.endswith(".dsc")]
        assert len(dsc) == 1, dsc
        return os.path.join(src, dsc[0])

    # -- one architecture ------------------------------------------------------------------------
    def root(self, arch):
        """The musl root of arch, built unless the cache holds one of this recipe."""
        if arch not in ARCHS:
            raise ValueError("arch %r: one of %s" % (arch, ARCHS))
        key = recipe_key(arch)
        path = os.path.join(self.top, "roots", arch)
        stamp = path + ".stamp"
        if os.path.exists(stamp) and open(stamp).read().split("\n")[0] == key and os.path.isdir(path):
            self.ws.log("musl root %s cached (%s)" % (arch, key))
            return Root(path, arch, key)
        t0 = time.monotonic()
        work = os.path.join(self.top, "build-" + arch)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        debs = self.download(TARGET_DEBS, arch, os.path.join(self.top, "debs", arch))
        inputs = [os.path.basename(d) for d in debs]
        env = dict(os.environ, LC_ALL="C")
        cc = ["gcc"]
        if arch != "amd64":
            cross = self.download(CROSS_DEBS, "amd64", os.path.join(self.top, "debs", "cross-" + arch))
            inputs += [os.path.basename(d) for d in cross]
            tc = os.path.join(self.top, "toolchain-" + arch)
            shutil.rmtree(tc, ignore_errors=True)
            for d in cross:
                self.ws.run(["dpkg", "-x", d, tc], what="musl: dpkg -x " + os.path.basename(d))
            # The extracted cross binutils find their own libbfd/libopcodes only through this.
            env["LD_LIBRARY_PATH"] = os.path.join(tc, "usr", "lib", "x86_64-linux-gnu")
            cc = [os.path.join(tc, "usr", "bin", GNU[arch] + "-gcc-12")]
        cc += ["-specs", self.sysroot(arch, debs, work)]
        dsc = self.source()
        inputs.append(os.path.basename(dsc))
        src = os.path.join(work, "iptables")
        self.ws.run(["dpkg-source", "--no-check", "-x", dsc, src], what="musl: dpkg-source -x iptables")
        # --host: the loader is not on this machine, so configure must not run what it compiles.
        configure = ["./configure", "--build=x86_64-linux-gnu", "--host=" + TRIPLET[arch],
                     "--libdir=/usr/lib/" + TRIPLET[arch], "CC=" + " ".join(cc)] + list(CONFIGURE)
        self.ws.run(configure, what="musl: iptables configure (%s)" % arch, cwd=src, env=env)
        self.ws.run(["make", "-j%d" % (os.cpu_count() or 2)], what="musl: iptables make (%s)" % arch, cwd=src, env=env)
        staged = os.path.join(work, "staged")
        self.ws.run(["make", "install", "DESTDIR=" + staged], what="musl: iptables make install", cwd=src, env=env)
        new = path + ".new"
        shutil.rmtree(new, ignore_errors=True)
        os.makedirs(new)
        self.assemble(arch, new, debs, staged)
        self.verify(arch, new)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(new, path)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(os.path.join(self.top, "toolchain-" + arch), ignore_errors=True)  # extracted again when needed
        with open(stamp, "w") as f:
            f.write(key + "\n" + "\n".join(inputs) + "\n")
        self.ws.log("musl root %s built in %.1f s (%s)" % (arch, time.monotonic() - t0, key))
        return Root(path, arch, key)

    def sysroot(self, arch, debs, work):
        """musl-dev's headers and start files, musl's libc.so and the kernel headers, extracted; the
        specs file pointing there (its path)."""
        s = os.path.join(work, "sysroot")
        for name in ("musl", "musl-dev", "linux-libc-dev"):
            self.ws.run(["dpkg", "-x", self.deb(debs, name), s], what="musl: dpkg -x %s (%s)" % (name, arch))
        # musl-gcc needs the kernel's headers beside musl's: linux, asm-generic and the arch's asm.
        k = os.path.join(work, "kernel-headers")
        os.makedirs(k)
        for name, target in (("linux", "linux"), ("asm-generic", "asm-generic"), ("asm", GNU[arch] + "/asm")):
            os.symlink(os.path.join(s, "usr", "include", target), os.path.join(k, name))
        specs = os.path.join(work, "musl.specs")
        with open(specs, "w") as f:
            f.write(SPECS.format(s=s, t=TRIPLET[arch], k=k, loader=LOADER[arch]))
        return specs

    def assemble(self, arch, root, debs, staged):
        """The root: musl, busybox and netbase as Debian ships them, then iptables' programs and
        libraries; no documentation."""
        for name in ("musl", "busybox-static", "netbase"):
            self.ws.run(["dpkg", "-x", self.deb(debs, name), root], what="musl: dpkg -x %s into the root" % name)
        for d in ROOT_DIRS:
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        # busybox's own list of its applets (run under qemu-user for arm64: it is static).
        runner = [] if arch == "amd64" else ["qemu-aarch64-static"]
        applets = self.ws.run(runner + [os.path.join(root, "bin", "busybox"), "--list-full"],
                              what="musl: busybox --list-full (%s)" % arch).stdout.decode().split()
        for applet in applets:
            link = os.path.join(root, applet.lstrip("/"))
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink("/bin/busybox", link)
        for d in ("usr/sbin", "usr/lib/" + TRIPLET[arch]):
            for dirpath, dirs, files in os.walk(os.path.join(staged, d)):
                rel = os.path.relpath(dirpath, staged)
                if "pkgconfig" in rel.split(os.sep):
                    continue
                os.makedirs(os.path.join(root, rel), exist_ok=True)
                for n in files + [x for x in dirs if os.path.islink(os.path.join(dirpath, x))]:
                    if n in LEFT_OUT or n.endswith(".la"):
                        continue
                    src = os.path.join(dirpath, n)
                    dst = os.path.join(root, rel, n)
                    if os.path.islink(src):
                        os.symlink(os.readlink(src), dst)
                    else:
                        shutil.copy2(src, dst)
        # Dangling now: their targets were left out.
        for n in LEFT_OUT:
            if os.path.lexists(os.path.join(root, "usr/sbin", n)):
                os.unlink(os.path.join(root, "usr/sbin", n))
        shutil.rmtree(os.path.join(root, "usr", "share", "doc"), ignore_errors=True)
        shutil.rmtree(os.path.join(root, "usr", "share", "man"), ignore_errors=True)

    def verify(self, arch, root):
        """The root's own iptables starts (natively in a chroot for amd64, under qemu-user with the
        root as its library root for arm64) and is the legacy variant."""
        if arch == "amd64":
            cmd = ["chroot", root, "/usr/sbin/iptables", "-V"]
        else:
            cmd = ["qemu-aarch64-static", "-L", root, os.path.join(root, "usr/sbin/iptables"), "-V"]
        out = self.ws.run(cmd, what="musl: iptables -V in the %s root" % arch, env={"PATH": "/usr/sbin:/bin"}).stdout.decode()
        assert out.startswith("iptables v1.8") and "(legacy)" in out, out
        self.ws.log("musl root %s: %s" % (arch, out.strip()))


    # -- the aarch64 VM ----------------------------------------------------------------------------
    def vm_boot(self, arch="arm64"):
        """The kernel and initramfs of a VM whose root is the musl root of arch (see VM_INIT)."""
        base = self.root(arch)
        key = recipe_key("vm-" + arch)
        out = os.path.join(self.top, "vm-" + arch)
        stamp = out + ".stamp"
        boot = lambda release: Boot(os.path.join(out, "vmlinuz"), os.path.join(out, "initrd.gz"),
                                    os.path.join(out, "blank.img"), release)
        if os.path.exists(stamp):
            words = open(stamp).read().split()
            if words[:2] == [key, base.key] and os.path.isdir(out):
                self.ws.log("musl vm %s cached (%s)" % (arch, key))
                return boot(words[2])
        t0 = time.monotonic()
        show = self.apt("apt-cache", ["show", "--no-all-versions", "%s:%s" % (KERNEL_META, arch)],
                        "musl: apt-cache show " + KERNEL_META).stdout.decode()
        kernel_pkg = [l.split(":", 1)[1].split()[0] for l in show.splitlines() if l.startswith("Depends:")][0]
        debs = self.download((kernel_pkg,) + SEED_DEBS, arch, os.path.join(self.top, "debs", "vm-" + arch))
        work = os.path.join(self.top, "build-vm-" + arch)
        shutil.rmtree(work, ignore_errors=True)
        tree = os.path.join(work, "tree")
        shutil.copytree(base.path, tree, symlinks=True)
        shutil.copytree(base.path, os.path.join(tree, "musl"), symlinks=True)
        seed = os.path.join(tree, "seed")
        for d in debs:
            if not os.path.basename(d).startswith(kernel_pkg + "_"):
                self.ws.run(["dpkg", "-x", d, seed], what="musl vm: dpkg -x " + os.path.basename(d)[:40])
        for d in ("proc", "dev", "run", "tmp"):
            os.makedirs(os.path.join(seed, d), exist_ok=True)
        kx = os.path.join(work, "kernel")
        self.ws.run(["dpkg", "-x", self.deb(debs, kernel_pkg), kx], what="musl vm: dpkg -x " + kernel_pkg)
        releases = os.listdir(os.path.join(kx, "lib", "modules"))
        assert len(releases) == 1, releases
        release = releases[0]
        modules = os.path.join(kx, "lib", "modules", release)
        target = os.path.join(seed, "lib", "modules", release)
        for d in VM_MODULES:
            shutil.copytree(os.path.join(modules, d), os.path.join(target, d))
        for n in os.listdir(modules):
            if n.startswith("modules.") and os.path.isfile(os.path.join(modules, n)):
                shutil.copy(os.path.join(modules, n), target)
        os.symlink("/seed/lib/modules", os.path.join(tree, "lib", "modules"))
        for name, text in (("init", VM_INIT), ("sbin/modprobe", VM_MODPROBE)):
            p = os.path.join(tree, name)
            if os.path.lexists(p):
                os.unlink(p)
            with open(p, "w") as f:
                f.write(text)
            os.chmod(p, 0o755)
        import vm

        vm._write_init(tree)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        shutil.copyfile(os.path.join(kx, "boot", "vmlinuz-" + release), os.path.join(out, "vmlinuz"))
        with open(os.path.join(out, "blank.img"), "wb") as f:
            f.truncate(1 << 20)
        size = write_cpio(tree, os.path.join(out, "initrd.gz"))
        shutil.rmtree(work, ignore_errors=True)
        with open(stamp, "w") as f:
            f.write("%s %s %s\n%s\n" % (key, base.key, release, "\n".join(os.path.basename(d) for d in debs)))
        self.ws.log("musl vm %s: %s, initramfs %.1f MiB, built in %.1f s" % (
            arch, release, size / 1048576.0, time.monotonic() - t0))
        return boot(release)


def write_cpio(tree, path):
    """tree as a gzip'd newc cpio archive (the kernel's initramfs format), owned by root, with
    /dev/console (the kernel opens it for PID 1 before anything is mounted). Its size."""
    inodes = itertools.count(1)

    def header(name, mode, size, rdev=(0, 0)):
        # c_ino, c_mode, c_uid, c_gid, c_nlink, c_mtime, c_filesize, c_devmajor, c_devminor,
        # c_rdevmajor, c_rdevminor, c_namesize, c_check
        fields = (next(inodes), mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        data = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
        return data + b"\0" * (-len(data) % 4)

    with gzip.open(path, "wb", compresslevel=6) as out:
        for d, dirs, files in os.walk(tree):
            dirs.sort()
            for n in sorted(dirs + files):
                p = os.path.join(d, n)
                rel = os.path.relpath(p, tree)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    body = os.readlink(p).encode()
                elif stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as f:
                        body = f.read()
                else:
                    body = b""
                out.write(header(rel, st.st_mode, len(body)) + body + b"\0" * (-len(body) % 4))
        out.write(header("dev/console", stat.S_IFCHR | 0o600, 0, rdev=(5, 1)))
        out.write(header("TRAILER!!!", 0, 0))
    return os.path.getsize(path)


if __name__ == "__main__":
    import sys

    from images import Workspace

    ws = Workspace.open()
    try:
        b = Builder(ws)
        for a in sys.argv[1:] or ["amd64"]:
            print(b.vm_boot("arm64").initrd if a == "vm" else b.root(a).path)
    finally:
        ws.close()
