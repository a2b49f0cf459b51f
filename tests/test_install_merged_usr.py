"""`iptables-shim install DIR` / `uninstall DIR` in merged-/usr roots (docs/install.md "Merged /usr").

Small real roots, one per layout, each with its own iptables binaries (copies of this machine's
xtables-nft-multi and xtables-legacy-multi, the variant names and default names as relative links,
as Debian and Alpine ship them) where that distribution keeps them:

- debian: /bin -> usr/bin, /sbin -> usr/sbin (Debian, Ubuntu; Alpine once merged); iptables in /usr/sbin;
- fedora: the same, and /usr/sbin -> bin, /usr/local/sbin -> bin (Fedora 42+); iptables in /usr/bin,
  and no sbin directory on PATH at all;
- arch: /bin, /sbin -> usr/bin, /usr/sbin -> bin, /usr/local/sbin -> bin; iptables in /usr/bin;
- alpine: nothing merged, iptables in /sbin (Alpine up to 3.20), later moved to /usr/sbin (3.21).

What the programs need besides (libraries, Python) is this machine's: /usr/lib and /usr/lib64
bind-mounted read-only, /usr/bin/python3 one bind-mounted file; the source shim at
/opt/iptables-shim, or (the `frozen` cases, mark images) the frozen tree there instead, which is
what images use. Every call is made as a container runtime would make it, inside the root: a
private mount, PID and network namespace, then chroot, so `install` sees the root as `/`. The
root's bin and sbin directories are compared from outside, entry by entry (name, type, mode,
owner, size, inode, link text; the mtime of every entry that is no directory).
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO
from shim.tools import CLI_NAME, FAMILIES, SHIM_NAMES, TOOL_SUFFIXES, variant_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts, namespaces, chroot")

SHIM = "/opt/iptables-shim/bin/iptables-shim"  # the source shim: the checkout bound there
FROZEN_SHIM = "/opt/iptables-shim/iptables-shim"  # the frozen tree bound there instead (mark images)
ALL_NAMES = sorted(SHIM_NAMES) + [CLI_NAME]
MULTI = {"nft": "xtables-nft-multi", "legacy": "xtables-legacy-multi"}
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The directories a user looks at: every bin and sbin of the root, and where they hang.
WATCHED = ("/", "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/local", "/usr/local/bin", "/usr/local/sbin")
LIB_LINKS = {"lib": "usr/lib", "lib64": "usr/lib64"}


class Layout(object):
    __slots__ = ("links", "iptables_dir", "path")

    def __init__(self, links, iptables_dir, path):
        self.links = dict(LIB_LINKS, **links)  # {path in the root: symlink text}, made in this order
        self.iptables_dir = iptables_dir  # where the package puts the binaries (a real directory)
        self.path = path  # the image's PATH


LAYOUTS = {
    "debian": Layout({"bin": "usr/bin", "sbin": "usr/sbin"}, "usr/sbin", DEBIAN_PATH),
    "fedora": Layout({"bin": "usr/bin", "sbin": "usr/sbin", "usr/sbin": "bin", "usr/local/sbin": "bin"},
                     "usr/bin", "/usr/local/bin:/usr/bin"),
    "arch": Layout({"bin": "usr/bin", "sbin": "usr/bin", "usr/sbin": "bin", "usr/local/sbin": "bin"},
                   "usr/bin", "/usr/local/sbin:/usr/local/bin:/usr/bin"),
    "alpine": Layout({}, "sbin", DEBIAN_PATH),
}

# PID 1 of the new PID namespace, in the private mount namespace, on the host's root; $1 the root.
ENTER = r"""
set -e
root=$1; shift
for d in usr/lib usr/lib64; do
    if [ -d "/$d" ] && [ ! -L "/$d" ]; then /usr/bin/mount --bind -o ro "/$d" "$root/$d"; fi
done
/usr/bin/mount --bind -o ro "$(/usr/bin/readlink -f /usr/bin/python3)" "$root/usr/bin/python3"
/usr/bin/mount --bind /dev "$root/dev"
/usr/bin/mount -t proc proc "$root/proc"
/usr/bin/mount --bind -o ro "$SHIM_SRC" "$root/opt/iptables-shim"
unset SHIM_SRC
exec /usr/sbin/chroot "$root" "$@"
"""


class SmallRoot(object):
    """A root filesystem of one layout, with the real iptables binaries where it keeps them."""

    __slots__ = ("root", "layout", "shim_src", "shim_path")

    def __init__(self, root, layout, shim_src=REPO, shim_path=SHIM):
        self.root, self.layout = str(root), layout
        self.shim_src, self.shim_path = shim_src, shim_path  # bound at /opt/iptables-shim; its executable
        for d in ("usr/bin", "usr/lib", "usr/lib64", "usr/local/bin", "dev", "proc", "run", "tmp", "etc",
                  "opt/iptables-shim"):
            os.makedirs(self.at(d), exist_ok=True)
        for path, text in layout.links.items():
            os.makedirs(os.path.dirname(self.at(path)), exist_ok=True)
            os.symlink(text, self.at(path))
        for d in ("bin", "sbin", "usr/sbin", "usr/local/sbin"):  # the ones no link stands for
            if not os.path.lexists(self.at(d)):
                os.makedirs(self.at(d))
        open(self.at("usr/bin/python3"), "w").close()  # the mount point of the machine's python3
        self.put_iptables(layout.iptables_dir)

    def at(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def put_iptables(self, directory):
        d = self.at(directory)
        for backend, multi in sorted(MULTI.items()):
            shutil.copy2("/usr/sbin/" + multi, os.path.join(d, multi))
            for f in FAMILIES:
                for s in TOOL_SUFFIXES:
                    os.symlink(multi, os.path.join(d, variant_name(f, backend, s)))
        for f in FAMILIES:
            for s in TOOL_SUFFIXES:
                os.symlink(variant_name(f, "nft", s), os.path.join(d, f + s))

    def iptables_files(self, directory):
        d = self.at(directory)
        return sorted(n for n in os.listdir(d) if n.startswith(("iptables", "ip6tables", "xtables")))

    def run(self, argv, **env):
        full = {"PATH": self.layout.path, "LC_ALL": "C"}
        full.update(env)
        full["SHIM_SRC"] = self.shim_src
        r = subprocess.run(["/usr/bin/unshare", "--mount", "--pid", "--fork", "--net", "--propagation", "private",
                            "/bin/sh", "-c", ENTER, "enter", self.root] + list(argv),
                           env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def shim(self, *args):
        return self.run([self.shim_path] + list(args))

    def snapshot(self):
        """{watched path: (what it is, {entry: facts})}, read from outside the root."""
        out = {}
        for path in WATCHED:
            p = self.at(path)
            if not os.path.lexists(p):
                out[path] = (("absent",), {})
                continue
            st = os.lstat(p)
            what = ("link", os.readlink(p)) if os.path.islink(p) else ("dir", st.st_mode, st.st_uid, st.st_ino)
            real = os.path.realpath(p)
            assert real.startswith(self.root), (path, real)  # the layouts' links are relative
            listing = sorted(os.listdir(real)) if os.path.isdir(real) else []
            out[path] = (what, {n: entry(os.path.join(real, n)) for n in listing})
        return out


def entry(p):
    st = os.lstat(p)
    facts = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink)
    if os.path.islink(p):
        return facts + (os.readlink(p), st.st_mtime_ns)
    if os.path.isdir(p):
        return facts  # its mtime is the kernel's, changed by every entry made or removed in it
    return facts + (st.st_size, st.st_mtime_ns)


def changes(before, after):
    """{watched path: (entries added, entries removed, entries changed)} where anything differs."""
    out = {}
    for path in WATCHED:
        (w0, e0), (w1, e1) = before[path], after[path]
        diff = (sorted(set(e1) - set(e0)), sorted(set(e0) - set(e1)),
                sorted(n for n in set(e0) & set(e1) if e0[n] != e1[n]))
        if w0 != w1 or diff != ([], [], []):
            out[path] = diff if w0 == w1 else ("was %r, now %r" % (w0, w1),)
    return out


def lines(out):
    return out.splitlines()


def assert_one_error_line(rc, out, err):
    assert rc != 0 and out == "", (rc, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("iptables-shim: "), err


def assert_resolves_own(root, directory):
    """A call through PATH runs the root's own binary in `directory` (as PATH spells it), and
    explain finds no shim among the real binaries, under any name of its directory."""
    rc, out, err = root.run(["iptables", "-V"], IPTABLES_SHIM_DEBUG="1")
    direct = subprocess.run(["/usr/sbin/iptables-nft", "-V"], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert (rc, out) == (0, direct), (rc, out, err)  # the copies are this machine's binaries
    assert err.startswith("iptables-shim: iptables -> %s/iptables-nft: nft (step 6" % directory), err
    rc, out, err = root.shim("explain", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert sorted(set(os.path.dirname(p) for p in report["binaries"].values())) == [directory], report["binaries"]
    assert report["default_alias"]["path"] == directory + "/iptables", report["default_alias"]


def path_dir_of(root, name):
    """The first PATH directory of the root's layout holding `name` (as execvp would find it)."""
    for d in root.layout.path.split(":"):
        if os.path.lexists(os.path.join(root.at(d), name)):
            return d
    raise AssertionError("%s not on the root's PATH" % name)


@pytest.fixture
def make_root(tmp_path):
    def make(name, shim="source"):
        if shim == "frozen":  # what images use; the same install code
            from test_frozen_roots import workspace

            return SmallRoot(tmp_path / name, LAYOUTS[name], workspace()[1], FROZEN_SHIM)
        return SmallRoot(tmp_path / name, LAYOUTS[name])
    return make


# -- install DIR, uninstall DIR --------------------------------------------------------------------

@pytest.mark.parametrize("shim", ["source", pytest.param("frozen", marks=pytest.mark.images)])
@pytest.mark.parametrize("layout", ["debian", "fedora", "arch", "alpine"])
def test_install_into_usr_local_sbin_and_uninstall_restore_the_root(make_root, layout, shim):
    root = make_root(layout, shim)
    before = root.snapshot()
    real_dir = "/" + os.path.relpath(os.path.realpath(root.at("/usr/local/sbin")), root.root)
    rc, out, err = root.shim("install", "/usr/local/sbin")
    assert (rc, err) == (0, ""), err
    assert lines(out) == ["/usr/local/sbin/%s: link created" % n for n in ALL_NAMES]
    # Exactly seven links, all in the one directory /usr/local/sbin is, each the shim's real path.
    installed = root.snapshot()
    assert changes(before, installed) == {p: (ALL_NAMES, [], []) for p in WATCHED
                                          if os.path.realpath(root.at(p)) == root.at(real_dir)}
    for n in ALL_NAMES:
        assert os.readlink(root.at(real_dir + "/" + n)) == root.shim_path
    # Installing again, under either name of that directory: nothing more, no second set.
    for again in sorted({"/usr/local/sbin", real_dir}):
        rc, out, err = root.shim("install", again)
        assert (rc, err) == (0, ""), err
        assert lines(out) == ["%s/%s: already this shim" % (again, n) for n in ALL_NAMES]
    assert root.snapshot() == installed
    assert_resolves_own(root, path_dir_of(root, "iptables-nft"))
    rc, out, err = root.shim("uninstall", "/usr/local/sbin")
    assert (rc, err) == (0, ""), err
    assert lines(out) == ["/usr/local/sbin/%s: link removed" % n for n in ALL_NAMES]
    assert changes(before, root.snapshot()) == {}


@pytest.mark.parametrize("layout, directory", [
    ("debian", "/sbin"), ("debian", "/usr/sbin"), ("debian", "/bin"), ("debian", "/usr/bin"),
    ("fedora", "/sbin"), ("fedora", "/usr/sbin"), ("fedora", "/usr/bin"), ("fedora", "/bin"),
    ("arch", "/sbin"), ("arch", "/usr/sbin"), ("arch", "/bin"),
    ("alpine", "/sbin"), ("alpine", "/usr/sbin"), ("alpine", "/bin"),
])
def test_install_refuses_the_distributions_directories_under_any_name(make_root, layout, directory):
    root = make_root(layout)
    before = root.snapshot()
    rc, out, err = root.shim("install", directory)
    assert_one_error_line(rc, out, err)
    assert "refusing to install into %s" % directory in err and "/usr/local/sbin" in err, err
    assert changes(before, root.snapshot()) == {}


def test_a_link_reaching_the_distributions_directory_is_refused(make_root):
    """/usr/local/sbin made a link to ../sbin (-> usr/sbin) by hand: installing there would write
    into the directory the package owns."""
    root = make_root("debian")
    os.rmdir(root.at("/usr/local/sbin"))
    os.symlink("../../sbin", root.at("/usr/local/sbin"))
    before = root.snapshot()
    rc, out, err = root.shim("install", "/usr/local/sbin")
    assert_one_error_line(rc, out, err)
    assert "refusing to install into /usr/local/sbin" in err, err
    assert changes(before, root.snapshot()) == {}


def test_a_dangling_link_as_the_directory_is_refused_not_followed(make_root):
    """/usr/local/sbin -> bin where bin is missing: install neither creates bin through the link nor
    replaces the link with a directory."""
    root = make_root("fedora")
    os.rmdir(root.at("/usr/local/bin"))
    before = root.snapshot()
    rc, out, err = root.shim("install", "/usr/local/sbin")
    assert_one_error_line(rc, out, err)
    assert err == ("iptables-shim: cannot install into /usr/local/sbin: it is a link to bin, which does not "
                   "exist; nothing was installed\n"), err
    assert changes(before, root.snapshot()) == {}


@pytest.mark.parametrize("layout, sbin_dir, path, warning", [
    # Fedora 42 dropped sbin from PATH; /usr/local/sbin -> bin keeps it reachable as /usr/local/bin.
    ("fedora", False, "/usr/local/bin:/usr/bin", None),
    ("arch", False, "/usr/local/bin:/usr/bin", None),
    # A /usr/local/sbin of its own (a root from before the merge) on that PATH: never searched.
    ("fedora", True, "/usr/local/bin:/usr/bin",
     "/usr/local/sbin is not on this PATH (/usr/local/bin:/usr/bin), under any name: calls of iptables will "
     "not reach the shim; install into /usr/local/bin instead, or add it to PATH before the directory of the "
     "real iptables"),
    # No PATH directory but the distribution's own: nothing to name instead.
    ("fedora", True, "/usr/bin",
     "/usr/local/sbin is not on this PATH (/usr/bin), under any name: calls of iptables will not reach the shim; "
     "add it to PATH before the directory of the real iptables"),
    # The real iptables first: /sbin is /usr/sbin, and it comes before.
    ("debian", False, "/sbin:/usr/bin:/usr/local/sbin",
     "/sbin/iptables comes before /usr/local/sbin on this PATH (/sbin:/usr/bin:/usr/local/sbin): calls of "
     "iptables run it, not the shim; put /usr/local/sbin first on PATH"),
], ids=["fedora-42", "arch", "fedora-own-local-sbin", "fedora-own-local-sbin-no-other", "debian-sbin-first"])
def test_install_says_when_calls_on_this_path_would_miss_the_shim(make_root, layout, sbin_dir, path, warning):
    """Judged by directory identity, as the shim's own PATH search judges shims: a directory on PATH
    under another name counts; one that is not, or comes after the real iptables, is named."""
    root = make_root(layout)
    if sbin_dir:
        os.unlink(root.at("/usr/local/sbin"))
        os.mkdir(root.at("/usr/local/sbin"))
    rc, out, err = root.run([root.shim_path, "install", "/usr/local/sbin"], PATH=path)
    assert rc == 0 and lines(out) == ["/usr/local/sbin/%s: link created" % n for n in ALL_NAMES], (out, err)
    assert err == ("iptables-shim: warning: %s\n" % warning if warning else ""), err


# -- the image moves its iptables ---------------------------------------------------------------------

@pytest.mark.parametrize("shim", ["source", pytest.param("frozen", marks=pytest.mark.images)])
@pytest.mark.parametrize("sbin", ["stays a directory", "becomes a link to usr/sbin"])
def test_iptables_moving_from_sbin_to_usr_sbin_after_install(make_root, sbin, shim):
    """Alpine 3.20 keeps iptables in /sbin, 3.21 in /usr/sbin (k3s klipper-lb's entry script, which
    linked names in /sbin, ran the wrong backend after that move). The shim in /usr/local/sbin links
    to itself only and looks the binaries up on every call: after the upgrade it runs the ones in
    /usr/sbin, and uninstall still restores what was there."""
    root = make_root("alpine", shim)
    before = root.snapshot()
    rc, out, err = root.shim("install", "/usr/local/sbin")
    assert (rc, err) == (0, ""), err
    assert_resolves_own(root, "/sbin")
    links = root.snapshot()["/usr/local/sbin"]
    # The upgrade: the package's files leave /sbin for /usr/sbin.
    names = root.iptables_files("sbin")
    for n in names:
        os.unlink(root.at("sbin/" + n))
    root.put_iptables("usr/sbin")
    assert root.iptables_files("usr/sbin") == names
    if sbin == "becomes a link to usr/sbin":
        assert os.listdir(root.at("sbin")) == []
        os.rmdir(root.at("sbin"))
        os.symlink("usr/sbin", root.at("sbin"))
    assert root.snapshot()["/usr/local/sbin"] == links  # the upgrade did not touch the shim's links
    assert_resolves_own(root, "/usr/sbin")
    upgraded = root.snapshot()
    rc, out, err = root.shim("uninstall", "/usr/local/sbin")
    assert (rc, err) == (0, ""), err
    after = root.snapshot()
    assert after["/usr/local/sbin"] == before["/usr/local/sbin"]
    assert changes(upgraded, after) == {"/usr/local/sbin": ([], ALL_NAMES, [])}
