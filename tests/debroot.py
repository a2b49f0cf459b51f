"""A Debian root for a VM of tests/vm.py, assembled from Debian's .debs on this machine: nothing
runs emulated but one depmod (qemu-user), no maintainer script runs (tests/test_arm64.py).

The packages and everything they Depend or Pre-Depend on (no Recommends), as apt resolves them
against an empty dpkg status, from a private apt configuration (lists, sources, status and
preferences under the cache; the target architecture as its only one: the machine's dpkg
architectures and apt state untouched): `apt-get install --simulate` names them, `apt-get
download` fetches them, `dpkg -x` extracts each into the root. What their postinsts would have done
and the root needs is done by hand: the alternatives' links (`update-alternatives --install` read
from each postinst: iptables -> /etc/alternatives/iptables -> iptables-nft, awk -> mawk), the
module indexes (the root's own depmod under qemu-user-static).

The kernel is the suite's `linux-image-ARCH` image package alone (its Depends, initramfs-tools and
linux-base, only make an initrd and run hooks) with all its modules; the initrd is made here: a
static busybox (Debian's busybox-static, not in the root) that insmods what mounts the ext4 disk
(INITRD_MODULES and what they depend on, from the root's modules.dep), mounts root= and
switch_roots to init= (vm.py's /shim-vm-init). The tree is what vm.py's `disk(name, arch, tree)`
makes its disk from (boot/vmlinuz-R, boot/initrd.img-R, lib/modules/R, the stamp it keys on).

Kept while the stamp (STAMP, written last) holds the recipe's key: suite, architecture, packages,
LAYOUT and the initrd's recipe. Steps and durations go to the Workspace's logs/images.log.

By hand: `/usr/bin/python3 tests/debroot.py TREE bullseye arm64 iptables,nftables,...`.
"""

import hashlib
import os
import re
import shutil
import time

import debootstrap
import musl

# Bump when how a root is put together changes: cached roots are rebuilt.
LAYOUT = "1"
STAMP = ".iptables-shim-build-root"  # tests/vm.py keys the disk on it (_tree_key)
QEMU_USER = {"arm64": "qemu-aarch64-static"}
INITRD_DEBS = ("busybox-static",)
# virtio_pci: the virt machine's disk and 9p shares (a module in Debian's kernels); crc32c: ext4's
# metadata checksums (mkfs.ext4's default), which ext4 asks the crypto API for at mount.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
INITRD_INIT = """#!/bin/busybox sh
# PID 1 of the initramfs (tests/debroot.py): load what mounts the disk, mount it, hand over.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs devtmpfs /dev
for m in $($B cat /modules); do $B insmod /$m || echo "initrd: insmod $m failed" > /dev/console; done
root=/dev/vda init=/sbin/init mode=ro
for w in $($B cat /proc/cmdline); do
    case "$w" in root=*) root=${w#root=} ;; init=*) init=${w#init=} ;; rw) mode=rw ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 200 ]; do $B sleep 0.05; i=$((i+1)); done
$B mount -t ext4 -o $mode "$root" /root || { echo "initrd: cannot mount $root" > /dev/console; exit 1; }
$B umount /proc
$B mount --move /dev /root/dev
exec $B switch_root /root "$init"
"""
# Made in the root, as base-files and the kernel's postinst would.
ROOT_DIRS = ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "boot")
DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")


def recipe_key(suite, arch, packages):
    parts = (LAYOUT, suite, arch, tuple(packages), INITRD_DEBS, INITRD_MODULES, INITRD_INIT, ROOT_DIRS, DROPPED)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def alternatives(postinsts):
    """{link: target} of the `update-alternatives --install` commands in the postinsts' text, as
    update-alternatives leaves them in auto mode: per name, the highest priority's paths."""
    best = {}  # name -> (priority, [(link, name, path)] master first)
    text = postinsts.replace("\\\n", " ")
    for m in re.finditer(r"update-alternatives\b([^\n;|&]*)", text):
        words = m.group(1).split()
        if "--install" not in words or any("$" in w for w in words):
            continue
        i = words.index("--install")
        link, name, path, prio = words[i + 1:i + 5]
        group = [(link, name, path)]
        for j, w in enumerate(words):
            if w == "--slave":
                group.append(tuple(words[j + 1:j + 4]))
        if name not in best or int(prio) > best[name][0]:
            best[name] = (int(prio), group)
    links = {}
    for prio, group in best.values():
        for link, name, path in group:
            links[link] = ("/etc/alternatives/" + name, path)
    return links


def build(ws, tree, suite, arch, packages):
    """The root at `tree` (made again unless its stamp holds this recipe's key): its path."""
    key = recipe_key(suite, arch, packages)
    stamp = os.path.join(tree, STAMP)
    if os.path.exists(stamp) and open(stamp).read().split("\n")[0] == key:
        ws.log("debroot %s cached (%s)" % (tree, key))
        return tree
    t0 = time.monotonic()
    top = os.path.join(ws.root, "debroot")
    apt = debootstrap.PrivateApt(ws, os.path.join(top, "apt-%s-%s" % (suite, arch)), suite, (arch,), "debroot")
    image = apt.depends("linux-image-" + arch)
    specs = apt.closure(packages)
    debs = apt.download(specs + [image] + list(INITRD_DEBS), os.path.join(top, "debs-%s-%s" % (suite, arch)))
    initrd_debs = [d for d in debs if os.path.basename(d).split("_")[0] in INITRD_DEBS]
    root_debs = [d for d in debs if d not in initrd_debs]
    new = tree + ".new"
    shutil.rmtree(new, ignore_errors=True)
    os.makedirs(new)
    extract = 'd=$1; shift; for deb; do dpkg -x "$deb" "$d" || exit 1; done'
    ws.run(["sh", "-c", extract, "extract", new] + root_debs, what="debroot: dpkg -x %d packages" % len(root_debs))
    for d in DROPPED:
        shutil.rmtree(os.path.join(new, d), ignore_errors=True)
    for d in ROOT_DIRS:
        os.makedirs(os.path.join(new, d), exist_ok=True)
    os.chmod(os.path.join(new, "tmp"), 0o1777)
    if not os.path.lexists(os.path.join(new, "var", "run")):
        os.makedirs(os.path.join(new, "var"), exist_ok=True)
        os.symlink("/run", os.path.join(new, "var", "run"))  # ip netns: /var/run/netns
    postinsts = ws.run(["sh", "-c", 'for deb; do dpkg-deb -I "$deb" postinst 2>/dev/null; echo; done', "postinsts"]
                       + root_debs, what="debroot: the postinsts").stdout.decode("utf-8", "replace")
    made = []
    for link, (alt, path) in sorted(alternatives(postinsts).items()):
        if not os.path.lexists(new + path):
            continue  # update-alternatives drops a slave whose file is not there (a dropped man page)
        for at, to in ((link, alt), (alt, path)):
            os.makedirs(os.path.dirname(new + at), exist_ok=True)
            if os.path.lexists(new + at):
                os.unlink(new + at)
            os.symlink(to, new + at)
        made.append(os.path.basename(link))
    ws.log("debroot: alternatives %s" % " ".join(made))
    releases = os.listdir(os.path.join(new, "lib", "modules"))
    assert len(releases) == 1, releases
    release = releases[0]
    # The root's own depmod (its indexes are what its modprobe reads), its libraries from the root.
    # (/sbin/depmod links to /bin/kmod, which picks the tool by its argv[0]: qemu's -0).
    kmod = os.path.join(new, os.readlink(os.path.join(new, "sbin", "depmod")).lstrip("/"))
    ws.run([QEMU_USER[arch], "-L", new, "-0", "depmod", kmod, "-b", new, release],
           what="debroot: depmod %s (qemu-user)" % release)
    initrd(ws, new, release, initrd_debs, os.path.join(top, "initrd-%s-%s" % (suite, arch)))
    shutil.rmtree(tree, ignore_errors=True)
    os.rename(new, tree)
    with open(stamp, "w") as f:
        f.write(key + "\n" + "\n".join(os.path.basename(d) for d in debs) + "\n")
    ws.log("debroot %s: %s %s, %d packages, kernel %s, built in %.1f s" % (
        tree, suite, arch, len(root_debs), release, time.monotonic() - t0))
    return tree


def initrd(ws, root, release, debs, work):
    """root/boot/initrd.img-RELEASE: busybox, INITRD_MODULES with what they depend on (in load
    order, from the root's modules.dep), INITRD_INIT."""
    shutil.rmtree(work, ignore_errors=True)
    for d in debs:
        ws.run(["dpkg", "-x", d, work], what="debroot: dpkg -x %s (initrd)" % os.path.basename(d))
    shutil.rmtree(os.path.join(work, "usr"), ignore_errors=True)
    modules = os.path.join(root, "lib", "modules", release)
    deps = {}
    with open(os.path.join(modules, "modules.dep")) as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
    order = []

    def need(path):
        if path not in order:
            for d in reversed(deps[path]):
                need(d)
            order.append(path)

    for name in INITRD_MODULES:
        need(by_name[name])
    for p in order:
        os.makedirs(os.path.dirname(os.path.join(work, p)), exist_ok=True)
        shutil.copyfile(os.path.join(modules, p), os.path.join(work, p))
    with open(os.path.join(work, "modules"), "w") as f:
        f.write("\n".join(order) + "\n")
    for d in ("proc", "dev", "root"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    with open(os.path.join(work, "init"), "w") as f:
        f.write(INITRD_INIT)
    os.chmod(os.path.join(work, "init"), 0o755)
    size = musl.write_cpio(work, os.path.join(root, "boot", "initrd.img-" + release))
    ws.log("debroot: initrd %s, %d modules, %.1f MiB" % (release, len(order), size / 1048576.0))
    shutil.rmtree(work)


if __name__ == "__main__":
    import sys

    from images import Workspace

    ws = Workspace.open()
    try:
        print(build(ws, os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")))
    finally:
        ws.close()
