#!/usr/bin/env bash
# Build the frozen iptables-shim: dist/iptables-shim/, one directory to copy into any image.
#
#   packaging/build.sh            portable build (default; root): inside a Debian bullseye minbase
#                                 tree (glibc 2.31, Python 3.9), so the result runs on bullseye and
#                                 anything newer. The tree is made once with debootstrap and kept in
#                                 $IPTABLES_SHIM_BUILD_ROOT (default /var/cache/iptables-shim-build/bullseye).
#   packaging/build.sh --host     quick build with this machine's /usr/bin/python3: runs only where
#                                 glibc is at least this machine's (bookworm: 2.36; not on bullseye).
#   packaging/build.sh --arch arm64   the portable build for aarch64 on an x86-64 machine: the
#                                 bullseye tree is arm64 ($IPTABLES_SHIM_BUILD_ROOT, default
#                                 /var/cache/iptables-shim-build/bullseye-arm64), its programs run
#                                 by qemu-user-static through a binfmt_misc entry registered only in
#                                 a private user namespace (the machine's own binfmt_misc is left as
#                                 it is). Needs qemu-user-static; result in dist/arm64/ by default.
#                                 Slow: everything in the tree runs emulated (see README).
#   --out DIR                     put iptables-shim/ in DIR instead of dist/ (dist/ARCH/ for --arch)
#   IPTABLES_SHIM_BUILD_INCLUDE=a,b   more packages for the build root, in the same debootstrap (part of
#                                 its stamp): tests/test_arm64.py adds a kernel, iptables and nftables
#                                 so that the arm64 tree also boots as its test VM (tests/vm.py).
#   --onefile                     also build DIR/onefile/iptables-shim (one file; for measurement only)
#
# The result: dist/iptables-shim/iptables-shim (a multi-call executable dispatching on argv[0]),
# its _internal/ directory, and the six names iptables, iptables-save, iptables-restore,
# ip6tables, ip6tables-save, ip6tables-restore as relative symlinks to it. Onedir, not onefile:
# the reasons and the measurements are in packaging/iptables-shim.spec.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYINSTALLER_VERSION="${PYINSTALLER_VERSION:-6.22.3}"
SUITE=bullseye
MIRROR="${IPTABLES_SHIM_MIRROR:-http://deb.debian.org/debian}"
# The six names, from where the shim itself defines them.
NAMES="$(python3 -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from shim.tools import SHIM_NAMES
print(" ".join(sorted(SHIM_NAMES)))' "$REPO")"
ROOT_PACKAGES=python3,python3-venv,libpython3.9,binutils,ca-certificates${IPTABLES_SHIM_BUILD_INCLUDE:+,$IPTABLES_SHIM_BUILD_INCLUDE}
STAMP=.iptables-shim-build-root
HOST_ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
ARCH=$HOST_ARCH
# aarch64 ELF executables, for the kernel's binfmt_misc: Debian's qemu-aarch64 magic and mask
# (qemu-user-static's /usr/lib/binfmt.d/qemu-aarch64.conf). F: the interpreter is opened when the
# entry is registered, so it need not exist inside the chroot.
BINFMT_ARM64=':iptables-shim-arm64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F'

say() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

# pyinstaller_build PYTHON WORK SRC OUT [onefile]: venv in WORK/venv, PyInstaller from PyPI, build
# SRC's spec into OUT. Runs on the host (--host) or inside the build root (--inside).
pyinstaller_build() {
    local python=$1 work=$2 src=$3 out=$4 onefile=${5:-}
    if [ ! -x "$work/venv/bin/pyinstaller" ] || ! "$work/venv/bin/pyinstaller" --version 2>/dev/null | grep -qx "$PYINSTALLER_VERSION"; then
        rm -rf "$work/venv"
        "$python" -m venv "$work/venv"
        "$work/venv/bin/pip" install -q --disable-pip-version-check "pyinstaller==$PYINSTALLER_VERSION"
    fi
    rm -rf "$out/iptables-shim" "$out/onefile"
    "$work/venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$out" --workpath "$work/pyi" \
        "$src/packaging/iptables-shim.spec"
    # An excluded module the shim imports would make the frozen shim quietly take a fallback
    # (or fail) where the source shim does not: refuse the build instead.
    # (ctypes is excluded on purpose: see the spec.)
    if grep -E "^excluded module named .* imported by .*shim\." "$work/pyi/iptables-shim/warn-iptables-shim.txt" |
        grep -v "^excluded module named ctypes " >&2; then
        die "the spec excludes a module that shim/ imports (above): remove it from EXCLUDES"
    fi
    if [ -n "$onefile" ]; then
        IPTABLES_SHIM_ONEFILE=1 "$work/venv/bin/pyinstaller" --noconfirm --log-level WARN \
            --distpath "$out/onefile" --workpath "$work/pyi-onefile" "$src/packaging/iptables-shim.spec"
    fi
}

# The six names (and nothing else) as links beside the executable: relative, so the directory
# can be copied or moved as a whole.
add_links() {
    local dir=$1 n
    for n in $NAMES; do
        ln -sfn iptables-shim "$dir/$n"
    done
}

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

ensure_build_root() {
    local root=$1 foreign=()
    # The stamp holds the suite, architecture and package list: a root made otherwise is made again.
    [ "$(cat "$root/$STAMP" 2>/dev/null)" = "$SUITE $ARCH $ROOT_PACKAGES" ] && return 0
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap (or use --host)"
    if [ "$ARCH" != "$HOST_ARCH" ]; then
        [ "$ARCH" = arm64 ] || die "--arch $ARCH: only arm64 can be built on this $HOST_ARCH machine"
        [ -x /usr/bin/qemu-aarch64-static ] || die "qemu-user-static is missing: apt-get install -y qemu-user-static"
        foreign=(--arch="$ARCH" --foreign)
    fi
    say "creating the $SUITE $ARCH build root in $root (debootstrap: a minute native, several emulated)"
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap ${foreign[@]+"${foreign[@]}"} --variant=minbase --include="$ROOT_PACKAGES" "$SUITE" "$root" "$MIRROR" \
        >"$root.log" 2>&1 || die "debootstrap failed, see $root.log"
    if [ ${#foreign[@]} -gt 0 ]; then
        case ",$ROOT_PACKAGES," in *,linux-image-*) vm_initramfs "$root" ;; esac
        # container=lxc: debootstrap then skips its mknod test, which a user namespace refuses
        # (the devices are bind-mounted from the host's /dev).
        in_root "$root" /usr/bin/env container=lxc /debootstrap/debootstrap --second-stage >>"$root.log" 2>&1 ||
            die "debootstrap --second-stage (emulated) failed, see $root.log"
    fi
    echo "$SUITE $ARCH $ROOT_PACKAGES" >"$root/$STAMP"
}

# Build inside the bullseye tree: copy the sources in, run this script there with --inside, copy
# the result out. /proc and /dev are mounted in a private mount namespace, gone when it ends.
portable_build() {
    local root=$1 out=$2 onefile=$3
    [ "$(id -u)" = 0 ] || die "the portable build needs root (debootstrap, chroot); use --host for a local build"
    ensure_build_root "$root"
    rm -rf "$root/opt/build/src" "$root/opt/build/out"
    mkdir -p "$root/opt/build/src" "$root/opt/build/out"
    cp -a "$REPO/shim" "$REPO/packaging" "$root/opt/build/src/"
    find "$root/opt/build/src" -name __pycache__ -prune -exec rm -rf {} +
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    local pass=() v ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
        [ -n "${!v:-}" ] && pass+=("$v=${!v}")
    done
    # pip in the build root trusts what the host trusts (a site CA in front of PyPI, say).
    if [ -f "$ca" ]; then
        cp -L "$ca" "$root/opt/build/host-ca.crt"
        pass+=("PIP_CERT=/opt/build/host-ca.crt")
    fi
    in_root "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        PYINSTALLER_VERSION="$PYINSTALLER_VERSION" ${pass[@]+"${pass[@]}"} \
        /bin/bash /opt/build/src/packaging/build.sh --inside ${onefile:+--onefile}
    rm -rf "$out/iptables-shim" "$out/onefile"
    mkdir -p "$out"
    cp -a "$root/opt/build/out/iptables-shim" "$out/"
    [ -z "$onefile" ] || cp -a "$root/opt/build/out/onefile" "$out/"
}

main() {
    local mode=portable out= onefile= root
    while [ $# -gt 0 ]; do
        case $1 in
            --arch) ARCH=$2; shift ;;
            --host) mode=host ;;
            --inside) mode=inside ;;
            --onefile) onefile=1 ;;
            --out) out=$(realpath -m "$2"); shift ;;
            -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    case $ARCH in amd64|arm64) ;; *) die "--arch $ARCH: amd64 or arm64" ;; esac
    [ "$mode" != host ] || [ "$ARCH" = "$HOST_ARCH" ] || die "--host builds for this machine's $HOST_ARCH only"
    if [ "$ARCH" = "$HOST_ARCH" ]; then
        out=${out:-$REPO/dist}
        root=${IPTABLES_SHIM_BUILD_ROOT:-/var/cache/iptables-shim-build/$SUITE}
    else
        out=${out:-$REPO/dist/$ARCH}
        root=${IPTABLES_SHIM_BUILD_ROOT:-/var/cache/iptables-shim-build/$SUITE-$ARCH}
    fi
    local t0=$SECONDS
    case $mode in
        inside) pyinstaller_build /usr/bin/python3 /opt/build /opt/build/src /opt/build/out "$onefile"; return ;;
        host)
            [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null ||
                die "/usr/bin/python3 with venv is needed: apt-get install -y python3-venv"
            pyinstaller_build /usr/bin/python3 "$REPO/build" "$REPO" "$out" "$onefile" ;;
        portable) portable_build "$root" "$out" "$onefile" ;;
    esac
    add_links "$out/iptables-shim"
    [ -z "$onefile" ] || add_links "$out/onefile"
    say "built $out/iptables-shim ($mode, $ARCH, $((SECONDS - t0)) s); glibc needed: $(
        objdump -T "$out"/iptables-shim/_internal/libpython3*.so* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1 || echo '?')"
}

main "$@"
