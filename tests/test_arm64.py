"""The frozen shim for arm64, cross-compiled on this x86-64 machine: `packaging/build.sh --arch
arm64` (zig targets aarch64-linux-musl; nothing runs emulated). Shown here: the tree is aarch64
(ELF e_machine 183), whole (the six names, the marker), needs nothing from the image (no
interpreter, no library), and packaging/image.sh makes its FROM-scratch image for linux/arm64
holding that executable.

And in an aarch64 VM (mark `vm`; tests/vm.py with arch="arm64": qemu-system-aarch64 -M virt, TCG,
Debian bullseye's arm64 kernel 5.10), the frozen aarch64 shim decides on that real kernel, read back
with the real save binaries: legacy rules -> legacy, nft rules -> nft, an empty netns -> the image's
alias (legacy, then nft); detection loads no module. qemu-user does not pass NETLINK_NETFILTER
through, so the probes must run under a real arm64 kernel, not emulated beside this one. The VM's
disk is made from a bullseye arm64 root with the kernel and all its modules, iptables (both
variants, the alternatives' links as its postinst makes them) and nftables, assembled from Debian's
.debs (tests/debroot.py: apt resolves the Depends, `dpkg -x` extracts them, one depmod runs under
qemu-user-static; ~20 s from scratch) while the tree cross-compiles. IPTABLES_SHIM_TEST_ARM64_VM=0
turns the VM off.

Cached like the image tests (tests/images): the tree and the build in
$IPTABLES_SHIM_TEST_CACHE (default /var/cache/iptables-shim-tests), rebuilt when shim/ or
packaging/ change (the interpreter itself only when its sources or toolchain do); IPTABLES_SHIM_TEST_FRESH=1 builds from scratch. Mark `images`.
"""

import concurrent.futures
import json
import os
import re
import subprocess

import pytest

import debroot
import vm
from conftest import REPO
from images import VERSION, Workspace, elf_machine
from shim.log import parse_line
from test_vm_kernels import ADDR, COLD, MAIN, field, landed_of, script

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: dpkg -x, namespaces, buildah, qemu"),
    pytest.mark.skipif(os.environ.get("IPTABLES_SHIM_TEST_ARM64") == "0",
                       reason="IPTABLES_SHIM_TEST_ARM64=0: the arm64 tests are off"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-aarch64-static"),
                       reason="needs qemu-user-static (apt-get install -y qemu-user-static)"),
]

EM_AARCH64 = 183
# The VM root's packages, with what they depend on (tests/debroot.py); the kernel comes with it.
VM_SUITE = "bullseye"
VM_PACKAGES = ("kmod", "iptables", "nftables", "iproute2", "util-linux", "mount", "dash", "coreutils", "grep",
               "sed", "mawk", "findutils", "netbase")


class Arm64(object):
    __slots__ = ("ws", "tree", "root")

    def __init__(self, ws, tree, root):
        self.ws, self.tree, self.root = ws, tree, root


@pytest.fixture(scope="module")
def arm64():
    ws = Workspace.open()
    try:
        root = os.path.join(ws.trees, "%s-arm64-vm" % VM_SUITE)
        # The VM's root is assembled (downloads, dpkg -x) while the tree cross-compiles.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            vm_root = None
            if os.environ.get("IPTABLES_SHIM_TEST_ARM64_VM") != "0":
                vm_root = pool.submit(debroot.build, ws, root, VM_SUITE, "arm64", VM_PACKAGES)
            dist, _ = ws.frozen("arm64")
            if vm_root is not None:
                vm_root.result()
        yield Arm64(ws, os.path.join(dist, "iptables-shim"), root)
    finally:
        ws.close()


def test_the_tree_is_aarch64_and_whole(arm64):
    tree = arm64.tree
    assert elf_machine(os.path.join(tree, "iptables-shim")) == EM_AARCH64
    assert os.path.isfile(os.path.join(tree, "iptables-shim.frozen"))
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        assert os.readlink(os.path.join(tree, name)) == "iptables-shim", name
    # Needs nothing from the image: no interpreter, no library (tests/test_frozen_tree.py holds
    # the same for amd64).
    r = subprocess.run(["readelf", "-ld", os.path.join(tree, "iptables-shim")], stdout=subprocess.PIPE, check=True)
    headers = r.stdout.decode()
    assert "INTERP" not in headers and "(NEEDED)" not in headers, headers


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


# -- the aarch64 VM ------------------------------------------------------------------------------

# The frozen tree is copied onto the VM's tmpfs (the shim's own directory, first on PATH), then
# the cases of tests/test_vm_kernels.py: cold calls (nothing of netfilter loaded), and decisions
# with the image's real binaries, read back with iptables-{nft,legacy}-save.
VM_SCRIPT = script(
    COLD,
    "mkdir -p /tmp/fz && cp -a /mnt/arm64shim /tmp/fz/bin && export SHIM=/tmp/fz",
    "section boot; echo \"machine: $(uname -m)\"; echo \"release: $(uname -r)\"; echo \"modules: $(mods)\"",
    "echo \"shim: $(od -An -tx1 -j18 -N2 /tmp/fz/bin/iptables-shim | tr -d ' ')\"",
    "mkimage /tmp/nftalias nft standin nft legacy; mkimage /tmp/legacyalias legacy standin nft legacy",
    "cold_case 'cold hidden nft' hidden /tmp/nftalias new",
    "cold_case 'cold visible legacy' visible /tmp/legacyalias new",
    "mkimage /tmp/real-nft nft real nft legacy; mkimage /tmp/real-legacy legacy real nft legacy",
    MAIN[MAIN.index("kcase() {"):MAIN.index("# -- timing")],
    # The launcher's C route on the aarch64 kernel (5.10: no netns cookie, so no cache entry is
    # trusted and a container's call is Python's): a host-context call (step 2) it answers, explain
    # saying which route answers each, the log line, and where the rule landed.
    r"""section "fast route"
unshare -n sh -c '. /tmp/prelude.sh
    call() { env -i PATH=$SHIM/bin:/tmp/real-nft:/usr/bin:/bin LC_ALL=C IPTABLES_SHIM_CACHE_DIR=/tmp/cache-route \
        IPTABLES_SHIM_LOG=/tmp/route.log "$@"; }
    call IPTABLES_SHIM_CONTEXT=container iptables-shim explain | grep "^route:"
    call IPTABLES_SHIM_CONTEXT=host iptables-shim explain | grep "^route:"
    call IPTABLES_SHIM_CONTEXT=host iptables -A INPUT -s ADDR -j ACCEPT; echo "rc=$?"
    cat /tmp/route.log; landed' 2>&1""".replace("ADDR", ADDR),
)


@pytest.fixture(scope="module")
def arm64_vm(arm64):
    vm.skip_unless_arm64_vm()
    # Its own VMs: with IPTABLES_SHIM_TEST_FRESH=1 its temporary disk directory goes at the end of
    # this module, whether or not tests/test_vm_kernels.py runs.
    v = vm.VMs.open()
    try:
        v.disk(VM_SUITE + "-arm64", arch="arm64", tree=arm64.root)
        rc, out = v.run(VM_SUITE + "-arm64", VM_SCRIPT, shares={"arm64shim": arm64.tree})
    finally:
        v.close()
    assert rc == 0, out
    return vm.sections(out)


@pytest.mark.vm
def test_the_vm_is_an_arm64_kernel_running_the_aarch64_shim(arm64_vm):
    out = arm64_vm["boot"]
    # uname -m says aarch64 under qemu-user too: the release is what shows Debian's arm64 kernel.
    assert field(out, "machine") == "aarch64" and field(out, "release").endswith("-arm64"), out
    assert field(out, "shim") == "b700", out  # e_machine 183, little-endian: the frozen aarch64 tree
    mods = field(out, "modules").split()
    assert not [m for m in mods if m.startswith(("nf", "x_tables", "ip_tables", "ip6_tables", "iptable"))], mods


@pytest.mark.vm
def test_arm64_host_call_takes_the_fast_route(arm64_vm):
    """On the aarch64 kernel the launcher's C route answers a host-context call (explain says so;
    the log line is step 2's), and the rule lands in the alias's backend; a container's call there
    is Python's, since Linux 5.10 has no netns cookie to trust a cache entry by."""
    out = arm64_vm["fast route"]
    routes = re.findall(r"^route: +(.*)$", out, re.M)
    assert routes == ["python (no netns cookie (Linux < 5.14): Python decides)",
                      "launcher (a settled answer: the C route runs it before Python starts)"], out
    assert re.findall(r"^rc=(\d+)$", out, re.M) == ["0"], out
    lines = [parse_line(l) for l in out.splitlines() if " pid=" in l]
    assert [(l["backend"], l["step"], l["how"]) for l in lines] == [
        ("nft", 2, "answered by the caller's own facts, not cached")], out
    assert landed_of(out) == (1, 0), out


@pytest.mark.vm
@pytest.mark.parametrize("case", ["cold hidden nft", "cold visible legacy"])
def test_arm64_detection_loads_no_module(arm64_vm, case):
    out = arm64_vm[case]
    assert field(out, "before") == field(out, "after"), out
    assert re.findall(r"^rc=(\d+)$", out, re.M) == ["0", "0", "0"], out


@pytest.mark.vm
@pytest.mark.parametrize("case,expected", [
    ("decide legacy rules", (0, 1)), ("decide nft rules", (1, 0)), ("decide legacy hint", (0, 1)),
    ("decide nft hint", (1, 0)), ("decide empty nft alias", (1, 0)), ("decide empty legacy alias", (0, 1)),
])
def test_arm64_decision_read_back_from_the_arm64_kernel(arm64_vm, case, expected):
    out = arm64_vm[case]
    print("%s: %s" % (case, out.replace("\n", " | ")))
    assert "rc=0" in out and landed_of(out) == expected, out
