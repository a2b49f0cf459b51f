#!/usr/bin/env bash
# Build the images to copy the shim from: iptables-shim:VERSION-ARCH, FROM scratch, holding only
# /opt/iptables-shim, for each architecture given, and the multi-arch manifest iptables-shim:VERSION.
#
#   packaging/image.sh --tree amd64=dist/iptables-shim [--tree arm64=dist-arm64/iptables-shim]
#
# Each --tree is a frozen tree made by packaging/build.sh (--arch ARCH) for that architecture. The
# build has no network (--network none: nothing to fetch, and buildah's default network would
# write netavark's chains into this machine's own netns) and no RUN step, so it needs no emulation.
# Storage: buildah's defaults, with --storage-driver vfs; set BUILDAH="buildah --root R --runroot RR"
# to use other storage. Prints the names it made. VERSION is pyproject.toml's (or --version V).
# Beside each tree it writes the image's SBOM, iptables-shim-VERSION-ARCH.cdx.json (packaging/sbom.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r -a BUILDAH <<<"${BUILDAH:-buildah}"
NAME=${IPTABLES_SHIM_IMAGE_NAME:-localhost/iptables-shim}

die() { echo "image.sh: $*" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)
trees=()
while [ $# -gt 0 ]; do
    case $1 in
        --tree) trees+=("$2"); shift ;;
        --version) version=$2; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ ${#trees[@]} -gt 0 ] || die "give at least one --tree ARCH=DIR (a frozen tree from packaging/build.sh)"
[ -n "$version" ] || die "no version in pyproject.toml: give --version"

b() { "${BUILDAH[@]}" --storage-driver vfs "$@"; }

manifest="$NAME:$version"
b manifest rm "$manifest" >/dev/null 2>&1 || true
b manifest create "$manifest" >/dev/null
for spec in "${trees[@]}"; do
    arch=${spec%%=*} tree=${spec#*=}
    case $arch in amd64|arm64) ;; *) die "architecture $arch: amd64 or arm64" ;; esac
    [ -x "$tree/iptables-shim" ] && [ -f "$tree/iptables-shim.frozen" ] ||
        die "$tree is not a frozen tree (packaging/build.sh --arch $arch makes one)"
    # The ELF header must say the architecture the image claims (e_machine: 62 x86-64, 183 aarch64).
    machine=$(od -An -t u2 -j 18 -N 2 "$tree/iptables-shim" | tr -d ' ')
    want=$([ "$arch" = amd64 ] && echo 62 || echo 183)
    [ "$machine" = "$want" ] || die "$tree/iptables-shim is ELF machine $machine, not $arch ($want)"
    ctx=$(mktemp -d)
    cp -a "$tree" "$ctx/iptables-shim"
    b bud --quiet --network none --isolation oci --platform "linux/$arch" \
        -f "$REPO/packaging/Containerfile.scratch" -t "$NAME:$version-$arch" "$ctx" >/dev/null
    rm -rf "$ctx"
    b manifest add "$manifest" "$NAME:$version-$arch" >/dev/null
    "$REPO/packaging/sbom.py" --image "$NAME:$version-$arch" --at /opt/iptables-shim "$tree" \
        >"$(dirname "$tree")/iptables-shim-$version-$arch.cdx.json"
    echo "$NAME:$version-$arch"
done
echo "$manifest"
