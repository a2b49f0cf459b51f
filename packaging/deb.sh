#!/usr/bin/env bash
# Build the Debian package of a frozen iptables-shim tree: iptables-shim_VERSION_ARCH.deb.
#
#   packaging/deb.sh --tree dist/iptables-shim [--out DIR] [--version V]
#
# --tree   a frozen tree (packaging/build.sh, --arch arm64 for arm64), copied whole, as it is, to
#          /usr/lib/iptables-shim/shipped/, with the seven names beside it leading through
#          `current` (docs/packaging.md#upgrades). The architecture is the ELF machine of
#          TREE/iptables-shim (62 x86-64: amd64, 183 aarch64: arm64).
# --out    where the .deb and its SBOM go (default dist/); VERSION is pyproject.toml's (or --version).
#
# The package (docs/packaging.md): the tree; the audit timer iptables-shim-doctor.{service,timer}
# (deploy/systemd), enabled on install; the alert rules (deploy/prometheus) in
# /usr/share/iptables-shim/; the SBOM (packaging/sbom.py) in /usr/share/doc/iptables-shim/ and
# beside the .deb as iptables-shim_VERSION_ARCH.cdx.json. Its maintainer scripts (packaging/debian)
# register the six names with update-alternatives through the tree's own `install --alternatives`
# and restore exactly what was there on remove. Depends: iptables (and libc6 only for a tree linked
# against it). Made with dpkg-deb (--root-owner-group: no root needed); file times are
# $SOURCE_DATE_EPOCH, else the last commit's.
set -euo pipefail
# The package's modes are its own, not the builder's umask (tests/test_reproducible.py builds under 077).
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG=iptables-shim
LIBDIR=/usr/lib/iptables-shim
MAINTAINER="${DEBFULLNAME:-iptables-shim maintainers} <${DEBEMAIL:-maintainers@iptables-shim.invalid}>"

die() { echo "deb.sh: $*" >&2; exit 1; }

tree= out=$REPO/dist
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)
while [ $# -gt 0 ]; do
    case $1 in
        --tree) [ $# -ge 2 ] || die "--tree needs a directory"; tree=$2; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift ;;
        --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ -n "$tree" ] || die "give --tree DIR, a frozen tree from packaging/build.sh"
[ -n "$version" ] || die "no version in pyproject.toml: give --version"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (Debian's dpkg package)"
command -v readelf >/dev/null && command -v objdump >/dev/null || die "readelf and objdump are missing (apt-get install binutils)"
[ -d "$tree" ] && [ -f "$tree/iptables-shim" ] && [ -x "$tree/iptables-shim" ] ||
    die "$tree is not a frozen tree: no executable $tree/iptables-shim (packaging/build.sh makes one)"
[ "$(head -c 4 "$tree/iptables-shim" | od -An -c | tr -d ' ')" = '177ELF' ] ||
    die "$tree/iptables-shim is not an ELF executable"
machine=$(od -An -t u2 -j 18 -N 2 "$tree/iptables-shim" | tr -d ' ')
case $machine in
    62) arch=amd64 ;;
    183) arch=arm64 ;;
    *) die "$tree/iptables-shim is ELF machine $machine: only amd64 (62) and arm64 (183) are packaged" ;;
esac
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/$PKG
doc=$root/usr/share/doc/$PKG
mkdir -p "$root/DEBIAN" "$root/usr/lib" "$root/lib/systemd/system" "$doc" \
    "$root/usr/share/lintian/overrides" "$root/usr/share/$PKG/prometheus"

# The tree as dpkg unpacks it, in shipped/; calls run from the versioned trees the maintainer
# scripts make of it, which the seven names lead to through `current` (debian/trees.sh,
# docs/packaging.md#upgrades).
mkdir -p "$root$LIBDIR"
cp -a "$tree" "$root$LIBDIR/shipped"
for name in $(cd "$tree" && find . -maxdepth 1 -type l -lname iptables-shim -printf '%P\n') iptables-shim; do
    ln -s "current/$name" "$root$LIBDIR/$name"
done
# A tree is world-readable, written by root only, whatever the umask it was built under; shared
# libraries are not executable (what dh_fixperms does).
chmod -R u+rwX,go+rX,go-w "$root$LIBDIR"
find "$root$LIBDIR" -type f \( -name '*.so' -o -name '*.so.*' \) -exec chmod a-x {} +
# A tree linked against the system's C library (the old PyInstaller layout) needs the glibc its
# files' symbol versions name; a static tree needs none, and depends on iptables alone.
libc=
case $(find "$root$LIBDIR" -type f -exec readelf -d {} + 2>/dev/null | grep -F '(NEEDED)' || true) in
    *"[libc.so.6]"*)
        glibc=$(find "$root$LIBDIR" -type f -exec objdump -T {} + 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
        libc="libc6${glibc:+ (>= ${glibc#GLIBC_})}" ;;
esac
install -m 0644 "$REPO"/deploy/systemd/iptables-shim-doctor.service "$REPO"/deploy/systemd/iptables-shim-doctor.timer \
    "$root/lib/systemd/system/"
install -m 0644 "$REPO/deploy/prometheus/iptables-shim.rules.yml" "$root/usr/share/$PKG/prometheus/"
install -m 0644 "$REPO/packaging/debian/copyright" "$doc/copyright"
install -m 0644 "$REPO/packaging/debian/lintian-overrides" "$root/usr/share/lintian/overrides/$PKG"
# The maintainer scripts, each with the versioned trees' functions where it says #TREES# (as
# debhelper fills #DEBHELPER#).
sed "s/@VERSION@/$version/" "$REPO/packaging/debian/trees.sh" >"$stage/trees.sh"
for script in preinst postinst prerm postrm; do
    sed -e "/^#TREES#\$/{r $stage/trees.sh" -e 'd}' "$REPO/packaging/debian/$script" >"$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
done
# A native package's changelog: one entry, this build.
{
    echo "$PKG ($version) unstable; urgency=medium"
    echo
    echo "  * Built by packaging/deb.sh from commit $commit."
    echo
    echo " -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n >"$doc/changelog.gz"
SOURCE_DATE_EPOCH=$epoch "$REPO/packaging/sbom.py" --at "$LIBDIR/shipped" "$tree" >"$doc/sbom.cdx.json"

cat >"$root/DEBIAN/control" <<EOF
Package: $PKG
Version: $version
Architecture: $arch
Maintainer: $MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: ${libc:+$libc, }iptables
Suggests: prometheus-node-exporter
Section: net
Priority: optional
Description: iptables that runs the backend the network namespace already uses
 Six executables named like iptables, iptables-save, iptables-restore and
 their ip6tables counterparts. Each picks the variant (nf_tables or legacy
 x_tables) whose rules, or kubelet's hint, are already in the current network
 namespace, and runs it with arguments and input untouched, so rules never
 land in a backend that nothing else reads.
 .
 Registered as the highest-priority iptables and ip6tables alternative, so
 programs that run /usr/sbin/iptables by full path (ufw, netfilter-persistent)
 go through it; removing the package restores the alternatives selected
 before. A timer audits every network namespace every 5 minutes for
 node_exporter's textfile collector (iptables-shim doctor).
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -depth -exec touch -h -d "@$epoch" {} +

mkdir -p "$out"
deb=$out/${PKG}_${version}_${arch}.deb
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
cp "$doc/sbom.cdx.json" "$out/${PKG}_${version}_${arch}.cdx.json"
echo "$deb"
