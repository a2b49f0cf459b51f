"""The frozen tree's floor (SPEC "Images and libcs"): what its ELF files need from an image.

The tree passes when nothing in it needs anything from the image: no ELF file has an interpreter
(PT_INTERP) or a DT_NEEDED library found outside the tree (a static executable, or everything
inside). Else it must at least run on glibc 2.17 (CentOS 7, Amazon Linux 2): every library taken
from the image is one of glibc's own, and no symbol version above GLIBC_2.17 is needed.

The ELF reader (tests/elf.py) is checked first against binutils' readelf on this machine's own
binaries (no root, seconds); the tree itself is `Workspace.open().frozen()`'s, shared with
tests/test_frozen_roots.py (mark `images`).
"""

import glob
import os
import re
import shutil
import subprocess

import pytest

import elf

FLOOR = (2, 17, 0)  # as glibc_versions() gives them: GLIBC_2.17 itself passes
ENTRY = "iptables-shim"


def floor_problems(tree):
    """[line] of what keeps tree from running with nothing but a kernel, or on glibc 2.17; []
    when it passes."""
    files = elf.elf_files(tree)
    entry = os.path.join(tree, ENTRY)
    if entry not in files:
        return ["%s is not an ELF file" % entry]
    outside, versions, foreign_libs = [], [], []
    for path in files:
        e = elf.read(path)
        rel = os.path.relpath(path, tree)
        if e.interp:
            outside.append("%s: interpreter %s" % (rel, e.interp))
        needs = elf.outside_needs(e, tree)
        if needs:
            outside.append("%s: %s" % (rel, ", ".join(needs)))
        versions += [(v, rel) for v in e.glibc_versions()]
        if e.glibc_markers():  # no glibc 2.17 has them
            foreign_libs.append("%s needs %s of glibc" % (rel, ", ".join(e.glibc_markers())))
        foreign = [n for n in needs if not elf.GLIBC_SONAMES.match(n)]
        if foreign:  # glibc 2.17 is all an old image is sure to have
            foreign_libs.append("%s needs %s from the image, which glibc does not ship" % (rel, ", ".join(foreign)))
    if not outside:
        return []
    top = max(versions) if versions else None
    if not foreign_libs and (top is None or top[0] <= FLOOR):
        return []
    lines = ["needs from the image: " + "; ".join(outside)]
    if top is not None and top[0] > FLOOR:
        lines.append("highest glibc version needed: %s (%s), above the %d.%d floor"
                     % (glibc_name(top[0]), top[1], FLOOR[0], FLOOR[1]))
    return lines + foreign_libs


def glibc_name(version):
    return "GLIBC_%d.%d" % version[:2] + (".%d" % version[2] if version[2] else "")


# -- the reader, against readelf --------------------------------------------------------------------

def readelf(args, path):
    return subprocess.run(["readelf", "-W"] + args + [path], stdout=subprocess.PIPE, check=True,
                          env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout.decode()


SAMPLES = ["/usr/sbin/xtables-nft-multi", "/usr/bin/python3", "/usr/sbin/ldconfig"]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is the reference")
@pytest.mark.parametrize("path", SAMPLES + ["libc"])
def test_reader_agrees_with_readelf(path):
    if path == "libc":
        path = os.path.realpath("/lib/%s-linux-gnu/libc.so.6" % os.uname().machine)
    if not os.path.exists(path):
        pytest.skip("%s is not on this machine" % path)
    e = elf.read(path)
    interp = re.findall(r"Requesting program interpreter: (\S+)\]", readelf(["-l"], path))
    assert ([e.interp] if e.interp else []) == interp
    dynamic = readelf(["-d"], path)
    assert e.needed == re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic)
    assert e.runpath == [d for r in re.findall(r"\(RUNPATH\)\s+Library runpath: \[(.*)\]", dynamic)
                         for d in r.split(":")]
    # .gnu.version_r: "File: libc.so.6  Cnt: 8" then one "Name: GLIBC_2.34 ..." line per version.
    want, current = {}, None
    section = readelf(["-V"], path).partition("'.gnu.version_r'")[2]
    for line in section.splitlines():
        m = re.search(r"File: (\S+)\s+Cnt:", line)
        if m:
            current = want.setdefault(m.group(1), [])
        m = re.search(r"Name: (\S+)\s+Flags:", line)
        if m and current is not None:
            current.append(m.group(1))
    assert e.verneed == want


def test_reader_reads_a_static_executable_as_needing_nothing():
    e = elf.read("/usr/sbin/ldconfig")  # Debian's ldconfig is static-pie
    assert (e.interp, e.needed, e.glibc_versions()) == (None, [], [])


@pytest.mark.parametrize("offset, value, message", [
    (4, 1, "ELF class 1, data encoding 1: only 64-bit little-endian"),
    (5, 2, "ELF class 2, data encoding 2: only 64-bit little-endian"),
    (18, 40, "e_machine 40: only x86-64 (62) and aarch64 (183)"),
])
def test_reader_refuses_what_it_does_not_read(tmp_path, offset, value, message):
    """A real binary with its header changed to 32-bit, big-endian, ARM (32-bit): refused."""
    p = tmp_path / "changed"
    data = bytearray(open("/usr/sbin/xtables-nft-multi", "rb").read())
    data[offset] = value
    p.write_bytes(bytes(data))
    with pytest.raises(elf.ElfError) as e:
        elf.read(str(p))
    assert message in str(e.value)
    (tmp_path / "text").write_text("#!/bin/sh\n")
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.read(str(tmp_path / "text"))


def test_floor_judges_trees_of_real_binaries(tmp_path):
    """A static executable alone passes; this machine's dynamic xtables (glibc 2.34) does not."""
    static = tmp_path / "static"
    static.mkdir()
    shutil.copy("/usr/sbin/ldconfig", str(static / ENTRY))
    assert floor_problems(str(static)) == []
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    shutil.copy("/usr/sbin/xtables-nft-multi", str(dynamic / ENTRY))
    problems = floor_problems(str(dynamic))
    assert problems[0].startswith("needs from the image: iptables-shim: interpreter /lib64/ld-linux-x86-64.so.2"
                                  if os.uname().machine == "x86_64" else "needs from the image: "), problems
    assert "libxtables.so.12" in problems[0]
    # A library of glibc's own internals (libresolv needs GLIBC_PRIVATE): tied to one glibc build.
    private = tmp_path / "private"
    private.mkdir()
    shutil.copy("/usr/sbin/ldconfig", str(private / ENTRY))
    shutil.copy(os.path.realpath("/lib/%s-linux-gnu/libresolv.so.2" % os.uname().machine), str(private))
    assert any("GLIBC_PRIVATE" in p for p in floor_problems(str(private))), floor_problems(str(private))


def test_floor_passes_a_binary_that_needs_glibc_2_17_at_most(tmp_path):
    """The second way to pass: only glibc's libraries from the image, no version above 2.17 (a real
    binary of this machine that happens to be one, such as patchutils' filterdiff: GLIBC_2.14)."""
    for p in sorted(glob.glob("/usr/bin/*") + glob.glob("/usr/sbin/*")):
        if os.path.islink(p) or not elf.is_elf(p):
            continue
        e = elf.read(p)
        if e.interp and all(elf.GLIBC_SONAMES.match(n) for n in e.needed) and not e.glibc_markers() \
                and e.glibc_versions() and max(e.glibc_versions()) <= FLOOR:
            break
    else:
        pytest.skip("no binary on this machine needs glibc 2.17 at most")
    shutil.copy(p, str(tmp_path / ENTRY))
    assert floor_problems(str(tmp_path)) == [], p


# -- the frozen tree --------------------------------------------------------------------------------

@pytest.mark.images
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the frozen build runs debootstrap and chroot")
def test_frozen_tree_needs_nothing_from_the_image_or_glibc_2_17_at_most():
    from test_frozen_roots import workspace

    ws, tree = workspace()
    problems = floor_problems(tree)
    ws.log("frozen tree floor: %s" % ("; ".join(problems) or "nothing from the image"))
    assert problems == [], "\n".join(["frozen tree %s:" % tree] + problems)


@pytest.mark.images
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the frozen build runs debootstrap and chroot")
def test_frozen_tree_is_one_executable_its_marker_buildinfo_and_six_links():
    """The one-file tree (docs/images.md): the regular files iptables-shim, iptables-shim.frozen and
    BUILDINFO (at most 6 regular files), the six names as relative links to the executable, nothing
    else: no lib/, no directory at all. BUILDINFO names the standard library modules frozen in."""
    from shim.tools import SHIM_NAMES
    from test_frozen_roots import workspace

    _, tree = workspace()
    regular, links, other = [], {}, []
    for name in sorted(os.listdir(tree)):
        path = os.path.join(tree, name)
        if os.path.islink(path):
            links[name] = os.readlink(path)
        elif os.path.isfile(path):
            regular.append(name)
        else:
            other.append(name)
    assert other == [] and not os.path.lexists(os.path.join(tree, "lib")), other
    assert regular == ["BUILDINFO", "iptables-shim", "iptables-shim.frozen"] and len(regular) <= 6, regular
    assert links == {name: "iptables-shim" for name in SHIM_NAMES}, links
    assert elf.is_elf(os.path.join(tree, ENTRY)) and os.access(os.path.join(tree, ENTRY), os.X_OK)
    frozen = [l.split("\t")[1].strip() for l in open(os.path.join(tree, "BUILDINFO")) if l.startswith("frozen-stdlib\t")]
    assert frozen and frozen == sorted(frozen), frozen
    assert all(re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", m) and m.split(".")[0] != "shim" for m in frozen), frozen
