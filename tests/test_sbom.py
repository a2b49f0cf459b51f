"""packaging/sbom.py: the CycloneDX SBOM of a frozen tree, checked against the tree itself (every ELF
file, found by walking it and reading magic numbers, with its SHA-256) and against the CycloneDX 1.6
JSON schema (cyclonedx-python-lib's strict validator, in the deploy tools' venv).

Small trees made here stand for both layouts: one with BUILDINFO (the one-file build: one executable,
its links, the marker), one without (PyInstaller's onedir, with Debian's own libpython3.11 copied
in); the real frozen tree and the SBOM inside the .deb are checked too (mark images: they need the
frozen build): the SBOM names exactly what BUILDINFO says is inside, the frozen standard library
modules included.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO
import test_deb
from test_deploy import tools_python

SBOM = os.path.join(REPO, "packaging", "sbom.py")
BUILDINFO = ("python\t3.11.2\tdebian-source python3.11 3.11.2-6+deb12u8\n"
             "zlib\t1.2.13\tdebian-source zlib 1:1.2.13.dfsg-1\n"
             "# the C library\n"
             "musl\t1.2.5\tpypi ziglang 0.13.0\n"
             "mpdecimal\t2.5.1\tbuilt from a tarball\n"
             "iptables-shim\t0.1.0\tsource 0123456789ab\n"
             "frozen-stdlib\tcollections.abc\n"
             "frozen-stdlib\tjson\n")
LIBPYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"


def sbom(tree, *args):
    r = subprocess.run([SBOM] + list(args) + [str(tree)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env={"PATH": "/usr/bin:/bin", "SOURCE_DATE_EPOCH": "1700000000"})
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def elf_files(tree):
    """{relative path: sha256} of the regular files starting with the ELF magic."""
    out = {}
    for d, dirs, files in os.walk(str(tree)):
        for name in files:
            path = os.path.join(d, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if data[:4] == b"\x7fELF":
                out[os.path.relpath(path, str(tree))] = hashlib.sha256(data).hexdigest()
    return out


def listed_files(doc, at=""):
    return {c["name"][len(at):].lstrip("/"): c["hashes"][0]["content"]
            for c in doc["components"] if c["type"] == "file"}


def assert_schema_valid(text):
    r = subprocess.run([tools_python(), "-c", "import sys\nfrom cyclonedx.validation.json import JsonStrictValidator\n"
                        "from cyclonedx.schema import SchemaVersion\n"
                        "e = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sys.stdin.read())\n"
                        "print(e or 'valid')"], input=text.encode(), stdout=subprocess.PIPE, check=True)
    assert r.stdout.decode().strip() == "valid", r.stdout.decode()


def make_tree(path, buildinfo=True):
    path.mkdir()
    shutil.copy("/bin/true", str(path / "iptables-shim"))
    for n in ("iptables", "iptables-save", "ip6tables"):
        (path / n).symlink_to("iptables-shim")
    (path / "iptables-shim.frozen").write_text("marker\n")
    if buildinfo:  # the one-file tree: nothing else
        (path / "BUILDINFO").write_text(BUILDINFO)
        return path
    lib = path / "_internal"
    lib.mkdir()
    (lib / "shim.pyc").write_bytes(b"\xa7\x0d\x0d\x0a" + b"\0" * 12)
    shutil.copy("/usr/lib/x86_64-linux-gnu/libz.so.1", str(lib / "libz.so.1"))
    (lib / "libz.so").symlink_to("libz.so.1")
    shutil.copy(LIBPYTHON, str(lib / "libpython3.11.so.1.0"))
    return path


def test_tree_with_buildinfo(tmp_path):
    tree = make_tree(tmp_path / "tree")
    text = sbom(tree)
    assert_schema_valid(text)
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH
    assert doc["metadata"]["component"]["name"] == "iptables-shim"
    assert listed_files(doc) == elf_files(tree) and set(elf_files(tree)) == {"iptables-shim"}
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert sorted(libs) == ["mpdecimal", "musl", "python", "zlib"]
    assert libs["python"]["version"] == "3.11.2"
    assert libs["python"]["purl"] == "pkg:deb/debian/python3.11@3.11.2-6%2Bdeb12u8?arch=source"
    # The modules frozen into the executable, inside python, with its version and origin.
    assert [(m["name"], m["version"]) for m in libs["python"]["components"]] == [
        ("collections.abc", "3.11.2"), ("json", "3.11.2")]
    assert {p["value"] for m in libs["python"]["components"] for p in m["properties"]} == {
        "frozen into iptables-shim from debian-source python3.11 3.11.2-6+deb12u8"}
    shim = doc["metadata"]["component"]
    assert shim["version"] == "0.1.0" and {"name": "iptables-shim:origin", "value": "source 0123456789ab"} in \
        shim["properties"], shim
    assert libs["zlib"]["purl"] == "pkg:deb/debian/zlib@1%3A1.2.13.dfsg-1?arch=source"
    assert libs["musl"]["purl"] == "pkg:pypi/ziglang@0.13.0"
    assert "purl" not in libs["mpdecimal"]
    for c in libs.values():
        assert "components" in c or c["name"] != "python"
        assert c["properties"] == [{"name": "iptables-shim:origin", "value": [
            l.split("\t")[2].strip() for l in BUILDINFO.splitlines() if l.startswith(c["name"] + "\t")][0]}]
    # The same tree gives the same document (time and serial number included).
    assert sbom(tree) == text
    # Paths as installed, and an image.
    doc = json.loads(sbom(tree, "--at", "/usr/lib/iptables-shim"))
    assert listed_files(doc, "/usr/lib/iptables-shim") == elf_files(tree)
    assert all(c["name"].startswith("/usr/lib/iptables-shim/") for c in doc["components"] if c["type"] == "file")
    text = sbom(tree, "--image", "localhost/iptables-shim:0.1.0-amd64", "--at", "/opt/iptables-shim")
    assert_schema_valid(text)
    doc = json.loads(text)
    assert doc["metadata"]["component"] == {"type": "container", "bom-ref": "image",
                                            "name": "localhost/iptables-shim:0.1.0-amd64"}
    assert doc["components"][0]["name"] == "iptables-shim"


def test_tree_without_buildinfo_says_what_its_files_say(tmp_path):
    if not os.path.exists(LIBPYTHON):
        pytest.skip("needs Debian's libpython3.11 (.ci/setup installs it)")
    tree = make_tree(tmp_path / "old", buildinfo=False)
    text = sbom(tree)
    assert_schema_valid(text)
    doc = json.loads(text)
    assert listed_files(doc) == elf_files(tree) and len(elf_files(tree)) == 3
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert sorted(libs) == ["libz.so.1", "python"]
    assert libs["python"]["version"].startswith("3.11.")  # from the version string inside libpython
    assert all(c["properties"] == [{"name": "iptables-shim:origin", "value": "unknown origin"}] for c in libs.values())


def test_bad_input_one_line(tmp_path):
    tree = make_tree(tmp_path / "tree")
    (tree / "BUILDINFO").write_text("python 3.11.2 no tabs\n")
    frozen_without_python = make_tree(tmp_path / "frozen-without-python")
    (frozen_without_python / "BUILDINFO").write_text("zlib\t1.2.13\tsource\nfrozen-stdlib\tjson\n")
    bad_module = make_tree(tmp_path / "bad-module")
    (bad_module / "BUILDINFO").write_text(BUILDINFO + "frozen-stdlib\tjson decoder\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in ([str(tree)], [str(frozen_without_python)], [str(bad_module)], [str(empty)],
                 [str(tmp_path / "missing")], [], ["--at"], ["--bogus", str(tree)]):
        r = subprocess.run([SBOM] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = r.stderr.decode()
        assert r.returncode != 0 and r.stdout == b"" and len(err.splitlines()) == 1, (args, err)
        assert err.startswith("sbom.py: "), err


@pytest.mark.images
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the frozen build")
def test_the_frozen_tree_and_the_package(tmp_path):
    tree = test_deb.frozen_tree()
    text = sbom(tree)
    assert_schema_valid(text)
    doc = json.loads(text)
    elves = elf_files(tree)
    assert elves and listed_files(doc) == elves
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert libs["python"].get("version", "").startswith("3."), libs
    # Exactly what BUILDINFO says is inside: the interpreter (its version, its Debian revision in
    # the purl), zlib, musl, the shim (its version and commit) and the frozen standard library.
    lines = [l.rstrip("\n").split("\t") for l in open(os.path.join(tree, "BUILDINFO")) if l.strip()]
    bundled = {f[0]: f for f in lines if f[0] != "frozen-stdlib"}
    assert sorted(bundled) == ["iptables-shim", "musl", "python", "zlib"], bundled
    assert sorted(libs) == ["musl", "python", "zlib"], libs
    for name in libs:
        assert libs[name]["version"] == bundled[name][1]
        assert libs[name]["properties"] == [{"name": "iptables-shim:origin", "value": bundled[name][2]}]
    debian_version = bundled["python"][2].split()[2]
    assert libs["python"]["purl"] == "pkg:deb/debian/python3.11@%s?arch=source" % debian_version.replace("+", "%2B")
    assert re.fullmatch(r"source [0-9a-f]{12}", bundled["iptables-shim"][2]), bundled
    assert {"name": "iptables-shim:origin", "value": bundled["iptables-shim"][2]} in doc["metadata"]["component"]["properties"]
    frozen = [f[1] for f in lines if f[0] == "frozen-stdlib"]
    assert frozen and [m["name"] for m in libs["python"]["components"]] == frozen
    # The .deb carries the same list, with the paths it installs.
    x = str(tmp_path / "x")
    subprocess.run(["dpkg-deb", "-x", test_deb.built_deb(), x], check=True)
    packaged = json.load(open(os.path.join(x, "usr", "share", "doc", "iptables-shim", "sbom.cdx.json")))
    assert listed_files(packaged, "/usr/lib/iptables-shim/shipped") == elves
