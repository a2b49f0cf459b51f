"""Issue 4: the frozen shim in container images, under a real OCI runtime (podman + runc).

Images are built here from scratch (debootstrap minbase trees, no Python in them) and layered with
packaging/Containerfile over the frozen tree that packaging/build.sh makes (static: no libc from the image).
Rules are read back from the kernel with the real save binaries: from the host with nsenter for a
named netns, inside the container for `--network none`. Slow (minutes on a fresh cache): mark
`images`; run with `/usr/bin/python3 -m pytest -q -m images tests/test_images.py`. Figures and
timings go to logs/images.log in the cache directory (see tests/images/__init__.py).
"""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import REPO, SYSTEM_PATH
from shim.tools import SHIM_NAMES
from images import CONTAINER_PATH, VERSION, Workspace, elf_machine

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, podman/runc containers, netns"),
]

DEBUG = {"IPTABLES_SHIM_DEBUG": "1"}


class Built(object):
    def __init__(self, ws, dist, images):
        self.ws, self.dist, self.images = ws, dist, images

    def run(self, suite, script, **kw):
        r = self.ws.run_in(self.images[suite], script, **kw)
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


@pytest.fixture(scope="session")
def built():
    ws = Workspace.open()
    try:
        # The two image trees download while the frozen build runs.
        procs = [ws.start_tree(s) for s in ("bookworm", "bullseye")]
        try:
            dist, key = ws.frozen()
        finally:
            for p in procs:
                ws.finish_tree(p)
        images = {s: ws.shim_image(s, "legacy", dist, key) for s in ("bookworm", "bullseye")}
        yield Built(ws, dist, images)
    finally:
        ws.close()


def section(text, marker):
    """Lines after `--- marker` up to the next `--- ` line."""
    lines = text.splitlines()
    start = lines.index("--- " + marker) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("--- ")), len(lines))
    return lines[start:end]


def rules_in(lines):
    return [l for l in lines if l.startswith("-A ")]


# -- the frozen tree itself -----------------------------------------------------------------------

def test_frozen_tree_is_one_directory_with_the_six_names(built):
    """The executable, the six links, the marker and BUILDINFO (no lib/: the executable carries its
    Python); that it needs nothing from the image is tests/test_frozen_tree.py's to show."""
    tree = os.path.join(built.dist, "iptables-shim")
    for name in sorted(SHIM_NAMES):
        assert os.readlink(os.path.join(tree, name)) == "iptables-shim", name
    assert os.path.isfile(os.path.join(tree, "iptables-shim"))
    assert sorted(os.listdir(tree)) == sorted(
        list(SHIM_NAMES) + ["iptables-shim", "iptables-shim.frozen", "BUILDINFO"])
    components = [l.split("\t")[0] for l in open(os.path.join(tree, "BUILDINFO"))]
    assert components[:4] == ["python", "zlib", "musl", "iptables-shim"], components
    assert components[4:] and set(components[4:]) == {"frozen-stdlib"}, components


def test_frozen_shim_hands_the_callers_environment_and_argv_to_the_real_binary(built, tmp_path):
    """Nothing the tree needs for itself (library paths, Python's variables) reaches what it runs."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "iptables-nft").write_text(
        '#!/bin/sh\necho "argv0=$0"; for a in "$@"; do echo "arg=$a"; done; /usr/bin/env; echo "pid=$$"\n')
    (fake / "iptables-nft").chmod(0o755)
    tree = os.path.join(built.dist, "iptables-shim")
    env = {"PATH": "%s:%s" % (tree, fake), "IPTABLES_SHIM_MODE": "nft", "LC_ALL": "C"}
    r = subprocess.run([os.path.join(tree, "iptables"), "-A", "IN PUT", "--ünï"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert out.splitlines()[:3] == ["argv0=%s" % (fake / "iptables-nft"), "arg=-A", "arg=IN PUT"]
    assert "arg=--ünï" in out
    assert "LD_LIBRARY_PATH" not in out and "_PYI_" not in out and "_MEI" not in out
    env["LD_LIBRARY_PATH"] = "/callers/own"
    p = subprocess.Popen([os.path.join(tree, "iptables")], env=env, stdout=subprocess.PIPE)
    out = p.communicate(timeout=30)[0].decode()
    assert "LD_LIBRARY_PATH=/callers/own" in out.splitlines()
    # The shim's hand-over is an exec: the real binary runs in the PID its caller started.
    assert "pid=%d" % p.pid in out.splitlines(), out


def test_frozen_shim_sees_the_same_facts_as_the_source_shim(built, netns):
    """Same facts, from the same probes (kernel, not a fallback), same decision: nothing the
    shim imports is missing from the bundle."""
    netns.ok("iptables-nft -A INPUT -s 192.0.2.60 -j ACCEPT; iptables-legacy -t mangle -N KUBE-IPTABLES-HINT;"
             " ip6tables-legacy -A INPUT -s 2001:db8::1 -j DROP")
    reports = {}
    for how, shim in (("source", os.path.join(REPO, "bin", "iptables-shim")),
                      ("frozen", os.path.join(built.dist, "iptables-shim", "iptables-shim"))):
        r = netns.run([shim, "explain", "--json"], env={"PATH": SYSTEM_PATH, "IPTABLES_SHIM_CONTEXT": "container",
                                                          "IPTABLES_SHIM_CACHE": "off"})
        assert r.returncode == 0, r.stderr
        reports[how] = json.loads(r.stdout.decode())
    built.ws.log("explain backends, frozen: %s" % reports["frozen"]["backends"])
    for key in ("backends", "decision", "default_alias", "context", "binaries", "runs", "warnings"):
        assert reports["frozen"][key] == reports["source"][key], key
    assert reports["frozen"]["decision"]["backend"] == "legacy"  # the hint
    assert all(b["source"].startswith("kernel") for b in reports["frozen"]["backends"].values())


def test_frozen_copy_on_path_stops_instead_of_looping(built, tmp_path):
    """Two copies of the frozen tree on PATH, nothing real behind them: one error line, fast."""
    tree = os.path.join(built.dist, "iptables-shim")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    shutil.copytree(tree, a, symlinks=True)
    shutil.copytree(tree, b, symlinks=True)
    env = {"PATH": "%s:%s" % (a, b), "IPTABLES_SHIM_CONTEXT": "container", "IPTABLES_SHIM_CACHE": "off"}
    r = subprocess.run(["/usr/bin/unshare", "-n", os.path.join(a, "iptables"), "-S"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    err = r.stderr.decode()
    assert r.returncode == 127 and r.stdout == b""
    assert len(err.splitlines()) == 1 and err.startswith("iptables-shim: "), err
    # With the real binaries behind them, the copy is no default alias: /usr/sbin/iptables is.
    env["PATH"] = "%s:%s:%s" % (a, b, SYSTEM_PATH)
    r = subprocess.run(["/usr/bin/unshare", "-n", os.path.join(a, "iptables-shim"), "explain", "--json"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    report = json.loads(r.stdout.decode())
    assert report["default_alias"]["path"] == "/usr/sbin/iptables", report["default_alias"]
    assert not [p for p in report["binaries"].values() if p.startswith(b)], report["binaries"]


# -- in images ------------------------------------------------------------------------------------

def test_image_without_python_runs_the_frozen_shim(built):
    rc, out, err = built.run("bookworm", (
        "for p in python3 python3.11 python3.9 python; do command -v $p && exit 9; done; "
        "ls -d /usr/bin/python* /usr/lib/python3* 2>/dev/null && exit 8; "
        "command -v iptables; readlink /usr/local/sbin/iptables; iptables -V; iptables-shim explain; "
        # install, from the frozen shim: idempotent, and the image's own /usr/sbin is refused.
        "echo '--- install'; iptables-shim install /usr/local/sbin | sed 's/.*: //' | sort | uniq -c; "
        "iptables-shim install /usr/sbin; echo rc=$?; readlink /usr/sbin/iptables"),
        env=DEBUG)
    assert rc == 0, (out, err)
    assert [l.split() for l in section(out, "install")] == [
        ["7", "already", "this", "shim"], ["rc=127"], ["/etc/alternatives/iptables"]], out
    assert "iptables-shim: refusing to install into /usr/sbin" in err, err
    lines = out.splitlines()
    assert lines[:3] == ["/usr/local/sbin/iptables", "/opt/iptables-shim/iptables-shim",
                         "iptables v1.8.9 (legacy)"], out
    assert "iptables-shim: iptables -> /usr/sbin/iptables-legacy: legacy" in err
    assert any(l.startswith("decision:      legacy (step 6") for l in lines), out


def test_init_container_in_an_empty_netns_gets_the_images_legacy(built):
    rc, out, err = built.run("bookworm", (
        "readlink -f /usr/sbin/iptables; iptables -A INPUT -s 192.0.2.1 -j DROP || exit 3; "
        "echo '--- legacy'; iptables-legacy-save; echo '--- nft'; iptables-nft-save"),
        network="none", env=DEBUG)
    assert rc == 0, (out, err)
    assert out.splitlines()[0] == "/usr/sbin/xtables-legacy-multi"
    assert rules_in(section(out, "legacy")) == ["-A INPUT -s 192.0.2.1/32 -j DROP"]
    assert rules_in(section(out, "nft")) == []
    assert "-> /usr/sbin/iptables-legacy: legacy (step 6" in err, err


def test_node_agent_joining_a_netns_with_nft_rules_writes_to_nft(built, netns):
    netns.ok("iptables-nft -A INPUT -s 192.0.2.20 -j ACCEPT")
    rc, out, err = built.run("bookworm", (
        "readlink -f /usr/sbin/iptables; iptables -A INPUT -s 192.0.2.21 -j DROP"),
        network="ns:" + netns.path, env=DEBUG)
    assert rc == 0, (out, err)
    assert out.strip() == "/usr/sbin/xtables-legacy-multi"  # the image aliases legacy
    assert netns.rules("nft") == ["-A INPUT -s 192.0.2.20/32 -j ACCEPT", "-A INPUT -s 192.0.2.21/32 -j DROP"]
    assert netns.rules("legacy") == []
    assert netns.ok("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null || true") == ""
    assert "-> /usr/sbin/iptables-nft: nft (step 4" in err, err


def test_older_iptables_in_the_image_decides_right_and_explain_warns(built, netns):
    """bullseye's iptables 1.8.7 against a rule the host's 1.8.9 wrote with a native port range,
    which 1.8.7's iptables-nft-save cannot parse (`Table 'filter' is incompatible`)."""
    netns.ok("iptables-nft -A INPUT -p tcp --dport 80:90 -j ACCEPT")
    rc, out, err = built.run("bullseye", (
        "iptables-nft -V; iptables -A INPUT -s 192.0.2.30 -j DROP || exit 3; iptables-shim explain"),
        network="ns:" + netns.path, env=DEBUG)
    assert rc == 0, (out, err)
    assert out.splitlines()[0] == "iptables v1.8.7 (nf_tables)"
    assert "-> /usr/sbin/iptables-nft: nft (step 4" in err, err
    assert netns.rules("nft") == ["-A INPUT -p tcp -m tcp --dport 80:90 -j ACCEPT",
                                  "-A INPUT -s 192.0.2.30/32 -j DROP"]
    assert netns.rules("legacy") == []
    warnings = [l for l in out.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "/usr/sbin/iptables-nft-save cannot read" in warnings[0], out
    assert "Table `filter' is incompatible" in warnings[0]
    # Once only rules 1.8.7 can read remain, explain has nothing to warn about.
    netns.ok("iptables-nft -D INPUT -p tcp --dport 80:90 -j ACCEPT")
    rc, out, err = built.run("bullseye", "iptables-shim explain", network="ns:" + netns.path)
    assert rc == 0 and "decision:      nft (step 4" in out, (out, err)
    assert "warning:" not in out, out


def test_read_only_root_filesystem(built, netns):
    # podman's --read-only: / read-only, tmpfs on /run, /tmp, /var/tmp (the cache lives in /run).
    rc, out, err = built.run("bookworm", (
        "touch /opt/iptables-shim/x 2>/dev/null && exit 4; touch /usr/local/sbin/x 2>/dev/null && exit 4; "
        "iptables -A INPUT -s 192.0.2.40 -j DROP || exit 3; iptables -S >/dev/null || exit 5; "
        "echo '--- legacy'; iptables-legacy-save"),
        network="none", read_only="tmpfs", env=DEBUG)
    assert rc == 0, (out, err)
    assert rules_in(section(out, "legacy")) == ["-A INPUT -s 192.0.2.40/32 -j DROP"]
    # First call: empty netns, the alias decides; second: the rule it wrote now decides.
    assert "legacy (step 6" in err and "legacy (step 5" in err, err
    # Nothing writable at all (not even /tmp or /run): the shim still decides and runs.
    netns.ok("iptables-nft -A INPUT -s 192.0.2.41 -j ACCEPT")
    rc, out, err = built.run("bookworm", (
        "touch /tmp/x 2>/dev/null && exit 4; iptables -A INPUT -s 192.0.2.42 -j DROP || exit 3"),
        network="ns:" + netns.path, read_only="all", env=DEBUG)
    assert rc == 0, (out, err)
    assert "-> /usr/sbin/iptables-nft: nft (step 4" in err, err
    assert netns.rules("nft") == ["-A INPUT -s 192.0.2.41/32 -j ACCEPT", "-A INPUT -s 192.0.2.42/32 -j DROP"]


# -- the image to copy from (packaging/image.sh) ------------------------------------------------

SHIM_IMAGE = "localhost/iptables-shim"


def make_shim_images(ws, trees):
    """packaging/image.sh over {arch: frozen tree}: iptables-shim:VERSION-ARCH and the manifest,
    in the workspace's storage. Returns the names image.sh printed."""
    env = {"BUILDAH": "buildah --root %s --runroot %s" % (ws.storage, ws.runroot), "CONTAINERS_CONF": ws.conf}
    args = [os.path.join(REPO, "packaging", "image.sh")]
    for arch, tree in sorted(trees.items()):
        args += ["--tree", "%s=%s" % (arch, tree)]
    r = ws.run(args, what="packaging/image.sh %s" % " ".join(sorted(trees)), env=dict(os.environ, **env))
    return r.stdout.decode().split()


def image_files(ws, image):
    """{relative path: absolute path in a mounted working container} of an image, and a cleanup."""
    ctr = ws.buildah(["from", "--pull-never", image], what="buildah from " + image).stdout.decode().split()[-1]
    mnt = ws.buildah(["mount", ctr], what="buildah mount").stdout.decode().strip()
    files = {}
    for d, dirs, names in os.walk(mnt):
        for n in dirs + names:
            p = os.path.join(d, n)
            files[os.path.relpath(p, mnt)] = p
    return files, lambda: ws.buildah(["rm", ctr], what="buildah rm", check=False)


@pytest.fixture(scope="session")
def shim_image(built):
    names = make_shim_images(built.ws, {"amd64": os.path.join(built.dist, "iptables-shim")})
    assert names == ["%s:%s-amd64" % (SHIM_IMAGE, VERSION), "%s:%s" % (SHIM_IMAGE, VERSION)], names
    return names


def test_scratch_image_holds_only_the_frozen_tree(built, shim_image):
    inspect = json.loads(built.ws.podman(["image", "inspect", shim_image[0]]).stdout.decode())[0]
    assert (inspect["Os"], inspect["Architecture"]) == ("linux", "amd64")
    assert len(inspect["RootFS"]["Layers"]) == 1  # FROM scratch: one layer, the COPY
    files, cleanup = image_files(built.ws, shim_image[0])
    try:
        tops = sorted({p.split("/")[0] for p in files})
        assert tops == ["opt"] and sorted(p for p in files if p.count("/") == 0 or p == "opt/iptables-shim") == [
            "opt", "opt/iptables-shim"], tops
        assert elf_machine(files["opt/iptables-shim/iptables-shim"]) == 62
        assert os.readlink(files["opt/iptables-shim/ip6tables-save"]) == "iptables-shim"
    finally:
        cleanup()
    manifest = json.loads(built.ws.buildah(["manifest", "inspect", shim_image[1]]).stdout.decode())
    assert [m["platform"]["architecture"] for m in manifest["manifests"]] == ["amd64"]
    # Its SBOM, beside the tree: the image, and the executable among its files.
    with open(os.path.join(built.dist, "iptables-shim-%s-amd64.cdx.json" % VERSION)) as f:
        sbom = json.load(f)
    assert shim_image[0] in json.dumps(sbom["metadata"]), sbom["metadata"]
    assert any(c.get("name", "").endswith("iptables-shim/iptables-shim") for c in sbom["components"]), sbom["components"]


@pytest.fixture(scope="session")
def copied_image(built, shim_image):
    """A Python-less base (bookworm, iptables aliased to legacy) that copies the shim from the
    manifest, as an image author writes it, and installs it."""
    return copy_shim_into(built.ws, built.ws.alias_image("bookworm", "legacy"), shim_image[1],
                          "localhost/shimtest/bookworm-copied:latest")


def copy_shim_into(ws, base, shim_manifest, name, path_line=""):
    """`name`: base + the shim's tree COPY --from the manifest + install, as an image author
    writes it (packaging/Containerfile.scratch)."""
    ctx = tempfile.mkdtemp(prefix="shimtest-copy-")
    try:
        with open(os.path.join(ctx, "Containerfile"), "w") as f:
            f.write("FROM %s\nCOPY --from=%s /opt/iptables-shim /opt/iptables-shim\n%s"
                    'RUN ["/opt/iptables-shim/iptables-shim", "install", "/usr/local/sbin"]\n'
                    % (base, shim_manifest, path_line))
        ws.buildah(["bud", "--network", "none", "--isolation", "oci", "-t", name, ctx],
                   what="buildah bud COPY --from the manifest into " + base.split("/")[-1])
    finally:
        shutil.rmtree(ctx)
    return name


def test_copy_from_the_image_into_a_python_less_base(built, copied_image, make_netns):
    ws = built.ws
    r = ws.run_in(copied_image, "for p in python3 python; do command -v $p && exit 9; done; "
                  "readlink /usr/local/sbin/iptables /usr/local/sbin/iptables-shim; readlink -f /usr/sbin/iptables")
    assert r.returncode == 0, r
    assert r.stdout.decode().split() == ["/opt/iptables-shim/iptables-shim"] * 2 + ["/usr/sbin/xtables-legacy-multi"]
    write = "iptables -A INPUT -s 192.0.2.%d -j DROP && ip6tables -A INPUT -s 2001:db8::%d -j DROP"
    cases = [("nft", "iptables-nft -A INPUT -s 192.0.2.50 -j ACCEPT", 51),   # against the image's alias
             ("legacy", "iptables-legacy -A INPUT -s 192.0.2.52 -j ACCEPT", 53),
             ("legacy", "", 54)]                                               # empty: the alias
    for backend, setup, n in cases:
        ns = make_netns()
        if setup:
            ns.ok(setup)
        r = ws.run_in(copied_image, write % (n, n), network="ns:" + ns.path, env=DEBUG)
        assert r.returncode == 0, (backend, setup, r.stderr)
        other = "legacy" if backend == "nft" else "nft"
        assert "-A INPUT -s 192.0.2.%d/32 -j DROP" % n in ns.rules(backend), (backend, setup)
        assert "-A INPUT -s 2001:db8::%d/128 -j DROP" % n in ns.rules(backend, "ip6tables"), (backend, setup)
        assert ns.rules(other) == [] and ns.rules(other, "ip6tables") == [], (backend, setup)


def test_frozen_doctor_gives_the_same_json_as_the_source(built, make_netns, tmp_path):
    """`doctor --json` from the frozen tree equals the source one's (timings aside), over a healthy
    nft netns, a healthy legacy one and a split one."""
    from test_doctor import assert_frozen_doctor_matches_source

    spaces = [make_netns() for _ in range(3)]
    spaces[0].ok("iptables-nft -A INPUT -j ACCEPT")
    spaces[1].ok("iptables-legacy -A INPUT -j ACCEPT")
    spaces[2].ok("iptables-nft -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j DROP")  # split: exit 1
    cache_dir = tmp_path / "cache"
    os.mkdir(str(cache_dir), 0o700)
    assert_frozen_doctor_matches_source(os.path.join(built.dist, "iptables-shim", "iptables-shim"), spaces,
                                        cache_dir, tmp_path)


def test_copy_from_the_image_into_a_musl_only_base(built, shim_image, make_netns):
    """The scratch image's tree copied (COPY --from, as an Alpine-based image's author writes it)
    into a musl-only root (tests/musl.py: Debian's musl, busybox, iptables built for musl, legacy
    only), installed there, and run under podman: the image's own legacy iptables where legacy
    holds the rules or nothing does; where nft holds them, the one-line error (the image has no
    nft variant), nothing written."""
    import musl

    ws = built.ws
    root = musl.Builder(ws).root("amd64")
    base = "localhost/shimtest/musl-base:" + root.key
    if not ws.image_exists(base):
        tar = subprocess.Popen(["tar", "-C", root.path, "-c", "."], stdout=subprocess.PIPE)
        ws.podman(["import", "-", base], stdin=tar.stdout, what="tar | podman import musl root")
        tar.stdout.close()
        assert tar.wait() == 0
    name = copy_shim_into(ws, base, shim_image[1], "localhost/shimtest/musl-copied:latest",
                          "ENV PATH=%s\n" % CONTAINER_PATH)
    for case, setup, n in [("legacy rules", "iptables-legacy -A INPUT -s 192.0.2.60 -j ACCEPT", 61),
                           ("empty", "", 62)]:
        ns = make_netns()
        if setup:
            ns.ok(setup)
        r = ws.run_in(name, "iptables -A INPUT -s 192.0.2.%d -j DROP && ip6tables -A INPUT -s 2001:db8::%d -j DROP"
                      % (n, n), network="ns:" + ns.path)
        assert r.returncode == 0 and r.stderr == b"", (case, r.stderr)
        assert "-A INPUT -s 192.0.2.%d/32 -j DROP" % n in ns.rules("legacy"), case
        assert "-A INPUT -s 2001:db8::%d/128 -j DROP" % n in ns.rules("legacy", "ip6tables"), case
        assert ns.rules("nft") == [], case
    ns = make_netns()
    ns.ok("iptables-nft -A INPUT -s 192.0.2.63 -j ACCEPT")
    r = ws.run_in(name, "iptables -A INPUT -s 192.0.2.64 -j DROP", network="ns:" + ns.path)
    err = r.stderr.decode()
    assert r.returncode == 127 and err.startswith("iptables-shim:") and err.count("\n") == 1, (r.returncode, err)
    assert "iptables-nft" in err, err
    assert ns.rules("nft") == ["-A INPUT -s 192.0.2.63/32 -j ACCEPT"] and ns.rules("legacy") == []
