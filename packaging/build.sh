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
#                      its security fixes), linked statically with musl, every extension module the
#                      shim uses built in, and packaging/launcher/main.c as its main
#   lib/               the bytecode it imports: shim/, packaging/entry.py, and the standard library
#                      modules those import (nothing else)
#   the six names      iptables, iptables-save, ... as relative links to iptables-shim
#   iptables-shim.frozen   the marker another shim on PATH knows a frozen tree by
#   BUILDINFO          what went in: name, version, origin, tab-separated (packaging/sbom.py reads it)
#
# Toolchain: zig (`ziglang` from PyPI; its clang and its musl cross-compile for amd64 and arm64
# alike), the sources from `apt-get source` (a deb-src entry: .ci/setup adds it), and this
# machine's /usr/bin/python3.11 (Debian's 3.11: the same version, to generate and compile bytecode).
# Everything is cached in $IPTABLES_SHIM_BUILD_CACHE (default /var/cache/iptables-shim-build): the
# interpreter is built once per architecture (~4-6 min on 2 cores), a change to shim/ only
# recompiles lib/ (seconds).
set -euo pipefail

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

UNUSED_MODULES="_decimal pyexpat _elementtree _codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp _codecs_kr
_codecs_tw _multibytecodec audioop ossaudiodev _lsprof _xxsubinterpreters xxsubtype cmath _statistics
_zoneinfo _asyncio _crypt spwd _posixshmem _multiprocessing xxlimited xxlimited_35 _ctypes_test
_testbuffer _testimportmultiple _testmultiphase _testinternalcapi _testcapi _testclinic"

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

# build_python ARCH: the static interpreter in $CACHE/python-ARCH/ (python and Lib/), made again
# when any of its inputs changes (the stamp).
build_python() {
    local arch=$1 t bin work stamp key deps
    t=$(triple "$arch")
    work=$CACHE/python-$arch
    stamp=$work/.stamp
    # The recipe is this function, its lists and the builtin module: an edit of the launcher's
    # main or route relinks it (link_launcher, seconds), an edit elsewhere rebuilds lib/ only.
    key="$ZIG_VERSION $(source_version $PYTHON_SOURCE) $(source_version $ZLIB_SOURCE) $(
        { cat "$REPO/packaging/launcher/shimsys.c"; declare -f build_python toolchain; echo "$PATCHES $UNUSED_MODULES"; } |
        sha256sum | cut -c1-16)"
    [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ -f "$work/libpython.a" ] && return 0
    local t0=$SECONDS
    bin=$(toolchain "$t")
    rm -rf "$work"
    mkdir -p "$work/deps"
    deps=$work/deps
    say "building zlib for $t"
    mkdir -p "$work/zlib"
    tar -xjf "$(source_file $ZLIB_SOURCE .orig.tar.bz2)" -C "$work/zlib" --strip-components=1
    (cd "$work/zlib" && CC="$bin/cc" AR="$bin/ar" RANLIB="$bin/ranlib" CFLAGS="-O2 -fPIC" \
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
    cp "$REPO/packaging/launcher/shimsys.c" "$py/Modules/_iptables_shim.c"
    # Built in: the standard library's modules (below), and the shim's own; not built: what no
    # module of lib/ imports (decimal, XML, the CJK codecs, audio, profiling, subinterpreters).
    printf '*static*\n_iptables_shim _iptables_shim.c\n*disabled*\n%s\n' "$UNUSED_MODULES" >"$py/Modules/Setup.local"
    # Cross-compiling: what configure cannot run a program to find out.
    printf 'ac_cv_file__dev_ptmx=yes\nac_cv_file__dev_ptc=no\nac_cv_buggy_getaddrinfo=no\n' >"$work/config.site"
    (cd "$py" && CONFIG_SITE="$work/config.site" MODULE_BUILDTYPE=static PKG_CONFIG=/bin/false \
        CC="$bin/cc" AR="$bin/ar" RANLIB="$bin/ranlib" READELF=/bin/true \
        CFLAGS="-O2 -Wno-date-time" CPPFLAGS="-I$deps/include" LDFLAGS="-static -s -L$deps/lib" \
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
    rm -rf "$work/include"
    cp -a "$py/Include" "$work/include"
    cp "$py/pyconfig.h" "$work/include/"
    rm -rf "$work/Lib"
    cp -a "$py/Lib" "$work/Lib"
    rm -rf "$py" "$work/zlib" "$work/debian"
    echo "$key" >"$stamp"
    say "CPython for $t built in $((SECONDS - t0)) s"
}

# link_launcher ARCH: the tree's executable, packaging/launcher/ (main.c, route.c and the header of
# the shim's own names and texts, made from shim/ by settled_h.py) linked with the cached
# interpreter: seconds, so a change to the C route never rebuilds CPython.
link_launcher() {
    local arch=$1 work=$CACHE/python-$1 bin out
    bin=$(toolchain "$(triple "$arch")")
    out=$work/launcher
    rm -rf "$out"
    mkdir -p "$out"
    "$BUILD_PYTHON" -I "$REPO/packaging/launcher/settled_h.py" "$REPO" >"$out/settled.h"
    local flags="-O2 -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu11 -I. -I$work/include"
    (cd "$out" &&
        # shellcheck disable=SC2086 # one word each
        "$bin/cc" $flags -c "$REPO/packaging/launcher/route.c" -o route.o &&
        "$bin/cc" $flags -c "$REPO/packaging/launcher/main.c" -o main.o &&
        # shellcheck disable=SC2046 # make's flags, one word each
        "$bin/cc" -static -s -o iptables-shim main.o route.o "$work/libpython.a" \
            $(head -1 "$work/link-flags") -L"$work/deps/lib" $(tail -1 "$work/link-flags")) \
        >"$work/launcher.log" 2>&1 || { cat "$work/launcher.log" >&2; die "linking the launcher failed"; }
}

# The standard library modules the shim and its entry import (modulefinder follows every import,
# function-level ones included), compiled for -OO like the interpreter runs them; encodings whole,
# since codecs are looked up by name at run time.
assemble_lib() {
    local work=$1 lib=$2
    "$BUILD_PYTHON" -I - "$REPO" "$work/Lib" "$lib" <<'PY'
import modulefinder, os, py_compile, sys
repo, stdlib, out = sys.argv[1:]
finder = modulefinder.ModuleFinder(path=[os.path.join(repo, "packaging"), repo, stdlib])
finder.run_script(os.path.join(repo, "packaging", "entry.py"))
for name in ("shim.cli", "shim.resolve", "shim.doctor", "shim.install", "encodings"):
    finder.import_hook(name, fromlist=["*"])
files = {m.__file__ for m in finder.modules.values() if m.__file__ and m.__file__.endswith(".py")}
files |= {os.path.join(stdlib, "encodings", f) for f in os.listdir(os.path.join(stdlib, "encodings")) if f.endswith(".py")}
for src in sorted(files):
    if src == os.path.join(repo, "packaging", "entry.py"):
        rel = "iptables_shim_entry.py"
    elif src.startswith(stdlib + os.sep):
        rel = os.path.relpath(src, stdlib)
    elif src.startswith(os.path.join(repo, "shim") + os.sep):
        rel = os.path.relpath(src, repo)
    else:
        sys.exit("build.sh: %s is neither the shim's nor the standard library's" % src)
    dst = os.path.join(out, rel + "c")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # Sourceless bytecode beside where the .py would be: imported without a __pycache__ lookup.
    py_compile.compile(src, cfile=dst, dfile=rel, doraise=True, optimize=2,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
print(len(files))
PY
}

assemble_tree() {
    local arch=$1 out=$2 work=$CACHE/python-$1 tree=$2/iptables-shim n
    rm -rf "$tree"
    mkdir -p "$tree/lib"
    link_launcher "$arch"
    cp "$work/launcher/iptables-shim" "$tree/iptables-shim"
    n=$(assemble_lib "$work" "$tree/lib")
    cp "$REPO/packaging/iptables-shim.frozen" "$tree/"
    for n2 in $NAMES; do ln -sfn iptables-shim "$tree/$n2"; done
    {
        printf 'python\t%s\tdebian-source %s %s\n' "$(source_version $PYTHON_SOURCE | cut -d- -f1)" \
            "$PYTHON_SOURCE" "$(source_version $PYTHON_SOURCE)"
        printf 'zlib\t%s\tdebian-source %s %s\n' "$(source_version $ZLIB_SOURCE | sed 's/^[0-9]*://; s/[.]dfsg.*//; s/-.*//')" \
            "$ZLIB_SOURCE" "$(source_version $ZLIB_SOURCE)"
        printf 'musl\t%s\tpypi ziglang %s\n' "$(sed -n 's/^#define VERSION "\(.*\)"/\1/p' \
            "$CACHE/zig-$ZIG_VERSION/ziglang/lib/libc/musl/src/internal/version.h")" "$ZIG_VERSION"
        printf 'iptables-shim\t%s\tsource %s\n' "$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)" \
            "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    } >"$tree/BUILDINFO"
    say "built $tree ($arch, $n modules in lib/, $(du -sh "$tree" | cut -f1))"
}

main() {
    local out=
    while [ $# -gt 0 ]; do
        case $1 in
            --arch) ARCH=$2; shift ;;
            --out) out=$(realpath -m "$2"); shift ;;
            -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
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
    ensure_zig
    ensure_sources
    build_python "$ARCH"
    assemble_tree "$ARCH" "$out"
}

main "$@"
