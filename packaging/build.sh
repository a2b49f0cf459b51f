#!/usr/bin/env bash
# Build the frozen iptables-shim: one directory, iptables-shim/, that needs nothing from the image
# it is copied into but a Linux kernel (no libc, no loader, no Python): musl, any glibc, scratch.
#
#   packaging/build.sh                  for this machine's architecture, into dist/iptables-shim/
#   packaging/build.sh --arch arm64     for aarch64 (cross-compiled: nothing runs emulated), into
#                                       dist/arm64/iptables-shim/
#   --out DIR                           put iptables-shim/ in DIR instead
#
# What it makes (docs/images.md says why this route):
#   iptables-shim      one static executable: CPython 3.11 from Debian's sources (python3.11, with
#                      its security fixes), linked statically with musl, the C modules the shim
#                      imports built in (BUILTIN_MODULES), packaging/launcher/main.c as its main, and
#                      the shim, its entry and exactly the standard library modules they import frozen
#                      in as bytecode (packaging/freeze.py): no lib/, no file read per import
#   the six names      iptables, iptables-save, ... as relative links to iptables-shim
#   iptables-shim.frozen   the marker another shim on PATH knows a frozen tree by
#   BUILDINFO          what went in: name, version, origin, tab-separated, then every frozen standard
#                      library module (packaging/sbom.py reads it)
#
# Reproducible (docs/images.md#reproducible): two builds of one commit give the same bytes, whatever
# the directory, umask, locale or clock (tests/test_reproducible.py): SOURCE_DATE_EPOCH from the
# commit, the interpreter's build date from its Debian changelog, a fixed hash seed for the bytecode,
# build paths mapped away.
#
# Toolchain: zig (`ziglang` from PyPI; its clang and its musl cross-compile for amd64 and arm64
# alike), the sources from `apt-get source` (a deb-src entry: .ci/setup adds it), and this
# machine's /usr/bin/python3.11 (Debian's 3.11: the same version, to compile the bytecode).
# Everything is cached in $IPTABLES_SHIM_BUILD_CACHE (default /var/cache/iptables-shim-build): the
# interpreter is built once per recipe and architecture (1-2 min on 2 cores), a change to shim/ or
# the launcher only refreezes and relinks (seconds).
set -euo pipefail
# The tree's modes are its own, not the builder's umask (tests/test_reproducible.py builds under 077).
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE=${IPTABLES_SHIM_BUILD_CACHE:-/var/cache/iptables-shim-build}
ZIG_VERSION=0.14.1
PYTHON_SOURCE=python3.11
ZLIB_SOURCE=zlib
BUILD_PYTHON=/usr/bin/python3.11
JOBS=$(nproc 2>/dev/null || echo 2)
HOST_ARCH=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
ARCH=$HOST_ARCH
# The names, from where the shim itself defines them.
NAMES="$("$BUILD_PYTHON" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from shim.tools import SHIM_NAMES
print(" ".join(sorted(SHIM_NAMES)))' "$REPO")"
# Debian's series for python3.11 also carries its layout for a system Python (multiarch, distutils
# schemes, ...): not ours. The security and crash fixes are.
PATCHES='^(CVE-.*|.*gh-[0-9]+.*|shutdown-deadlock\.diff|frame_dealloc-crash\.diff|relfile-nullptr-dereference\.patch)$'

# The C modules of the standard library built in: those the frozen modules import (freeze.py fails
# the build when the shim imports one that is missing here). The rest of Modules/Setup.stdlib is not
# built (unicodedata alone was 1.1 MB): docs/images.md#one-file.
BUILTIN_MODULES="_json _posixsubprocess _socket _struct fcntl math select zlib"
# Size without speed lost: measured in docs/images.md#one-file.
OPT_CFLAGS="-Os -fno-asynchronous-unwind-tables -fno-unwind-tables -ffunction-sections -fdata-sections"
OPT_LDFLAGS="-Wl,--gc-sections"

say() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

triple() { case $1 in amd64) echo x86_64-linux-musl ;; arm64) echo aarch64-linux-musl ;; esac; }

# zig from its PyPI wheel, unpacked (no venv: the wheel is the toolchain).
ensure_zig() {
    ZIG=$CACHE/zig-$ZIG_VERSION/ziglang/zig
    [ -x "$ZIG" ] && return 0
    local dl platform
    platform=$([ "$HOST_ARCH" = amd64 ] && echo manylinux_2_12_x86_64 || echo manylinux2014_aarch64)
    dl=$(mktemp -d)
    say "fetching ziglang $ZIG_VERSION from PyPI"
    "$BUILD_PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
        --platform "$platform" --python-version 3.11 "ziglang==$ZIG_VERSION" -d "$dl" ||
        die "could not fetch ziglang==$ZIG_VERSION from PyPI (pip download)"
    rm -rf "$CACHE/zig-$ZIG_VERSION"
    "$BUILD_PYTHON" -m zipfile -e "$dl"/ziglang-*.whl "$CACHE/zig-$ZIG_VERSION"
    rm -rf "$dl"
    chmod +x "$ZIG"
}

# cc, ar, ranlib for a target as commands configure scripts can take.
toolchain() {
    local t=$1 dir=$CACHE/zig-$ZIG_VERSION/bin-$1
    mkdir -p "$dir" "$CACHE/zig-cache"
    printf '#!/bin/sh\nexport ZIG_GLOBAL_CACHE_DIR=%s ZIG_LOCAL_CACHE_DIR=%s\nexec %s cc -target %s "$@"\n' \
        "$CACHE/zig-cache" "$CACHE/zig-cache" "$ZIG" "$t" >"$dir/cc"
    printf '#!/bin/sh\nexec %s ar "$@"\n' "$ZIG" >"$dir/ar"
    printf '#!/bin/sh\nexec %s ranlib "$@"\n' "$ZIG" >"$dir/ranlib"
    chmod +x "$dir"/*
    echo "$dir"
}

# Debian's source packages, downloaded once: `apt-get source --download-only`.
ensure_sources() {
    local src=$CACHE/src p
    mkdir -p "$src"
    local v versions
    for p in $PYTHON_SOURCE $ZLIB_SOURCE; do
        ls "$src/${p}_"*.dsc >/dev/null 2>&1 && continue
        versions=$(apt-cache showsrc "$p" 2>/dev/null | sed -n 's/^Version: //p' | sort -urV)
        [ -n "$versions" ] || die "apt knows no source of $p: add a deb-src entry (bash .ci/setup does) and apt-get update"
        # The newest the mirror serves: a version apt lists may be missing from it (404).
        for v in $versions; do
            say "fetching Debian's source of $p $v"
            (cd "$src" && apt-get source -qq --download-only "$p=$v" >/dev/null 2>&1) && break
            rm -f "$src/${p}_"*
        done
        ls "$src/${p}_"*.dsc >/dev/null 2>&1 || die "apt-get source $p failed for every version apt lists ($versions)"
    done
}

# source_version PACKAGE: the Debian version of the downloaded source (e.g. 3.11.2-6+deb12u8).
source_version() { sed -n 's/^Version: //p' "$CACHE/src/$1_"*.dsc | head -1; }
source_file() { ls "$CACHE/src/$1_"*"$2" | head -1; }

# python_key ARCH: the interpreter's recipe (this script's functions, lists and flags, the sources'
# versions and the builtin module): its directory in the cache, so that two recipes (two checkouts,
# or a branch and main) never rebuild over each other. An edit of the launcher's main or route
# relinks (link_launcher, seconds); an edit of shim/ refreezes the modules (seconds).
python_key() {
    echo "$1 $ZIG_VERSION $(source_version $PYTHON_SOURCE) $(source_version $ZLIB_SOURCE) $(
        { cat "$REPO/packaging/launcher/shimsys.c" "$REPO"/packaging/cpython-*.patch; declare -f build_python toolchain
          echo "$PATCHES $BUILTIN_MODULES $OPT_CFLAGS $OPT_LDFLAGS"; } | sha256sum | cut -c1-16)" |
        sha256sum | cut -c1-16
}

# build_python ARCH: the static interpreter in $CACHE/python-ARCH-KEY/ (libpython.a, its headers,
# Lib/, the names it freezes and builds in), made once per recipe.
build_python() {
    local arch=$1 t bin work stamp key deps
    t=$(triple "$arch")
    work=$CACHE/python-$arch-$(python_key "$arch")
    stamp=$work/.stamp
    [ -f "$stamp" ] && [ -f "$work/libpython.a" ] && return 0
    local t0=$SECONDS
    bin=$(toolchain "$t")
    rm -rf "$work"
    mkdir -p "$work/deps"
    deps=$work/deps
    say "building zlib for $t"
    mkdir -p "$work/zlib"
    tar -xjf "$(source_file $ZLIB_SOURCE .orig.tar.bz2)" -C "$work/zlib" --strip-components=1
    (cd "$work/zlib" && CC="$bin/cc" AR="$bin/ar" RANLIB="$bin/ranlib" CFLAGS="$OPT_CFLAGS -fPIC -ffile-prefix-map=$work=." \
        ./configure --static --prefix="$deps" && make -j"$JOBS" libz.a && make install) \
        >"$work/zlib.log" 2>&1 || die "zlib build failed, see $work/zlib.log"

    say "building CPython $(source_version $PYTHON_SOURCE) for $t (static, musl)"
    local py=$work/cpython series p
    mkdir -p "$py" "$work/debian"
    tar -xzf "$(source_file $PYTHON_SOURCE .orig.tar.gz)" -C "$py" --strip-components=1
    tar -xJf "$(source_file $PYTHON_SOURCE .debian.tar.xz)" -C "$work/debian"
    series=$work/debian/debian/patches
    for p in $(grep -v '^#' "$series/series" | grep -E "$PATCHES"); do
        patch -d "$py" -p1 -s <"$series/$p" || die "Debian's patch $p does not apply"
        echo "$p" >>"$work/patches-applied"
    done
    # Ours: the start of an interpreter that imports only frozen and builtin modules (the patch says why).
    for p in "$REPO"/packaging/cpython-*.patch; do
        patch -d "$py" -p1 -s <"$p" || die "$p does not apply"
    done
    # Deep-frozen into the interpreter: only what its start imports (importlib, zipimport, abc,
    # codecs, io). os, site, runpy, the path modules and the test modules were 0.5 MB of objects
    # there; the shim's os (a verb's, never a call's: tests/test_hot_path.py) is frozen in with the
    # shim's modules, compressed (freeze.py).
    "$BUILD_PYTHON" - "$py/Tools/scripts/freeze_modules.py" <<'PY' || die "Tools/scripts/freeze_modules.py: its FROZEN list is not where build.sh trims it"
import sys
path = sys.argv[1]
text = open(path).read()
start = text.index("FROZEN = [\n")
end = text.index("\n]\n", start) + 3
text = text[:start] + """FROZEN = [
    ('import system', ['importlib._bootstrap : _frozen_importlib',
                       'importlib._bootstrap_external : _frozen_importlib_external', 'zipimport']),
    ('stdlib - startup, without site (python -S)', ['abc', 'codecs', 'io']),
    (TESTS_SECTION, ['__hello__']),
]
""" + text[end:]
open(path, "w").write(text)
PY
    (cd "$py" && "$BUILD_PYTHON" Tools/scripts/freeze_modules.py) >"$work/freeze_modules.log" 2>&1 ||
        die "Tools/scripts/freeze_modules.py failed, see $work/freeze_modules.log"
    cp "$REPO/packaging/launcher/shimsys.c" "$py/Modules/_iptables_shim.c"
    # Built in: the shim's own module and BUILTIN_MODULES; every other module of Setup.stdlib is
    # disabled. The build's date is the Python source's own (its Debian changelog), not today's:
    # two builds of one recipe give the same bytes (docs/images.md#reproducible).
    local unused date
    unused=$(sed -n 's/^@MODULE_\([A-Z0-9_]*\)_TRUE@\([A-Za-z0-9_]*\).*/\2/p' "$py/Modules/Setup.stdlib.in" |
        grep -vxF "$(echo $BUILTIN_MODULES | tr ' ' '\n')" | tr '\n' ' ')
    printf '*static*\n_iptables_shim _iptables_shim.c\n*disabled*\n%s\n' "$unused" >"$py/Modules/Setup.local"
    date=$(dpkg-parsechangelog -l "$work/debian/debian/changelog" -STimestamp)
    sed -i "s/^#define DATE __DATE__/#define DATE \"$(LC_ALL=C date -u -d "@$date" '+%b %e %Y')\"/;
            s/^#define TIME __TIME__/#define TIME \"$(LC_ALL=C date -u -d "@$date" +%T)\"/" "$py/Modules/getbuildinfo.c"
    grep -q "^#define DATE \"" "$py/Modules/getbuildinfo.c" || die "Modules/getbuildinfo.c: its DATE is not where build.sh sets it"
    # Cross-compiling: what configure cannot run a program to find out.
    printf 'ac_cv_file__dev_ptmx=yes\nac_cv_file__dev_ptc=no\nac_cv_buggy_getaddrinfo=no\n' >"$work/config.site"
    (cd "$py" && CONFIG_SITE="$work/config.site" MODULE_BUILDTYPE=static PKG_CONFIG=/bin/false \
        CC="$bin/cc" AR="$bin/ar" RANLIB="$bin/ranlib" READELF=/bin/true \
        CFLAGS="$OPT_CFLAGS -ffile-prefix-map=$work=." CPPFLAGS="-I$deps/include" \
        LDFLAGS="-static -s $OPT_LDFLAGS -L$deps/lib" \
        ZLIB_CFLAGS="-I$deps/include" ZLIB_LIBS="-L$deps/lib -lz" \
        ./configure --host="$t" --build="$(uname -m)-linux-gnu" --with-build-python="$BUILD_PYTHON" \
            --disable-shared --without-ensurepip --disable-test-modules --without-doc-strings \
            --with-pymalloc --prefix=/nonexistent &&
        # configure builds Setup.stdlib's modules into the executable only for WASM; elsewhere it
        # makes them shared libraries, which a static executable cannot load: built in, here.
        sh Modules/makesetup -c Modules/config.c.in -s Modules Modules/Setup.local Modules/Setup.stdlib \
            Modules/Setup.bootstrap Modules/Setup && mv config.c Modules/ &&
        make -j"$JOBS" python &&
        # What link_launcher links the launcher with: the library, its headers and make's own flags.
        printf 'flags:\n\t@echo "$(PY_CORE_LDFLAGS) $(LINKFORSHARED)"; echo "$(LIBS) $(MODLIBS) $(SYSLIBS)"\n' |
            make -s -f Makefile -f - flags >"$work/link-flags") >"$work/cpython.log" 2>&1 ||
        die "CPython build failed, see $work/cpython.log"
    cp "$py/libpython3.11.a" "$work/libpython.a"
    # What freeze.py must know, and BUILDINFO names: the modules the interpreter freezes itself
    # (Python/frozen.c's tables, and getpath, which its start runs) and those built in
    # (Modules/config.c's inittab).
    { sed -n '/_modules\[\] = {/,/^};/p' "$py/Python/frozen.c" | sed -n 's/^ *{"\([^"<]*\)".*/\1/p'
      echo getpath; } | LC_ALL=C sort -u >"$work/frozen-names"
    sed -n 's/^ *{"\([A-Za-z0-9_]*\)", .*/\1/p' "$py/Modules/config.c" >"$work/builtin-names"
    grep -qx io "$work/frozen-names" && grep -qx posix "$work/builtin-names" ||
        die "Python/frozen.c or Modules/config.c: not where build.sh reads the frozen and builtin names"
    rm -rf "$work/include"
    cp -a "$py/Include" "$work/include"
    cp "$py/pyconfig.h" "$work/include/"
    rm -rf "$work/Lib"
    cp -a "$py/Lib" "$work/Lib"
    rm -rf "$py" "$work/zlib" "$work/debian"
    touch "$stamp"
    say "CPython for $t built in $((SECONDS - t0)) s"
}

# link_launcher ARCH OUT: the tree's executable, OUT/iptables-shim, and OUT/frozen-modules, the list
# of what is frozen in: packaging/launcher/ (main.c, route.c and the header of the shim's own names
# and texts, made from shim/ by settled_h.py) and the shim's modules frozen by freeze.py, linked
# with the cached interpreter: seconds, so a change to shim/ or the C route never rebuilds CPython.
link_launcher() {
    local arch=$1 final=$2 work bin out
    work=$CACHE/python-$arch-$(python_key "$arch")
    bin=$(toolchain "$(triple "$arch")")
    out=$(mktemp -d "$CACHE/link-$arch.XXXXXX")
    "$BUILD_PYTHON" -I "$REPO/packaging/launcher/settled_h.py" "$REPO" >"$out/settled.h"
    # The bytecode: a fixed hash seed (sets and frozensets in constants keep one order).
    PYTHONHASHSEED=0 "$BUILD_PYTHON" -I "$REPO/packaging/freeze.py" "$REPO" "$work/Lib" "$work/frozen-names" \
        "$work/builtin-names" "$out/frozen.c" "$out/frozen-modules" >/dev/null ||
        { rm -rf "$out"; die "freezing the shim's modules failed (packaging/freeze.py)"; }
    local flags="$OPT_CFLAGS -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu11 -I. -I$work/include -ffile-prefix-map=$out=."
    (cd "$out" &&
        # shellcheck disable=SC2086 # one word each
        "$bin/cc" $flags -c "$REPO/packaging/launcher/route.c" -o route.o &&
        "$bin/cc" $flags -c "$REPO/packaging/launcher/main.c" -o main.o &&
        "$bin/cc" $flags -c "$REPO/packaging/launcher/memory.c" -o memory.o &&
        "$bin/cc" $OPT_CFLAGS -I"$work/include" -I"$work/deps/include" -c frozen.c -o frozen.o &&
        # shellcheck disable=SC2046 # make's flags, one word each (-export-dynamic: nothing loads modules)
        "$bin/cc" -static -s $OPT_LDFLAGS -o iptables-shim main.o memory.o route.o frozen.o "$work/libpython.a" \
            $(head -1 "$work/link-flags" | sed 's/-Xlinker -export-dynamic//') -L"$work/deps/lib" $(tail -1 "$work/link-flags")) \
        >"$out/launcher.log" 2>&1 || { cat "$out/launcher.log" >&2; rm -rf "$out"; die "linking the launcher failed"; }
    mv "$out/iptables-shim" "$out/frozen-modules" "$final/"
    rm -rf "$out"
}

# buildinfo ARCH MODULES INTERPRETER_FROZEN: what went in, tab-separated: name, version, origin
# (packaging/sbom.py reads it), then each frozen module of the standard library.
buildinfo() {
    printf 'python\t%s\tdebian-source %s %s\n' "$(source_version $PYTHON_SOURCE | cut -d- -f1)" \
        "$PYTHON_SOURCE" "$(source_version $PYTHON_SOURCE)"
    printf 'zlib\t%s\tdebian-source %s %s\n' "$(source_version $ZLIB_SOURCE | sed 's/^[0-9]*://; s/[.]dfsg.*//; s/-.*//')" \
        "$ZLIB_SOURCE" "$(source_version $ZLIB_SOURCE)"
    printf 'musl\t%s\tpypi ziglang %s\n' "$(sed -n 's/^#define VERSION "\(.*\)"/\1/p' \
        "$CACHE/zig-$ZIG_VERSION/ziglang/lib/libc/musl/src/internal/version.h")" "$ZIG_VERSION"
    printf 'iptables-shim\t%s\tsource %s\n' "$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)" \
        "$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    # every standard library module inside: frozen in by freeze.py, or by the interpreter itself
    { grep -v -e '^shim$' -e '^shim[.]' -e '^iptables_shim_entry$' "$2"; cat "$3"; } | LC_ALL=C sort -u |
        sed 's/^/frozen-stdlib\t/'
}

assemble_tree() {
    local arch=$1 out=$2 tree=$2/iptables-shim n2
    rm -rf "$tree" "$tree.new"
    mkdir -p "$tree.new"
    link_launcher "$arch" "$tree.new"
    cp "$REPO/packaging/iptables-shim.frozen" "$tree.new/"
    for n2 in $NAMES; do ln -sfn iptables-shim "$tree.new/$n2"; done
    buildinfo "$arch" "$tree.new/frozen-modules" "$CACHE/python-$arch-$(python_key "$arch")/frozen-names" >"$tree.new/BUILDINFO"
    rm "$tree.new/frozen-modules"
    # The same bytes, whatever the umask and clock of the build (tests/test_reproducible.py).
    chmod 0755 "$tree.new" "$tree.new/iptables-shim"
    chmod 0644 "$tree.new/BUILDINFO" "$tree.new/iptables-shim.frozen"
    touch -h -d "@$SOURCE_DATE_EPOCH" "$tree.new"/* "$tree.new"
    mv "$tree.new" "$tree"
    say "built $tree ($arch, $(grep -c '^frozen-stdlib' "$tree/BUILDINFO") standard library modules frozen in, $(stat -c %s "$tree/iptables-shim") bytes)"
}

main() {
    local out=
    while [ $# -gt 0 ]; do
        case $1 in
            --arch) ARCH=$2; shift ;;
            --out) out=$(realpath -m "$2"); shift ;;
            -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    case $ARCH in amd64|arm64) ;; *) die "--arch $ARCH: amd64 or arm64" ;; esac
    [ -x "$BUILD_PYTHON" ] || die "$BUILD_PYTHON is needed (Debian's python3.11: apt-get install -y python3)"
    if [ -z "$out" ]; then
        out=$REPO/dist
        [ "$ARCH" = "$HOST_ARCH" ] || out=$REPO/dist/$ARCH
    fi
    # The commit's time, for every time stamp the build writes (tree, .deb): reproducible builds.
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
    # zlib's and CPython's configure scripts split their compiler's path at spaces.
    case "$CACHE$REPO" in *[[:space:]]*) die "the checkout ($REPO) and the build cache ($CACHE) must have no space in their paths" ;; esac
    ensure_zig
    ensure_sources
    build_python "$ARCH"
    assemble_tree "$ARCH" "$out"
}

main "$@"
