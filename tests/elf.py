"""What an ELF file needs from the system it runs on: its interpreter (PT_INTERP), the libraries it
names (DT_NEEDED) and where it looks for them (DT_RUNPATH, DT_RPATH), and the symbol versions it
needs of each (.gnu.version_r, through DT_VERNEED), such as GLIBC_2.29.

Read through the program headers only, as the kernel and the loader do: stripped files and files
without section headers read the same. 64-bit little-endian only (x86-64, aarch64): anything else
is refused with an ElfError naming what it is. Layouts are those of <elf.h> (Elf64_Ehdr,
Elf64_Phdr, Elf64_Dyn, Elf64_Verneed, Elf64_Vernaux), declared once below.
Used by tests/test_frozen_tree.py (the glibc floor of the frozen tree).
"""

import os
import re
import struct

MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
MACHINES = {62: "x86-64", 183: "aarch64"}

# <elf.h> layouts, little-endian.
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident, e_type, e_machine, e_version, e_entry, e_phoff,
#                                            e_shoff, e_flags, e_ehsize, e_phentsize, e_phnum, ...
PHDR = struct.Struct("<IIQQQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
DYN = struct.Struct("<qQ")  # d_tag, d_val
VERNEED = struct.Struct("<HHIII")  # vn_version, vn_cnt, vn_file, vn_aux, vn_next
VERNAUX = struct.Struct("<IHHII")  # vna_hash, vna_flags, vna_other, vna_name, vna_next

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF

GLIBC_VERSION = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")
# The sonames glibc itself ships: what every glibc system has, whatever else it lacks.
GLIBC_SONAMES = re.compile(r"^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libcrypt|"
                           r"libmvec|ld-linux-x86-64|ld-linux-aarch64)\.so\.\d+$")


class ElfError(Exception):
    pass


class Elf(object):
    """The dynamic-linking facts of one ELF file."""

    __slots__ = ("path", "machine", "interp", "needed", "runpath", "rpath", "verneed")

    def __init__(self, path, machine, interp, needed, runpath, rpath, verneed):
        self.path, self.machine, self.interp = path, machine, interp
        self.needed = needed  # [soname]
        self.runpath, self.rpath = runpath, rpath  # [directory as written, $ORIGIN unexpanded]
        self.verneed = verneed  # {soname: [version name]}

    def search_dirs(self):
        """DT_RUNPATH (else DT_RPATH) with $ORIGIN expanded: where the loader looks before the
        system's directories (ld.so(8))."""
        origin = os.path.dirname(os.path.abspath(self.path))
        out = []
        for entry in self.runpath or self.rpath:
            out.append(entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        return out

    def glibc_markers(self):
        """[name] of the GLIBC_ versions needed that are no release number: GLIBC_PRIVATE (one
        glibc build's internals), GLIBC_ABI_DT_RELR (packed relocations, glibc 2.36+)."""
        return sorted(set(n for names in self.verneed.values() for n in names
                          if n.startswith("GLIBC_") and not GLIBC_VERSION.match(n)))

    def glibc_versions(self):
        """[(major, minor, patch)] of every GLIBC_x.y[.z] version needed, of any library."""
        out = []
        for names in self.verneed.values():
            for name in names:
                m = GLIBC_VERSION.match(name)
                if m:
                    out.append(tuple(int(g or 0) for g in m.groups()))
        return out


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _unpack(layout, data, offset, path, what):
    if offset < 0 or offset + layout.size > len(data):
        raise ElfError("%s: %s at offset %d lies outside the file (%d bytes)" % (path, what, offset, len(data)))
    return layout.unpack_from(data, offset)


def _cstring(data, offset, path):
    end = data.find(b"\0", offset)
    if offset < 0 or offset >= len(data) or end < 0:
        raise ElfError("%s: string at offset %d is not inside the file" % (path, offset))
    return data[offset:end].decode("utf-8", "surrogateescape")


def read(path):
    """The Elf of path; ElfError for a file that is not a 64-bit little-endian x86-64/aarch64 ELF
    file or is cut short."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < EHDR.size or data[:4] != MAGIC:
        raise ElfError("%s: not an ELF file" % path)
    ident = data[:16]
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise ElfError("%s: ELF class %d, data encoding %d: only 64-bit little-endian (class 2, data 1) "
                       "is read" % (path, ident[4], ident[5]))
    fields = EHDR.unpack_from(data, 0)
    machine, phoff, phentsize, phnum = fields[2], fields[5], fields[9], fields[10]
    if machine not in MACHINES:
        raise ElfError("%s: e_machine %d: only x86-64 (62) and aarch64 (183) are read" % (path, machine))
    if phnum and phentsize != PHDR.size:
        raise ElfError("%s: program header entries of %d bytes, not %d" % (path, phentsize, PHDR.size))
    loads, interp, dynamic = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = _unpack(PHDR, data, phoff + i * PHDR.size, path,
                                                                  "program header %d" % i)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            interp = _cstring(data, p_offset, path)
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)

    def file_offset(vaddr, what):
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        raise ElfError("%s: %s at address %#x is in no PT_LOAD segment" % (path, what, vaddr))

    needed, runpath, rpath, verneed = [], [], [], {}
    if dynamic is None:
        return Elf(path, MACHINES[machine], interp, needed, runpath, rpath, verneed)
    entries = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], DYN.size):
        tag, val = _unpack(DYN, data, off, path, "dynamic entry")
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    tags = dict(entries)
    if DT_STRTAB not in tags:
        raise ElfError("%s: a dynamic section without DT_STRTAB" % path)
    strtab = file_offset(tags[DT_STRTAB], "DT_STRTAB")

    def string(index):
        return _cstring(data, strtab + index, path)

    for tag, val in entries:
        if tag == DT_NEEDED:
            needed.append(string(val))
        elif tag == DT_RUNPATH:
            runpath += [d for d in string(val).split(":") if d]
        elif tag == DT_RPATH:
            rpath += [d for d in string(val).split(":") if d]
    if DT_VERNEED in tags:
        off = file_offset(tags[DT_VERNEED], "DT_VERNEED")
        for _ in range(tags.get(DT_VERNEEDNUM, 0)):
            _, cnt, vn_file, vn_aux, vn_next = _unpack(VERNEED, data, off, path, "Elf64_Verneed")
            names = verneed.setdefault(string(vn_file), [])
            aux = off + vn_aux
            for _ in range(cnt):
                _, _, _, vna_name, vna_next = _unpack(VERNAUX, data, aux, path, "Elf64_Vernaux")
                names.append(string(vna_name))
                aux += vna_next
            if not vn_next:
                break
            off += vn_next
    return Elf(path, MACHINES[machine], interp, needed, runpath, rpath, verneed)


def elf_files(tree):
    """[path] of every ELF regular file under tree (symlinks not followed: they lead to files
    listed anyway, or out of the tree)."""
    out = []
    for d, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(d, name)
            if not os.path.islink(p) and is_elf(p):
                out.append(p)
    return out


def outside_needs(elf, tree):
    """[soname] of elf's DT_NEEDED that the loader would take from outside tree: no file of that
    name in one of its DT_RUNPATH/DT_RPATH directories inside tree, nor anywhere in tree (where a
    launcher's own LD_LIBRARY_PATH would find it, as PyInstaller's does)."""
    top = os.path.realpath(tree) + os.sep
    inside = [d for d in elf.search_dirs() if (os.path.realpath(d) + os.sep).startswith(top)]
    names = set(os.path.basename(p) for p in elf_files(tree))
    return [n for n in elf.needed
            if n not in names and not any(os.path.exists(os.path.join(d, n)) for d in inside)]
