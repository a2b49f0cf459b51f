#!/usr/bin/python3
"""The software bill of materials of a frozen iptables-shim tree, as CycloneDX 1.6 JSON on stdout.

    packaging/sbom.py TREE > iptables-shim.cdx.json
    packaging/sbom.py --at /usr/lib/iptables-shim TREE              # paths as installed (packaging/deb.sh)
    packaging/sbom.py --image localhost/iptables-shim:0.1.0-amd64 --at /opt/iptables-shim TREE

What is in it (docs/packaging.md "The SBOM"):
- the shim itself (metadata.component; with --image, the image is that and the shim one component);
- every bundled component the build recorded in TREE/BUILDINFO, one per line, tab-separated
  `name<TAB>version<TAB>origin`, origin such as `debian-source python3.11 3.11.2-6+deb12u8` or
  `pypi ziglang 0.13.0`; Debian and PyPI origins become package URLs (purl) naming the package and
  version (the Debian revision included), and every origin is kept verbatim as the property
  iptables-shim:origin;
- each standard library module frozen into the executable (BUILDINFO's `frozen-stdlib<TAB>MODULE`
  lines, packaging/freeze.py's list) as a component inside the python component, with its version;
- a tree without BUILDINFO (the PyInstaller onedir layout) says what can be read from the files:
  the Python version (libpython's name, refined by the version string inside it) and each bundled
  shared library by file name, all with origin "unknown origin";
- every ELF file of the tree (symlinks not followed) as a component of type file, with its
  SHA-256 and its ELF machine (tests/test_sbom.py walks the tree and compares).

The tree is read, never changed. Deterministic: the time is $SOURCE_DATE_EPOCH when set, and the
serial number is derived from the content.
"""

import hashlib
import json
import os
import re
import stat
import sys
import time
import uuid

SPEC_VERSION = "1.6"
BUILDINFO = "BUILDINFO"
UNKNOWN_ORIGIN = "unknown origin"
ORIGIN_PROPERTY = "iptables-shim:origin"
MACHINES = {62: ("x86-64", "amd64"), 183: ("aarch64", "arm64")}
USAGE = "usage: sbom.py [--image REF] [--at PATH] TREE"
HERE = os.path.dirname(os.path.abspath(__file__))


class SbomError(Exception):
    pass


class Component(object):
    """One bundled component: a BUILDINFO line, or what an old tree's files say; `frozen`: the
    standard library modules frozen in (python's only)."""

    __slots__ = ("name", "version", "origin", "frozen")

    def __init__(self, name, version, origin):
        self.name, self.version, self.origin, self.frozen = name, version, origin, []


class ElfFile(object):
    __slots__ = ("path", "sha256", "machine")

    def __init__(self, path, sha256, machine):
        self.path, self.sha256, self.machine = path, sha256, machine


# -- reading the tree ------------------------------------------------------------------------------

FROZEN_STDLIB = "frozen-stdlib"
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_buildinfo(text):
    """[Component] from BUILDINFO's lines, the frozen-stdlib lines as python's `frozen`; blank
    lines and # comments skipped."""
    out, frozen = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if fields[0] == FROZEN_STDLIB:
            if len(fields) != 2 or not MODULE_NAME.fullmatch(fields[1]):
                raise SbomError("BUILDINFO line %d is not frozen-stdlib<TAB>MODULE: %r" % (n, line))
            frozen.append(fields[1])
        elif len(fields) != 3 or not all(fields):
            raise SbomError("BUILDINFO line %d is not name<TAB>version<TAB>origin: %r" % (n, line))
        else:
            out.append(Component(*fields))
    if frozen:
        python = [c for c in out if c.name == "python"]
        if not python:
            raise SbomError("BUILDINFO names frozen standard library modules but no python line")
        python[0].frozen = frozen
    return out


def elf_files(tree):
    """[ElfFile] of every regular file under tree starting with the ELF magic, sorted by path."""
    out = []
    for d, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(d, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                head = f.read(20)
                h.update(head)
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if head[:4] != b"\x7fELF" or len(head) < 20:
                continue
            order = "little" if head[5] == 1 else "big"
            out.append(ElfFile(os.path.relpath(path, tree), h.hexdigest(), int.from_bytes(head[18:20], order)))
    return out


def _python_version(path, short):
    """X.Y.Z from the version string inside libpython, where one matches X.Y; else X.Y."""
    with open(path, "rb") as f:
        data = f.read()
    m = re.search(rb"\x00(" + re.escape(short.encode()) + rb"\.\d+)\x00", data)
    return m.group(1).decode() if m else short


def components_without_buildinfo(tree, elves):
    """What an old (PyInstaller) tree's file names say, all of unknown origin."""
    out = []
    for e in elves:
        base = os.path.basename(e.path)
        m = re.match(r"libpython(\d+\.\d+)\.so", base)
        if m:
            out.append(Component("python", _python_version(os.path.join(tree, e.path), m.group(1)), UNKNOWN_ORIGIN))
        elif re.match(r"lib.*\.so(\.|$)", base):
            out.append(Component(base, "", UNKNOWN_ORIGIN))
    return out


# -- the document ----------------------------------------------------------------------------------

def frozen_module(python, module):
    """A standard library module frozen into the executable: part of the python component."""
    item = {"type": "library", "bom-ref": "python-stdlib-" + module, "name": module}
    if python.version:
        item["version"] = python.version
    item["properties"] = [{"name": ORIGIN_PROPERTY, "value": "frozen into iptables-shim from " + python.origin}]
    return item


def purl(component, arch):
    """The package URL of a Debian or PyPI origin, or None."""
    words = component.origin.split()
    if len(words) != 3:
        return None
    kind, package, version = words
    quoted = version.replace("%", "%25").replace("+", "%2B").replace(":", "%3A")
    if kind == "debian-source":
        return "pkg:deb/debian/%s@%s?arch=source" % (package, quoted)
    if kind == "debian":
        return "pkg:deb/debian/%s@%s?arch=%s" % (package, quoted, arch)
    if kind == "pypi":
        return "pkg:pypi/%s@%s" % (package.lower().replace("_", "-"), quoted)
    return None


def shim_version(components):
    for c in components:
        if c.name == "iptables-shim":
            return c.version
    try:
        with open(os.path.join(HERE, "..", "pyproject.toml")) as f:
            for line in f:
                if line.startswith("version = "):
                    return line.split('"')[1]
    except OSError:
        pass
    return None


def document(tree, image=None, at=None):
    if not os.path.isdir(tree):
        raise SbomError("%s is not a directory (a frozen tree, such as dist/iptables-shim)" % tree)
    elves = elf_files(tree)
    if not elves:
        raise SbomError("%s holds no ELF file: not a frozen tree" % tree)
    try:
        with open(os.path.join(tree, BUILDINFO)) as f:
            bundled = parse_buildinfo(f.read())
    except FileNotFoundError:
        bundled = components_without_buildinfo(tree, elves)
    main = next((e for e in elves if e.path == "iptables-shim"), elves[0])
    arch = MACHINES.get(main.machine, ("unknown", "unknown"))[1]

    shim = {"type": "application", "bom-ref": "iptables-shim", "name": "iptables-shim"}
    version = shim_version(bundled)
    if version:
        shim["version"] = version
    shim["properties"] = [{"name": "iptables-shim:architecture", "value": arch}]
    shim["properties"] += [{"name": ORIGIN_PROPERTY, "value": c.origin} for c in bundled if c.name == "iptables-shim"]
    components = []
    for i, c in enumerate(c for c in bundled if c.name != "iptables-shim"):
        item = {"type": "library", "bom-ref": "component-%d-%s" % (i, c.name), "name": c.name}
        if c.version:
            item["version"] = c.version
        p = purl(c, arch)
        if p:
            item["purl"] = p
        item["properties"] = [{"name": ORIGIN_PROPERTY, "value": c.origin}]
        if c.frozen:
            item["components"] = [frozen_module(c, m) for m in c.frozen]
        components.append(item)
    libraries = [c["bom-ref"] for c in components]
    for e in elves:
        name = os.path.join(at, e.path) if at else e.path
        components.append({
            "type": "file", "bom-ref": "file:" + name, "name": name,
            "hashes": [{"alg": "SHA-256", "content": e.sha256}],
            "properties": [{"name": "iptables-shim:elf-machine",
                            "value": MACHINES.get(e.machine, ("e_machine %d" % e.machine,))[0]}],
        })
    dependencies = [{"ref": "iptables-shim", "dependsOn": libraries}]
    if image:
        top = {"type": "container", "bom-ref": "image", "name": image}
        components.insert(0, shim)
        dependencies.insert(0, {"ref": "image", "dependsOn": ["iptables-shim"]})
    else:
        top = shim

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(epoch) if epoch and epoch.isdigit() else time.time())
    seed = json.dumps([image, at, [(e.path, e.sha256) for e in elves],
                       [(c.name, c.version, c.origin, c.frozen) for c in bundled]])
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": "urn:uuid:%s" % uuid.uuid5(uuid.NAMESPACE_URL, "iptables-shim-sbom:" + seed),
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
            "tools": {"components": [{"type": "application", "name": "iptables-shim packaging/sbom.py"}]},
            "component": top,
        },
        "components": components,
        "dependencies": dependencies,
    }


def main(argv):
    args, image, at = list(argv[1:]), None, None
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            return 0
        if opt not in ("--image", "--at") or not args:
            sys.stderr.write("sbom.py: %s; %s\n" % ("%s needs a value" % opt if opt in ("--image", "--at")
                                                     else "unknown option %s" % opt, USAGE))
            return 2
        if opt == "--image":
            image = args.pop(0)
        else:
            at = args.pop(0)
    if len(args) != 1:
        sys.stderr.write("sbom.py: one TREE is needed; %s\n" % USAGE)
        return 2
    try:
        doc = document(args[0], image, at)
    except (SbomError, OSError) as e:
        sys.stderr.write("sbom.py: %s\n" % e)
        return 1
    sys.stdout.write(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
