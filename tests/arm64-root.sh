#!/usr/bin/env bash
# The arm64 root the aarch64 VM boots (tests/test_arm64.py, tests/vm.py): a Debian bullseye arm64
# minbase tree with Debian's arm64 kernel, iptables and nftables, made on this x86-64 machine by
# a foreign debootstrap whose second stage runs under qemu-user-static (~6-13 min, all emulated).
#
#   tests/arm64-root.sh ROOT PACKAGES     (root; kept while its stamp says the same)
#
# The programs of the tree run through a binfmt_misc entry registered only in a private user
# namespace: the machine's own binfmt_misc is left as it is.
set -euo pipefail

ROOT=$(realpath -m "$1")
PACKAGES=$2
SUITE=bullseye
ARCH=arm64
MIRROR="${IPTABLES_SHIM_MIRROR:-http://deb.debian.org/debian}"
STAMP=.iptables-shim-build-root  # tests/vm.py keys the disk on it
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')

die() { echo "arm64-root.sh: $*" >&2; exit 1; }

# aarch64 ELF executables, for the kernel's binfmt_misc: Debian's qemu-aarch64 magic and mask
# (qemu-user-static's /usr/lib/binfmt.d/qemu-aarch64.conf). F: the interpreter is opened when the
# entry is registered, so it need not exist inside the chroot.
BINFMT_ARM64=':iptables-shim-arm64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'

# in_root ROOT CMD...: CMD chrooted into ROOT, in a private mount namespace with /proc and /dev
# mounted there (gone when it ends). For a foreign architecture, also in a private user namespace
# (ids mapped one to one: files get their real owners) and PID namespace, whose own binfmt_misc
# instance (Linux 6.7+) runs the tree's executables with qemu-user-static: nothing is registered
# on the machine itself.
in_root() {
    local root=$1 enter='mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && r=$1 && shift && exec chroot "$r" "$@"'
    shift
    if [ "$ARCH" = "$HOST_ARCH" ]; then
        unshare -m --propagation private sh -c "$enter" sh "$root" "$@"
        return
    fi
    local sync pid rc=0
    sync=$(mktemp -d)
    mkfifo "$sync/go"
    unshare --user --mount --pid --fork --kill-child sh -c '
        read _ <"$1" && shift &&
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc &&
        printf "%s" "$1" >/proc/sys/fs/binfmt_misc/register && shift && '"$enter" \
        sh "$sync/go" "$BINFMT_ARM64" "$root" "$@" &
    pid=$!
    # The maps can be written once unshare has made the namespace; then let it go on.
    while [ "$(readlink "/proc/$pid/ns/user")" = "$(readlink /proc/self/ns/user)" ]; do sleep 0.02; done
    echo "0 0 4294967295" >"/proc/$pid/uid_map"
    echo "0 0 4294967295" >"/proc/$pid/gid_map"
    echo go >"$sync/go"
    wait "$pid" || rc=$?
    rm -rf "$sync"
    return "$rc"
}

# A kernel in the build root is there to boot the tree as a VM (tests/vm.py, virtio disk). Its
# initrd gets only what mounts that disk (MODULES=list plus a hook forcing the virtio and ext4
# modules): initramfs-tools' default copies most of the kernel's modules and compresses them, all
# emulated. Written after debootstrap's first stage, before the second configures the kernel.
vm_initramfs() {
    local root=$1
    mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
    printf 'MODULES=list\nCOMPRESS=gzip\n' >"$root/etc/initramfs-tools/conf.d/iptables-shim-vm"
    cat >"$root/etc/initramfs-tools/hooks/iptables-shim-vm" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_mmio virtio_blk ext4; do force_load "$m"; done
HOOK
    chmod 755 "$root/etc/initramfs-tools/hooks/iptables-shim-vm"
}

[ "$(cat "$ROOT/$STAMP" 2>/dev/null)" = "$SUITE $ARCH $PACKAGES" ] && exit 0
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
[ -x /usr/bin/qemu-aarch64-static ] || die "qemu-user-static is missing: apt-get install -y qemu-user-static"
echo "arm64-root.sh: creating the $SUITE $ARCH root in $ROOT (emulated: several minutes)" >&2
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
debootstrap --arch="$ARCH" --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
    >"$ROOT.log" 2>&1 || die "debootstrap failed, see $ROOT.log"
case ",$PACKAGES," in *,linux-image-*) vm_initramfs "$ROOT" ;; esac
# container=lxc: debootstrap then skips its mknod test, which a user namespace refuses (the
# devices are bind-mounted from the host's /dev).
in_root "$ROOT" /usr/bin/env container=lxc /debootstrap/debootstrap --second-stage >>"$ROOT.log" 2>&1 ||
    die "debootstrap --second-stage (emulated) failed, see $ROOT.log"
echo "$SUITE $ARCH $PACKAGES" >"$ROOT/$STAMP"
