"""The layout matrix (issue 24): the frozen tree installed as docs/images.md says into roots shaped
like each distribution's image of 2026, then the core cases through it, read back from the kernel.

Every root is made of Debian's real binaries: trixie's iptables 1.8.11 (xtables-nft-multi,
xtables-legacy-multi, the xtables modules) and the libraries they need, with dash as /bin/sh where
the image has a shell, all taken from the Workspace's cached trixie tree (tests/images) and placed
where that distribution places iptables, with its variant names, default names (a link to the
multi binary, or through /etc/alternatives), merged-/usr links, /etc/os-release and its base
image's default PATH. The libraries stay at Debian's paths (/usr/lib/x86_64-linux-gnu, the loader
at /lib64): what is tested is where iptables and the shim are found, not the libc (musl roots:
tests/test_musl.py, whose iptables has no nft variant, so the Alpine roots here are glibc).

| layout | iptables in | default names | legacy | PATH | install |
|---|---|---|---|---|---|
| alpine-legacy (3.21+, `iptables iptables-legacy`) | /usr/sbin only | -> xtables-nft-multi | yes | Docker's default | /usr/local/sbin |
| alpine (3.21+, `iptables`) | /usr/sbin only | -> xtables-nft-multi | no | Docker's default | /usr/local/sbin |
| fedora (42+) | /usr/bin (/usr/sbin -> bin, /usr/local/sbin -> bin) | alternatives | iptables-legacy package | /usr/local/bin:/usr/bin | /usr/local/bin |
| wolfi (wolfi-base) | /usr/bin only (/sbin, /usr/sbin -> bin) | -> xtables-legacy-multi (upstream's install) | yes | apko's default | /usr/local/sbin |
| ubi9 (RHEL 9) | /usr/sbin | alternatives -> iptables-nft | no | UBI's | /usr/local/sbin |
| trixie | the cached debootstrap tree as it is (an overlay over it) | alternatives -> nft | yes | Debian's | /usr/local/sbin |
| distroless (static) | /usr/sbin, copied in with /etc/alternatives | alternatives -> nft | yes | distroless' | none: no /usr/local; PATH=/opt/iptables-shim:... |

Each root is entered as a container runtime would: a private mount and PID namespace in a
network namespace of the case's own (`nsenter --net`), /dev and /proc mounted inside, then chroot,
the caller's environment exactly the layout's PATH and LC_ALL (`env -i`). Rules are seeded and
read back from outside with this machine's own iptables-legacy(-save) / iptables-nft(-save) in
that netns. Each guard is shown to matter: the same case in a root without the shim (or with it
in the wrong directory) puts the rule in the wrong backend.

Mark `images` (the frozen build). Once the trixie tree and the frozen build are cached, the whole
module takes about 10 s here (72 cases): `/usr/bin/python3 -m pytest -q tests/test_layouts.py`.
"""

import os
import shutil
import subprocess

import pytest

import elf
from rootfs import ADDR4, ADDR6, MARK, WRITE4, WRITE6, landed
from shim_output import debug_lines, shim_error_line
from shim.tools import CLI_NAME, FAMILIES, SHIM_NAMES, TOOL_SUFFIXES, variant_name

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts, namespaces, chroot, netns"),
]

SHIM_DIR = "/opt/iptables-shim"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # also Debian's, UBI's, apko's
MULTI = {"nft": "xtables-nft-multi", "legacy": "xtables-legacy-multi"}
OTHER = {"nft": "legacy", "legacy": "nft"}
ALL_NAMES = sorted(SHIM_NAMES) + [CLI_NAME]
LIBDIR = "usr/lib/x86_64-linux-gnu"
LOADER = "lib64/ld-linux-x86-64.so.2"
SEED = "-A FORWARD -s 192.0.2.1/32 -j DROP"
SEED6 = "-A FORWARD -s 2001:db8::1/128 -j DROP"
WRITTEN4 = "-A INPUT -s %s/32 -m comment --comment %s -j ACCEPT" % (ADDR4, MARK)
WRITTEN6 = "-A INPUT -s %s/128 -m comment --comment %s -j ACCEPT" % (ADDR6, MARK)

OS_RELEASE = {
    "alpine": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.21.3\nPRETTY_NAME="Alpine Linux v3.21"\n'
              'HOME_URL="https://alpinelinux.org/"\nBUG_REPORT_URL="https://gitlab.alpinelinux.org/alpine/aports/-/issues"\n',
    "fedora": 'NAME="Fedora Linux"\nVERSION="42 (Container Image)"\nRELEASE_TYPE=stable\nID=fedora\nVERSION_ID=42\n'
              'VERSION_CODENAME=""\nPLATFORM_ID="platform:f42"\nPRETTY_NAME="Fedora Linux 42 (Container Image)"\n'
              'ANSI_COLOR="0;38;2;60;110;180"\nLOGO=fedora-logo-icon\nCPE_NAME="cpe:/o:fedoraproject:fedora:42"\n'
              'DEFAULT_HOSTNAME="fedora"\nHOME_URL="https://fedoraproject.org/"\n'
              'DOCUMENTATION_URL="https://docs.fedoraproject.org/en-US/fedora/f42/system-administrators-guide/"\n'
              'SUPPORT_URL="https://ask.fedoraproject.org/"\nBUG_REPORT_URL="https://bugzilla.redhat.com/"\n'
              'REDHAT_BUGZILLA_PRODUCT="Fedora"\nREDHAT_BUGZILLA_PRODUCT_VERSION=42\nREDHAT_SUPPORT_PRODUCT="Fedora"\n'
              'REDHAT_SUPPORT_PRODUCT_VERSION=42\nSUPPORT_END=2026-05-13\nVARIANT="Container Image"\nVARIANT_ID=container\n',
    "wolfi": 'ID=wolfi\nNAME="Wolfi"\nPRETTY_NAME="Wolfi"\nVERSION_ID="20230201"\nHOME_URL="https://wolfi.dev"\n',
    "ubi9": 'NAME="Red Hat Enterprise Linux"\nVERSION="9.5 (Plow)"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.5"\n'
            'PLATFORM_ID="platform:el9"\nPRETTY_NAME="Red Hat Enterprise Linux 9.5 (Plow)"\nANSI_COLOR="0;31"\n'
            'LOGO="fedora-logo-icon"\nCPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"\n'
            'HOME_URL="https://www.redhat.com/"\n'
            'DOCUMENTATION_URL="https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/9"\n'
            'BUG_REPORT_URL="https://issues.redhat.com/"\nREDHAT_BUGZILLA_PRODUCT="Red Hat Enterprise Linux 9"\n'
            'REDHAT_BUGZILLA_PRODUCT_VERSION=9.5\nREDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux"\n'
            'REDHAT_SUPPORT_PRODUCT_VERSION="9.5"\n',
    # GoogleContainerTools/distroless common/variables.bzl, for -debian12
    "distroless": 'PRETTY_NAME="Distroless"\nNAME="Debian GNU/Linux"\nID="debian"\nVERSION_ID="12"\n'
                  'VERSION="Debian GNU/Linux 12 (bookworm)"\nHOME_URL="https://github.com/GoogleContainerTools/distroless"\n'
                  'SUPPORT_URL="https://github.com/GoogleContainerTools/distroless/blob/master/README.md"\n'
                  'BUG_REPORT_URL="https://github.com/GoogleContainerTools/distroless/issues/new"\n',
}

USR_MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


class Layout(object):
    __slots__ = ("name", "os_release", "links", "dirs", "bindir", "backends", "alias", "via", "path",
                 "install", "shell", "suite")

    def __init__(self, name, os_release=None, links=None, dirs=(), bindir="usr/sbin", backends=("nft", "legacy"),
                 alias="nft", via="multi", path=DOCKER_PATH, install="/usr/local/sbin", shell=True, suite=None):
        self.name, self.os_release, self.links, self.dirs = name, os_release, dict(links or {}), dirs
        self.bindir, self.backends, self.alias, self.via = bindir, backends, alias, via
        self.path, self.install, self.shell, self.suite = path, install, shell, suite

    @property
    def nft_only(self):
        return "legacy" not in self.backends

    @property
    def caller_path(self):
        """The PATH calls are made with once the shim is in: the image's, or for distroless (no
        /usr/local to install into) the tree's own directory put first."""
        return self.path if self.install else SHIM_DIR + ":" + self.path


LAYOUTS = {
    # Alpine 3.21+: not merged; the iptables package in /usr/sbin only, `iptables` the nft variant,
    # iptables-legacy a package of its own. No ENV PATH in the image: the engine's default.
    "alpine-legacy": Layout("alpine-legacy", OS_RELEASE["alpine"], dirs=("bin", "sbin", "usr/bin", "usr/sbin",
                                                                         "usr/local/bin", "usr/local/sbin")),
    "alpine": Layout("alpine", OS_RELEASE["alpine"], dirs=("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin",
                                                           "usr/local/sbin"), backends=("nft",)),
    # Fedora 42+: /usr/sbin -> bin and /usr/local/sbin -> bin, sbin off the default PATH; the
    # alternatives (iptables-nft, and iptables-legacy's package) in /usr/bin.
    "fedora": Layout("fedora", OS_RELEASE["fedora"], links=dict(USR_MERGED, **{"usr/sbin": "bin", "usr/local/sbin": "bin"}),
                     dirs=("usr/bin", "usr/lib64", "usr/local/bin"), bindir="usr/bin", via="alternatives",
                     path="/usr/local/bin:/usr/bin", install="/usr/local/bin"),
    # Wolfi: everything in /usr/bin (/bin, /sbin, /usr/sbin -> it); iptables built with upstream's
    # `make install`, whose default names are the legacy variant.
    "wolfi": Layout("wolfi", OS_RELEASE["wolfi"], links={"bin": "usr/bin", "sbin": "usr/bin", "usr/sbin": "bin",
                                                         "lib": "usr/lib", "lib64": "usr/lib"},
                    dirs=("usr/bin", "usr/local/bin"), bindir="usr/bin", alias="legacy"),
    # RHEL 9 / UBI 9: iptables-nft only; /usr/sbin/iptables -> /etc/alternatives/iptables.
    "ubi9": Layout("ubi9", OS_RELEASE["ubi9"], links=USR_MERGED, dirs=("usr/bin", "usr/sbin", "usr/lib64",
                                                                      "usr/local/bin", "usr/local/sbin"),
                   backends=("nft",), via="alternatives"),
    # Debian trixie: the cached debootstrap tree itself, as an overlay (never written).
    "trixie": Layout("trixie", suite="trixie", via="alternatives"),
    # distroless/static: no shell, no package manager, no /usr/local; Debian's binaries, their
    # alternatives links and libraries copied in.
    "distroless": Layout("distroless", OS_RELEASE["distroless"], dirs=("usr/sbin", "etc/alternatives"),
                         via="alternatives", install=None, shell=False),
}
NAMES = sorted(LAYOUTS)
# What the refusal tells an nft-only image to do about the legacy rules its netns holds.
REFUSAL_WORDS = {"alpine": "apk add iptables-legacy", "ubi9": "ships no legacy iptables"}
BOTH = [n for n in NAMES if not LAYOUTS[n].nft_only]
NFT_ONLY = [n for n in NAMES if LAYOUTS[n].nft_only]

# PID 1 of the new PID namespace, in the private mount namespace, on the machine's root; $1 the
# root, $2 the lower tree of an overlay or "-"; the rest: `env -i` arguments (VAR=... chroot ...).
ENTER = r"""
set -e
root=$1 lower=$2; shift 2
if [ "$lower" != - ]; then
    /usr/bin/mount -t overlay overlay -o "lowerdir=$lower,upperdir=$root.upper,workdir=$root.work" "$root"
fi
/usr/bin/mount --bind /dev "$root/dev"
/usr/bin/mount -t proc proc "$root/proc"
exec /usr/bin/env -i "$@"
"""


# -- the roots ------------------------------------------------------------------------------------

def closure(tree, programs):
    """[path in tree] of the libraries `programs` (paths in tree) need, found in Debian's libdir."""
    seen, todo = set(), list(programs)
    while todo:
        e = elf.read(todo.pop())
        for lib in e.needed:
            p = os.path.join(tree, LIBDIR, lib)
            if lib not in seen and os.path.exists(p):
                seen.add(lib)
                todo.append(os.path.realpath(p))
    return sorted(os.path.join(tree, LIBDIR, lib) for lib in seen)


class Root(object):
    """One layout's root filesystem and the way into it."""

    __slots__ = ("layout", "root", "lower")

    def __init__(self, layout, root, lower=None):
        self.layout, self.root, self.lower = layout, str(root), lower

    def at(self, path):
        """A path of the root as the host sees it (the overlay's upper layer for trixie)."""
        base = self.root + ".upper" if self.lower else self.root
        return os.path.join(base, path.lstrip("/"))

    def run(self, argv, netns=None, path=None, input=None, **env):
        """argv in the root, in netns (None: a fresh one), with exactly PATH and LC_ALL (and env)."""
        variables = dict({"PATH": path or self.layout.caller_path, "LC_ALL": "C"}, **env)
        cmd = ["/usr/bin/unshare", "--mount", "--pid", "--fork", "--propagation", "private"]
        cmd = (["/usr/bin/nsenter", "--net=" + netns.path] + cmd) if netns is not None else cmd[:1] + ["--net"] + cmd[1:]
        cmd += ["/bin/sh", "-c", ENTER, "enter", self.root, self.lower or "-"]
        cmd += ["%s=%s" % kv for kv in sorted(variables.items())] + ["/usr/sbin/chroot", self.root] + list(argv)
        return subprocess.run(cmd, env={"PATH": HOST_PATH}, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60, check=False)

    def ok(self, argv, netns, **kw):
        """argv must succeed and say nothing on stderr (the shim adds nothing of its own)."""
        r = self.run(argv, netns, **kw)
        assert (r.returncode, r.stderr) == (0, b""), (self.layout.name, argv, r.returncode, r.stdout, r.stderr)
        return r.stdout.decode()

    def install(self, directory, path=None):
        return self.run([SHIM_DIR + "/" + CLI_NAME, "install", directory], path=path or self.layout.path)


def make_root(layout, base, trixie, tree):
    """A root of `layout` under base (a fresh directory), with the frozen tree at /opt/iptables-shim
    (not installed)."""
    root = os.path.join(str(base), layout.name)
    if layout.suite:
        for d in ("", ".upper", ".work"):
            os.makedirs(root + d)
        made = Root(layout, root, lower=trixie)
    else:
        made = Root(layout, root)
        for path, text in layout.links.items():
            os.makedirs(os.path.dirname(made.at(path)), exist_ok=True)
            os.symlink(text, made.at(path))
        for d in layout.dirs + ("dev", "proc", "tmp", "run", "etc", "opt", LIBDIR):
            os.makedirs(made.at(d), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.realpath(made.at(LOADER))), exist_ok=True)
        put_binaries(made, trixie)
        with open(made.at("etc/os-release"), "w") as f:
            f.write(layout.os_release)
        for name in ("protocols", "services", "ethertypes", "passwd", "group"):
            shutil.copy2(os.path.join(trixie, "etc", name), made.at("etc/" + name))
    shutil.copytree(tree, made.at(SHIM_DIR), symlinks=True)
    return made


def put_binaries(made, trixie):
    layout = made.layout
    sbin = os.path.join(trixie, "usr/sbin")
    programs = [os.path.join(sbin, MULTI[b]) for b in layout.backends]
    if layout.shell:
        programs.append(os.path.join(trixie, "usr/bin/dash"))
        shutil.copy2(programs[-1], made.at("bin/sh"))
    for lib in closure(trixie, programs + [os.path.join(trixie, LIBDIR, "xtables", m)
                                           for m in os.listdir(os.path.join(trixie, LIBDIR, "xtables"))]):
        shutil.copy2(os.path.realpath(lib), made.at(os.path.join(LIBDIR, os.path.basename(lib))))
    shutil.copy2(os.path.realpath(os.path.join(trixie, LOADER)), made.at(LOADER))
    shutil.copytree(os.path.join(trixie, LIBDIR, "xtables"), made.at(LIBDIR + "/xtables"), symlinks=True)
    bindir = made.at(layout.bindir)
    for backend in layout.backends:
        shutil.copy2(os.path.join(sbin, MULTI[backend]), os.path.join(bindir, MULTI[backend]))
        for f in FAMILIES:
            for s in TOOL_SUFFIXES:
                os.symlink(MULTI[backend], os.path.join(bindir, variant_name(f, backend, s)))
    for f in FAMILIES:
        for s in TOOL_SUFFIXES:
            if layout.via == "alternatives":  # /usr/X/iptables -> /etc/alternatives/iptables -> /usr/X/iptables-nft
                os.symlink("/etc/alternatives/" + f + s, os.path.join(bindir, f + s))
                os.makedirs(made.at("etc/alternatives"), exist_ok=True)
                os.symlink("/%s/%s" % (layout.bindir, variant_name(f, layout.alias, s)),
                           made.at("etc/alternatives/" + f + s))
            else:
                os.symlink(MULTI[layout.alias], os.path.join(bindir, f + s))


_SHARED = {}


def sources():
    """(trixie tree, frozen tree), made or found in the Workspace's cache once per process."""
    if not _SHARED:
        from test_frozen_roots import workspace

        ws, tree = workspace()
        run = ws.start_tree("trixie")
        ws.finish_tree(run)
        _SHARED.update(trixie=ws.tree_path("trixie"), tree=tree)
    return _SHARED["trixie"], _SHARED["tree"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """{layout: (Root with the shim installed as the recipe says, what install printed)}."""
    trixie, tree = sources()
    out = {}
    for name in NAMES:
        layout = LAYOUTS[name]
        root = make_root(layout, tmp_path_factory.mktemp(name), trixie, tree)
        out[name] = (root, root.install(layout.install or "/usr/local/sbin"))
    return out


@pytest.fixture
def bare(tmp_path):
    """bare(layout) -> a new root of that layout with the frozen tree copied in, not installed."""
    trixie, tree = sources()
    return lambda name: make_root(LAYOUTS[name], tmp_path / "bare", trixie, tree)


def installed(roots, name):
    return roots[name][0]


# -- install as docs/images.md says --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_install_as_the_recipe_says(roots, name):
    """Seven links, no warning: the directory is on the image's PATH before the real iptables.
    distroless has no /usr/local: the recipe's install is refused in one line, writing nothing."""
    root, r = roots[name]
    layout = root.layout
    if layout.install is None:
        line = shim_error_line(r, returncode=None)
        assert "/usr/local" in line, line
        assert not os.path.lexists(root.at("/usr/local")), "install wrote outside DIR"
        return
    out = r.stdout.decode()
    assert (r.returncode, r.stderr) == (0, b""), (name, r)
    assert out.splitlines() == ["%s/%s: link created" % (layout.install, n) for n in ALL_NAMES], out
    for n in ALL_NAMES:  # through the root's own links (relative, so resolvable from outside)
        assert os.readlink(os.path.join(os.path.realpath(root.at(layout.install)), n)) == SHIM_DIR + "/" + CLI_NAME, n


@pytest.mark.parametrize("name", [n for n in NAMES if LAYOUTS[n].install])
def test_install_warns_when_the_real_iptables_comes_first(bare, name):
    """The recipe's install with the directory of the real iptables first on PATH: the links are
    made, and one warning line names the real iptables that calls would run instead."""
    root = bare(name)
    layout = root.layout
    path = "/%s:%s" % (layout.bindir, layout.path)
    r = root.install(layout.install, path=path)
    assert r.returncode == 0, r
    assert r.stdout.decode().splitlines() == ["%s/%s: link created" % (layout.install, n) for n in ALL_NAMES]
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("iptables-shim: warning: /%s/iptables comes before %s"
                                                   % (layout.bindir, layout.install)), err


# -- the core cases through the installed shim ------------------------------------------------------

def seed(netns, script):
    netns.ok(script)


def check_lands(netns, backend, family="iptables"):
    where = landed(netns)
    want = WRITTEN4 if family == "iptables" else WRITTEN6
    assert where == {backend: [want], OTHER[backend]: []}, where
    assert no_tables(netns, OTHER[backend]), "the other backend was written"


@pytest.mark.parametrize("name", NAMES)
def test_empty_netns_gets_the_images_default(roots, name, netns):
    root = installed(roots, name)
    before = netns.snapshot()
    r = root.run([SHIM_DIR + "/" + CLI_NAME, "explain"], netns)
    assert r.returncode == 0, r
    assert netns.snapshot() == before, "detection changed what it measures"
    root.ok(WRITE4, netns)
    check_lands(netns, root.layout.alias)


@pytest.mark.parametrize("name", NAMES)
def test_legacy_rules_present(roots, name, netns):
    root = installed(roots, name)
    seed(netns, "iptables-legacy " + SEED)
    if root.layout.nft_only:
        before = netns.snapshot()
        # The shim's own refusal: exit 127, nothing on stdout, one `iptables-shim: ` line naming
        # the fix in this image's words, from its own /etc/os-release (docs/decision.md).
        line = shim_error_line(root.run(WRITE4, netns))
        assert REFUSAL_WORDS[name] in line, line
        assert netns.snapshot() == before and netns.rules("legacy") == [SEED], "a refused call wrote"
        return
    root.ok(WRITE4, netns)
    assert sorted(netns.rules("legacy")) == sorted([SEED, WRITTEN4]) and no_tables(netns, "nft")


@pytest.mark.parametrize("name", NAMES)
def test_nft_rules_present(roots, name, netns):
    root = installed(roots, name)
    seed(netns, "iptables-nft " + SEED)
    root.ok(WRITE4, netns)
    assert sorted(netns.rules("nft")) == sorted([SEED, WRITTEN4]) and netns.legacy_tables() == []


@pytest.mark.parametrize("name", NAMES)
def test_kubelets_hint_beats_rules(roots, name, netns):
    """KUBE-IPTABLES-HINT in one backend's mangle, rules in the other: the hint wins. Where the image
    has both variants the hint is in the backend its default names do not run; in nft-only images
    it is in nft while legacy holds rules (no refusal: the hint says nft)."""
    root = installed(roots, name)
    hinted = "nft" if root.layout.nft_only else OTHER[root.layout.alias]
    seed(netns, "iptables-%s -t mangle -N KUBE-IPTABLES-HINT && iptables-%s %s" % (hinted, OTHER[hinted], SEED))
    root.ok(WRITE4, netns)
    assert netns.rules(hinted) == [WRITTEN4] and netns.rules(OTHER[hinted]) == [SEED]


@pytest.mark.parametrize("name", NAMES)
def test_save_piped_into_restore(roots, name, netns):
    """iptables-save's text, the chain flushed, then the text on iptables-restore's stdin: the rule
    is back in the backend it came from. Through the image's own shell (a pipe) where it has one."""
    root = installed(roots, name)
    backend = "nft" if root.layout.nft_only else OTHER[root.layout.alias]
    seed(netns, "iptables-%s %s && ip6tables-%s %s" % (backend, SEED, backend, SEED6))
    if root.layout.shell:
        saved = root.ok(["sh", "-c", "saved=$(iptables-save) && iptables -F FORWARD && printf '%s\\n' \"$saved\" | "
                         "iptables-restore && ip6tables-save | ip6tables-restore && printf '%s\\n' \"$saved\""], netns)
    else:
        saved = root.ok(["iptables-save"], netns)
        root.ok(["iptables", "-F", "FORWARD"], netns)
        assert netns.rules(backend) == []
        root.ok(["iptables-restore"], netns, input=saved.encode())
    assert SEED in saved.splitlines() and "COMMIT" in saved, saved
    assert netns.rules(backend) == [SEED] and netns.rules(backend, "ip6tables") == [SEED6]
    assert no_tables(netns, OTHER[backend]), "the other backend was written"


def no_tables(netns, backend):
    """The backend holds no iptables table at all, either family (not even an empty one)."""
    if backend == "legacy":
        return netns.legacy_tables() == []
    return not [l for l in netns.ok("nft list tables").splitlines() if l.split()[1:2] in (["ip"], ["ip6"])]


@pytest.mark.parametrize("name", NAMES)
def test_a_second_call_is_answered_from_the_cache(roots, name, netns):
    root = installed(roots, name)
    backend = "nft" if root.layout.nft_only else OTHER[root.layout.alias]
    seed(netns, "iptables-%s %s" % (backend, SEED))
    hows = []
    for argv in (WRITE4, ["iptables", "-D"] + WRITE4[2:]):
        r = root.run(argv, netns, IPTABLES_SHIM_DEBUG="1")
        assert r.returncode == 0, r
        (fields,) = debug_lines(r.stderr)
        assert fields["backend"] == backend, fields
        hows.append(fields["how"])
    assert hows[0].startswith("cached in /run/iptables-shim/") and hows[1].startswith("cache hit /run/iptables-shim/"), hows
    assert os.path.isfile(root.at(hows[0].split(" in ", 1)[1]))
    assert netns.rules(backend) == [SEED] and netns.rules(OTHER[backend]) == []


@pytest.mark.parametrize("name", NAMES)
def test_ip6tables(roots, name, netns):
    root = installed(roots, name)
    backend = "nft" if root.layout.nft_only else OTHER[root.layout.alias]
    seed(netns, "ip6tables-%s %s" % (backend, SEED6))
    root.ok(WRITE6, netns)
    assert sorted(netns.rules(backend, "ip6tables")) == sorted([SEED6, WRITTEN6])
    assert netns.rules(OTHER[backend], "ip6tables") == [] and netns.rules(OTHER[backend]) == []


# -- without the part that guards it ----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_without_the_shim_the_rule_lands_in_the_wrong_backend(bare, name, netns):
    """The same call in the same layout without the install (distroless: without the tree on PATH):
    the image's own default names run, and the rule goes to the backend the netns does not use."""
    root = bare(name)
    layout = root.layout
    seeded = OTHER[layout.alias] if not layout.nft_only else "legacy"
    seed(netns, "iptables-%s %s" % (seeded, SEED))
    root.ok(WRITE4, netns, path=layout.path)
    assert netns.rules(seeded) == [SEED] and netns.rules(layout.alias) == [WRITTEN4]


def test_fedora_42_the_generic_recipe_works_through_its_link(bare, netns):
    """On Fedora 42's own layout /usr/local/sbin is a link to bin: the generic `install
    /usr/local/sbin` lands in /usr/local/bin, on PATH, with no warning."""
    root = bare("fedora")
    r = root.install("/usr/local/sbin")
    assert (r.returncode, r.stderr) == (0, b""), r
    assert r.stdout.decode().splitlines() == ["/usr/local/sbin/%s: link created" % n for n in ALL_NAMES]
    assert sorted(os.listdir(root.at("usr/local/bin"))) == ALL_NAMES
    seed(netns, "iptables-legacy " + SEED)
    root.ok(WRITE4, netns)
    assert sorted(netns.rules("legacy")) == sorted([SEED, WRITTEN4]) and no_tables(netns, "nft")


def test_fedora_with_its_own_usr_local_sbin_install_says_where_to_go(bare, netns):
    """A Fedora root whose /usr/local/sbin is a directory of its own (made before 42's merge, or by
    hand): the docs' generic `install /usr/local/sbin` leaves the shim off Fedora's PATH, says so in
    one warning line naming /usr/local/bin, and calls then miss it (the rule lands in nft in a
    legacy netns); `install /usr/local/bin`, as docs/images.md says for Fedora, reaches it."""
    root = bare("fedora")
    os.unlink(root.at("usr/local/sbin"))
    os.mkdir(root.at("usr/local/sbin"))
    r = root.install("/usr/local/sbin")
    assert r.returncode == 0, r
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("iptables-shim: warning: /usr/local/sbin is not on this PATH"), err
    assert "install into /usr/local/bin" in err, err
    seed(netns, "iptables-legacy " + SEED)
    root.ok(WRITE4, netns)
    assert netns.rules("nft") == [WRITTEN4], "the shim was reached from off PATH?"
    root.ok(["iptables", "-D"] + WRITE4[2:], netns, path="/usr/bin")
    r = root.install("/usr/local/bin")
    assert (r.returncode, r.stderr) == (0, b""), r
    root.ok(WRITE4, netns)
    assert sorted(netns.rules("legacy")) == sorted([SEED, WRITTEN4]) and netns.rules("nft") == []


def test_the_layouts_are_what_they_claim(roots):
    """The roots hold what the table in the docstring says: no iptables name outside the layout's
    directory, the default names' chains, os-release, a shell only where the image has one."""
    for name in NAMES:
        root, _ = roots[name]
        layout = root.layout
        if layout.suite:
            continue
        real = os.path.realpath(root.at(layout.bindir))
        for top in ("bin", "sbin", "usr/bin", "usr/sbin"):
            d = root.at(top)
            if os.path.isdir(d) and os.path.realpath(d) != real:
                assert not [n for n in os.listdir(d) if "tables" in n], (name, top)
        link = os.readlink(os.path.join(real, "iptables"))
        if layout.via == "alternatives":
            assert link == "/etc/alternatives/iptables" and \
                os.readlink(root.at("etc/alternatives/iptables")) == "/%s/iptables-%s" % (layout.bindir, layout.alias)
        else:
            assert link == MULTI[layout.alias], (name, link)
        assert os.path.exists(os.path.join(real, "iptables-legacy")) != layout.nft_only, name
        assert os.path.lexists(root.at("bin/sh")) == layout.shell, name
        with open(root.at("etc/os-release")) as f:
            assert f.read() == layout.os_release
