"""Two builds of one commit give the same bytes (docs/images.md#reproducible).

The commit is cloned twice, into directories of different names and depths, and each clone is
built from nothing: its own empty build cache (zig fetched, Debian's sources fetched, zlib and
CPython compiled), under a different umask, locale, time zone and clock, then packaged as a .deb.
The executables, the trees (every file's bytes, mode and link target) and the .debs must be
identical. Where they are not, diffoscope (Debian's diffoscope-minimal) says which bytes differ.

The from-scratch builds take minutes (mark `images`); with IPTABLES_SHIM_TEST_FRESH unset, the
second build reuses nothing either: both caches are this test's own.
"""

import hashlib
import os
import shutil
import subprocess

import pytest

from images import REPO

pytestmark = [pytest.mark.images, pytest.mark.skipif(os.geteuid() != 0, reason="builds a .deb as root")]

# Two builders, unalike in everything the bytes must not depend on.
BUILDERS = [
    {"dir": "a", "umask": 0o022, "env": {"LC_ALL": "C", "TZ": "UTC"}},
    {"dir": "b/a-longer-path/x", "umask": 0o077, "env": {"LC_ALL": "C.UTF-8", "TZ": "Pacific/Kiritimati"}},
]


def listing(tree):
    """{relative path: (mode, sha256 or link target)} of every entry under tree."""
    out = {}
    for d, dirs, files in os.walk(tree):
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if os.path.islink(p):
                what = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            else:
                what = "dir"
            out[os.path.relpath(p, tree)] = (oct(st.st_mode), what)
    return out


def build(base, builder):
    """Clone HEAD into base/DIR and build the tree and the .deb there, from an empty cache."""
    src = os.path.join(base, builder["dir"], "iptables-shim")
    os.makedirs(os.path.dirname(src))
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", REPO, src], check=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "IPTABLES_SHIM_BUILD_CACHE": os.path.join(base, builder["dir"], "cache")}
    env.update(builder["env"])

    def run(cmd):
        r = subprocess.run(cmd, env=env, cwd=src, preexec_fn=lambda: os.umask(builder["umask"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
        assert r.returncode == 0, (cmd, r.stdout[-4000:])
        return r.stdout.decode()

    run(["packaging/build.sh"])
    deb = run(["packaging/deb.sh", "--tree", "dist/iptables-shim"]).strip().splitlines()[-1]
    return os.path.join(src, "dist", "iptables-shim"), deb


def diffoscope(a, b):
    if not shutil.which("diffoscope"):
        return "(diffoscope is not installed: apt-get install diffoscope-minimal)"
    r = subprocess.run(["diffoscope", "--text", "-", "--max-report-size", "60000", a, b],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    return r.stdout.decode("utf-8", "replace")


def test_two_builds_of_one_commit_are_identical(tmp_path):
    base = str(tmp_path)
    (tree_a, deb_a), (tree_b, deb_b) = (build(base, b) for b in BUILDERS)
    exe_a, exe_b = (os.path.join(t, "iptables-shim") for t in (tree_a, tree_b))
    with open(exe_a, "rb") as fa, open(exe_b, "rb") as fb:
        same_exe = fa.read() == fb.read()
    assert same_exe, diffoscope(exe_a, exe_b)
    assert listing(tree_a) == listing(tree_b), diffoscope(tree_a, tree_b)
    with open(deb_a, "rb") as fa, open(deb_b, "rb") as fb:
        same_deb = fa.read() == fb.read()
    assert same_deb, diffoscope(deb_a, deb_b)
    # One file, and nothing beside it but the links, the marker and BUILDINFO.
    regular = sorted(p for p, (mode, what) in listing(tree_a).items() if mode.startswith("0o100"))
    assert regular == ["BUILDINFO", "iptables-shim", "iptables-shim.frozen"], regular
