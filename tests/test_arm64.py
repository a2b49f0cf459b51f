"""The frozen shim for arm64, built on this x86-64 machine: `packaging/build.sh --arch arm64`.

The build runs in a Debian bullseye arm64 tree whose programs (debootstrap's second stage, pip,
PyInstaller) run under qemu-user-static, through a binfmt_misc entry registered only inside a
private user namespace (build.sh, in_root). Shown here: the tree is aarch64 (ELF e_machine 183),
whole (the six names, the marker, libpython), portable (glibc <= bullseye's 2.31), and
packaging/image.sh makes its FROM-scratch image for linux/arm64 holding that executable.

Not shown here: the arm64 shim deciding on a real arm64 kernel (an aarch64 VM); qemu-user does
not pass NETLINK_NETFILTER through, so running it emulated would prove nothing about the probes.

Cached like the image tests (tests/images): the tree and the build in
$IPTABLES_SHIM_TEST_CACHE (default /var/cache/iptables-shim-tests), rebuilt when shim/ or
packaging/ change; IPTABLES_SHIM_TEST_FRESH=1 builds from scratch. Mark `images`.
"""

import json
import os
import subprocess

import pytest

from conftest import REPO
from images import Workspace, source_key

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, namespaces, buildah"),
    pytest.mark.skipif(os.environ.get("IPTABLES_SHIM_TEST_ARM64") == "0",
                       reason="IPTABLES_SHIM_TEST_ARM64=0: the emulated arm64 build (8-15 min from scratch) is off"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-aarch64-static"),
                       reason="needs qemu-user-static (apt-get install -y qemu-user-static)"),
]

VERSION = [l.split('"')[1] for l in open(os.path.join(REPO, "pyproject.toml")) if l.startswith("version = ")][0]
EM_AARCH64 = 183


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


class Arm64(object):
    def __init__(self, ws, tree):
        self.ws, self.tree = ws, tree


@pytest.fixture(scope="module")
def arm64():
    ws = Workspace.open()
    try:
        key = source_key()
        out = os.path.join(ws.root, "dist-arm64")
        stamp = os.path.join(out, ".source-key")
        if not (os.path.exists(stamp) and open(stamp).read() == key):
            env = dict(os.environ, IPTABLES_SHIM_BUILD_ROOT=os.path.join(ws.trees, "bullseye-arm64-build"))
            ws.run([os.path.join(REPO, "packaging", "build.sh"), "--arch", "arm64", "--out", out],
                   what="packaging/build.sh --arch arm64 (emulated)", env=env, timeout=3600)
            with open(stamp, "w") as f:
                f.write(key)
        yield Arm64(ws, os.path.join(out, "iptables-shim"))
    finally:
        ws.close()


def test_the_tree_is_aarch64_and_whole(arm64):
    tree = arm64.tree
    assert elf_machine(os.path.join(tree, "iptables-shim")) == EM_AARCH64
    libs = [n for n in os.listdir(os.path.join(tree, "_internal")) if n.startswith("libpython3")]
    assert libs and all(elf_machine(os.path.join(tree, "_internal", n)) == EM_AARCH64 for n in libs), libs
    assert os.path.isfile(os.path.join(tree, "_internal", "iptables-shim.frozen"))
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        assert os.readlink(os.path.join(tree, name)) == "iptables-shim", name
    # Portable: no glibc symbol newer than bullseye's 2.31 (objdump reads foreign ELF files too).
    r = subprocess.run("objdump -T %s/iptables-shim %s/_internal/*.so* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1"
                       % (tree, tree), shell=True, stdout=subprocess.PIPE)
    version = r.stdout.decode().strip()
    arm64.ws.log("arm64 tree needs %s" % version)
    assert version and tuple(int(x) for x in version[6:].split(".")) <= (2, 31), version


def test_the_arm64_image_holds_the_aarch64_tree(arm64):
    ws = arm64.ws
    env = dict(os.environ, CONTAINERS_CONF=ws.conf,
               BUILDAH="buildah --root %s --runroot %s" % (ws.storage, ws.runroot))
    r = ws.run([os.path.join(REPO, "packaging", "image.sh"), "--tree", "arm64=" + arm64.tree],
               what="packaging/image.sh arm64", env=env)
    name = "localhost/iptables-shim:%s-arm64" % VERSION
    assert r.stdout.decode().split() == [name, "localhost/iptables-shim:%s" % VERSION]
    inspect = json.loads(ws.podman(["image", "inspect", name]).stdout.decode())[0]
    assert (inspect["Os"], inspect["Architecture"]) == ("linux", "arm64")
    manifest = json.loads(ws.buildah(["manifest", "inspect", "localhost/iptables-shim:%s" % VERSION]).stdout.decode())
    assert [m["platform"]["architecture"] for m in manifest["manifests"]] == ["arm64"]
    ctr = ws.buildah(["from", "--pull-never", name]).stdout.decode().split()[-1]
    try:
        mnt = ws.buildah(["mount", ctr]).stdout.decode().strip()
        assert sorted(os.listdir(mnt)) == ["opt"] and os.listdir(os.path.join(mnt, "opt")) == ["iptables-shim"]
        assert elf_machine(os.path.join(mnt, "opt/iptables-shim/iptables-shim")) == EM_AARCH64
        assert sorted(os.listdir(os.path.join(mnt, "opt/iptables-shim"))) == sorted(os.listdir(arm64.tree))
    finally:
        ws.buildah(["rm", ctr], check=False)
