"""Real container images for the frozen shim: debootstrap trees, podman/buildah, one place for flags.

No registry is reachable, so every image starts as a local `debootstrap --variant=minbase` tree
(Debian's mirror is reachable) imported with `tar -C TREE -c . | podman import - NAME`; test
variants are layered with buildah from tests/images/alias.Containerfile and packaging/Containerfile.

Everything is cached between local runs in $IPTABLES_SHIM_TEST_CACHE (default
/var/cache/iptables-shim-tests): trees (stamp files), the frozen builds and their toolchain (keyed on a hash of
shim/ and packaging/), images (tagged with a hash of what they were made from). With
IPTABLES_SHIM_TEST_FRESH=1 (what .ci/run sets) one new empty cache serves the whole run and is
removed afterwards, so CI builds everything from scratch, once. Every step and its duration goes to logs/images.log in the cache.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time

import debootstrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = "/var/cache/iptables-shim-tests"
IMAGE_PACKAGES = "iptables"  # and nothing else: no Python in any test image
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_FRESH = []  # the one fresh Workspace of this run, if IPTABLES_SHIM_TEST_FRESH=1


def _hash(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


# The version images are tagged with: pyproject.toml's.
VERSION = [l.split('"')[1] for l in open(os.path.join(REPO, "pyproject.toml")) if l.startswith("version = ")][0]


def elf_machine(path):
    """e_machine of an ELF file: 62 x86-64, 183 aarch64."""
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


def source_key():
    """Hash of everything the frozen build is made from."""
    parts = []
    for top in ("shim", "packaging"):
        for d, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".pyc"):
                    continue
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    parts += [os.path.relpath(p, REPO), fh.read()]
    return _hash(*parts)


class Workspace(object):
    def __init__(self, root, fresh):
        self.root = root
        self.fresh = fresh
        self.trees = os.path.join(root, "trees")
        self.logfile = os.path.join(root, "logs", "images.log")
        self.storage = os.path.join(root, "containers", "storage")
        # Run-time state of podman belongs on tmpfs (stale after a reboot, like /run itself).
        self.runroot = "/run/iptables-shim-tests/" + _hash(root)
        self.conf = os.path.join(root, "containers", "containers.conf")
        for d in (self.trees, os.path.dirname(self.logfile), os.path.dirname(self.conf), self.runroot):
            os.makedirs(d, exist_ok=True)
        # This machine may not raise rlimits: podman must not try to set any.
        with open(self.conf, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
        self.log("workspace %s (fresh=%s)" % (root, fresh))

    @classmethod
    def open(cls):
        """The workspace of this test run. With IPTABLES_SHIM_TEST_FRESH=1, one new empty cache
        shared by every suite of the run (each suite building its own interpreter, trees and
        images would cost CI several times over), removed when the run ends."""
        fresh = os.environ.get("IPTABLES_SHIM_TEST_FRESH") == "1"
        if not fresh:
            return cls(os.environ.get("IPTABLES_SHIM_TEST_CACHE", DEFAULT_CACHE), False)
        if not _FRESH:
            import atexit

            ws = cls(tempfile.mkdtemp(prefix="iptables-shim-tests-", dir="/var/tmp"), True)
            _FRESH.append(ws)
            atexit.register(ws._remove)
        return _FRESH[0]

    def close(self):
        """Nothing to do until the run ends (a fresh workspace is removed then)."""

    def _remove(self):
        # The measurements outlive the fresh cache: kept beside the default cache's logs.
        keep = os.path.join(DEFAULT_CACHE, "logs", "images-fresh-%s.log" % time.strftime("%Y%m%dT%H%M%S"))
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        self.log("log kept in " + keep)
        shutil.copyfile(self.logfile, keep)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    # -- logging and running -------------------------------------------------------------------
    def log(self, msg):
        debootstrap.log_line(self.logfile, "images", msg)

    def run(self, cmd, what=None, check=True, timeout=1200, **kw):
        t0 = time.monotonic()
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        r = subprocess.run(cmd, timeout=timeout, **kw)
        self.log("%-58s rc=%d %6.2f s" % ((what or " ".join(cmd))[:58], r.returncode, time.monotonic() - t0))
        if check and r.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s\n%s" % (
                what or cmd, r.returncode, (r.stdout or b"")[-3000:].decode("utf-8", "replace"),
                (r.stderr or b"")[-3000:].decode("utf-8", "replace")))
        return r

    # -- debootstrap trees -----------------------------------------------------------------------
    def tree_path(self, suite):
        return os.path.join(self.trees, suite + "-iptables")

    def start_tree(self, suite):
        """Start debootstrap for a minbase tree with iptables (no Python); None if cached."""
        return debootstrap.start(suite, self.tree_path(suite), IMAGE_PACKAGES, self.root,
                                 os.path.join(self.root, "logs", "debootstrap-%s.log" % suite), self.log)

    def finish_tree(self, run):
        debootstrap.finish(run, 1800, self.log, AssertionError)

    # -- the frozen build ------------------------------------------------------------------------
    def frozen(self, arch="amd64"):
        """(dist, key): dist/iptables-shim is the frozen tree for `arch` (amd64, or arm64
        cross-compiled), built by packaging/build.sh with its toolchain and interpreter cached in
        this workspace (so a fresh workspace builds them too); rebuilt when shim/ or packaging/
        changed."""
        import fcntl
        # Several suites (and developers' runs) may ask at once: one builds, the others wait.
        with open(os.path.join(self.root, "dist.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._frozen(arch)

    def _frozen(self, arch):
        key = source_key()
        out = os.path.join(self.root, "dist" if arch == "amd64" else "dist-" + arch)
        stamp = os.path.join(out, ".source-key")
        current = open(stamp).read() if os.path.exists(stamp) else ""
        if current == key and os.path.isdir(os.path.join(out, "iptables-shim")):
            self.log("frozen build %s cached (%s)" % (arch, key))
            return out, key
        env = dict(os.environ, IPTABLES_SHIM_BUILD_CACHE=os.path.join(self.root, "build"))
        self.run([os.path.join(REPO, "packaging", "build.sh"), "--arch", arch, "--out", out],
                 what="packaging/build.sh --arch %s" % arch, env=env, timeout=3600)
        with open(stamp, "w") as f:
            f.write(key)
        return out, key

    # -- podman and buildah: every flag this machine needs, in one place ------------------------
    def _engine(self, tool, args, what=None, check=True, **kw):
        cmd = [tool, "--root", self.storage, "--runroot", self.runroot, "--storage-driver", "vfs"]
        if tool == "podman":
            # crun rejects this machine's hybrid cgroups; no systemd to manage cgroups.
            cmd += ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        env = dict(os.environ, CONTAINERS_CONF=self.conf)
        env.update(kw.pop("env", {}))
        return self.run(cmd + list(args), what=what or "%s %s" % (tool, " ".join(args)), check=check,
                        env=env, **kw)

    def podman(self, args, **kw):
        return self._engine("podman", args, **kw)

    def buildah(self, args, **kw):
        return self._engine("buildah", args, **kw)

    def image_exists(self, name):
        return self.podman(["image", "exists", name], check=False, what="image exists " + name).returncode == 0

    def base_image(self, suite):
        """The debootstrap tree as an image: `tar -C TREE -c . | podman import - NAME`."""
        with open(self.tree_path(suite) + ".done") as f:
            name = "localhost/shimtest/%s-base:%s" % (suite, _hash(f.read()))
        if not self.image_exists(name):
            tar = subprocess.Popen(["tar", "-C", self.tree_path(suite), "-c", "."], stdout=subprocess.PIPE)
            self.podman(["import", "-", name], stdin=tar.stdout, what="tar | podman import %s" % suite)
            tar.stdout.close()
            assert tar.wait() == 0
        return name

    def alias_image(self, suite, alias):
        base = self.base_image(suite)
        name = "localhost/shimtest/%s-%s:%s" % (suite, alias, _hash(base, open(os.path.join(HERE, "alias.Containerfile")).read()))
        if not self.image_exists(name):
            ctx = tempfile.mkdtemp(prefix="shimtest-ctx-")
            try:
                self.buildah(["bud", "--isolation", "chroot", "-f", os.path.join(HERE, "alias.Containerfile"),
                              "--build-arg", "BASE=" + base, "--build-arg", "ALIAS=" + alias, "-t", name, ctx],
                             what="buildah bud %s alias %s" % (suite, alias))
            finally:
                os.rmdir(ctx)
        return name

    def shim_image(self, suite, alias, dist, key):
        """packaging/Containerfile on top of the alias image, with the frozen tree from dist/."""
        base = self.alias_image(suite, alias)
        name = "localhost/shimtest/%s-%s-shim:%s" % (suite, alias, _hash(base, key))
        if not self.image_exists(name):
            self.buildah(["bud", "--isolation", "chroot", "-f", os.path.join(REPO, "packaging", "Containerfile"),
                          "--build-arg", "BASE=" + base, "-t", name, dist],
                         what="buildah bud packaging/Containerfile %s-%s" % (suite, alias))
        return name

    def run_in(self, image, script, network="none", read_only=None, env=None, volumes=(), check=False):
        """`sh -c script` in a fresh container of image; read_only: None, "tmpfs" (podman's
        --read-only, with tmpfs on /run, /tmp, /var/tmp) or "all" (nothing writable at all)."""
        args = ["run", "--rm", "--network", network, "--cap-add", "NET_ADMIN,NET_RAW"]
        if read_only:
            args += ["--read-only", "--read-only-tmpfs=%s" % ("true" if read_only == "tmpfs" else "false")]
        for k, v in sorted((env or {}).items()):
            args += ["-e", "%s=%s" % (k, v)]
        for v in volumes:
            args += ["-v", v]
        return self.podman(args + [image, "/bin/sh", "-c", script], check=check,
                           what="run %s: %s" % (image.split("/")[-1].split(":")[0], script[:30]))
