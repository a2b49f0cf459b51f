"""`iptables-shim install --alternatives` / `uninstall --alternatives` in a real Debian root.

ufw runs /usr/sbin/iptables by full path and ufw-init resets PATH: a shim that is only first on
PATH never sees them. Registered with update-alternatives, it does. Shown here in a Debian bookworm
root filesystem (debootstrap minbase with iptables, ufw and python3-minimal), entered as a container
would be: a private mount namespace and PID namespace, the tree mounted as the lower layer of an
overlay (each test writes only its own upper layer, so the cached tree never changes), the checkout
bind-mounted read-only at /opt/iptables-shim, and `chroot`. Network namespaces are named ones made
here; rules are read back from the kernel with the host's real save binaries.

The tree is cached in $IPTABLES_SHIM_TEST_CACHE/alternatives (default
/var/cache/iptables-shim-tests/alternatives); IPTABLES_SHIM_TEST_FRESH=1 (.ci/run) builds it in a
temporary directory and removes it afterwards. About 1-2 min from scratch (debootstrap).
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, mounts, chroot, netns"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="needs debootstrap (apt-get install -y debootstrap)"),
]

SUITE = "bookworm"
PACKAGES = "iptables,ufw,python3-minimal"
MIRROR = os.environ.get("IPTABLES_SHIM_MIRROR", "http://deb.debian.org/debian")
SHIM = "/opt/iptables-shim/bin/iptables-shim"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs in the private mount (and PID) namespace, on the host's root: the overlay, /proc, /dev, the
# checkout, then chroot. $1 lower, $2 upper, $3 work, $4 merged; the rest is the command.
ENTER = r"""
set -e
lower=$1 upper=$2 work=$3 root=$4; shift 4
/usr/bin/mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
/usr/bin/mount -t proc proc "$root/proc"
/usr/bin/mount --rbind /dev "$root/dev"
/usr/bin/mkdir -p "$root/opt/iptables-shim"
/usr/bin/mount --bind -o ro "$SHIM_SRC" "$root/opt/iptables-shim"
unset SHIM_SRC
exec /usr/sbin/chroot "$root" "$@"
"""


def _tree():
    """The cached Debian root (built once); its directory."""
    fresh = os.environ.get("IPTABLES_SHIM_TEST_FRESH") == "1"
    if fresh:
        base = tempfile.mkdtemp(prefix="iptables-shim-alternatives-", dir="/var/tmp")
    else:
        base = os.path.join(os.environ.get("IPTABLES_SHIM_TEST_CACHE", "/var/cache/iptables-shim-tests"),
                            "alternatives")
    tree = os.path.join(base, "%s-ufw" % SUITE)
    stamp = tree + ".done"
    want = "%s %s\n" % (SUITE, PACKAGES)
    if not (os.path.exists(stamp) and open(stamp).read() == want):
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(base, exist_ok=True)
        t0 = time.monotonic()
        with open(tree + ".log", "w") as log:
            rc = subprocess.call(["debootstrap", "--variant=minbase", "--include=" + PACKAGES, SUITE, tree, MIRROR],
                                 stdout=log, stderr=subprocess.STDOUT, timeout=1800)
        assert rc == 0, "debootstrap failed: see %s.log" % tree
        with open(stamp, "w") as f:
            f.write(want)
        with open(os.path.join(base, "timings.log"), "a") as f:
            f.write("%s debootstrap %s %s: %.1f s\n" % (time.strftime("%F %T"), SUITE, PACKAGES,
                                                       time.monotonic() - t0))
    return base, tree, fresh


@pytest.fixture(scope="module")
def tree():
    base, path, fresh = _tree()
    yield path
    if fresh:
        shutil.rmtree(base, ignore_errors=True)


class Root(object):
    """One test's view of the tree: its own overlay upper layer, kept across calls."""

    def __init__(self, lower, scratch):
        self.lower = lower
        self.upper, self.work, self.merged = (os.path.join(scratch, d) for d in ("upper", "work", "merged"))
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d)

    def run(self, script, netns=None, env=None, timeout=120):
        argv = ["/usr/bin/unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                "/bin/sh", "-c", ENTER, "enter", self.lower, self.upper, self.work, self.merged,
                "/bin/sh", "-c", script]
        if netns is not None:
            argv = ["/usr/bin/nsenter", "--net=" + netns.path] + argv
        full_env = {"PATH": CHROOT_PATH, "LC_ALL": "C", "HOME": "/root"}
        full_env.update(env or {})
        full_env["SHIM_SRC"] = REPO
        r = subprocess.run(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")

    def ok(self, script, **kw):
        rc, out, err = self.run(script, **kw)
        assert rc == 0, (script, out, err)
        return out

    def query(self):
        """What update-alternatives says of both groups, byte for byte."""
        return self.ok("update-alternatives --query iptables; echo; update-alternatives --query ip6tables")

    def assert_ufw_lands_in(self, netns, backend, seed):
        """ufw (by full path, with its own PATH in ufw-init) in `netns`, where `seed` was written
        into `backend`: its rules land there and nowhere else, and they went through the shim (the
        decision, grounded in those rules, is in the root's /run/iptables-shim, kept in the upper
        layer)."""
        other = "nft" if backend == "legacy" else "legacy"
        netns.ok("iptables-%s -A INPUT -s %s -j ACCEPT" % (backend, seed))
        self.ok("ufw --force enable && ufw allow 2222/tcp", netns=netns)
        rules = netns.rules(backend)
        assert "-A INPUT -s %s/32 -j ACCEPT" % seed in rules
        assert "-A ufw-user-input -p tcp -m tcp --dport 2222 -j ACCEPT" in rules, rules
        assert netns.rules(other) == [] and netns.rules(other, "ip6tables") == []
        cache = os.path.join(self.upper, "run", "iptables-shim")
        entries = [open(os.path.join(cache, n)).read() for n in os.listdir(cache)] if os.path.isdir(cache) else []
        assert entries and all(e.startswith(backend + " ") for e in entries), entries

    def links(self):
        """The links the alternatives system keeps, and the shim's record."""
        return self.ok("for n in iptables iptables-save iptables-restore ip6tables ip6tables-save "
                       "ip6tables-restore; do echo $n $(readlink /usr/sbin/$n) $(readlink /etc/alternatives/$n); "
                       "done; ls -la --time-style=+ /var/lib/dpkg/alternatives/iptables "
                       "/var/lib/dpkg/alternatives/ip6tables; cat /var/lib/iptables-shim/alternatives "
                       "2>/dev/null || echo no-record")


@pytest.fixture
def root(tree, tmp_path):
    r = Root(tree, str(tmp_path / "root"))
    # ufw's sysctl file is left out (IPT_SYSCTL empty): these tests are about its rules.
    r.ok("sed -i 's|^IPT_SYSCTL=.*|IPT_SYSCTL=|' /etc/default/ufw; "
         "update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null; "
         "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null")
    return r


def one_error_line(rc, out, err):
    assert rc != 0 and out == "", (rc, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("iptables-shim: "), err


def test_install_routes_full_path_callers_and_uninstall_restores_exactly(root, netns):
    before_query, before_links = root.query(), root.links()
    assert "Status: manual\nBest: /usr/sbin/iptables-nft\nValue: /usr/sbin/iptables-legacy\n" in before_query

    out = root.ok(SHIM + " install --alternatives")
    assert out.splitlines() == [
        "ip6tables alternative: /opt/iptables-shim/bin/ip6tables (registered)",
        "iptables alternative: /opt/iptables-shim/bin/iptables (registered)"], out
    assert root.ok("readlink -f /usr/sbin/iptables /usr/sbin/ip6tables-save").split() == [
        "/opt/iptables-shim/bin/iptables-shim"] * 2
    record = root.ok("stat -c '%U %a' /var/lib/iptables-shim/alternatives; cat /var/lib/iptables-shim/alternatives")
    assert record.startswith("root 644\n") and "alias iptables-save /usr/sbin/iptables-legacy-save\n" in record
    installed_query, installed_links = root.query(), root.links()
    # Twice: nothing changes, not even a timestamp.
    out = root.ok(SHIM + " install --alternatives")
    assert all(l.endswith("(already this shim)") for l in out.splitlines()) and len(out.splitlines()) == 2
    assert (root.query(), root.links()) == (installed_query, installed_links)

    # ufw in a netns that holds legacy rules.
    root.assert_ufw_lands_in(netns, "legacy", "192.0.2.9")

    out = root.ok(SHIM + " uninstall --alternatives")
    assert out.splitlines() == ["ip6tables alternative: /usr/sbin/ip6tables-legacy (restored)",
                                "iptables alternative: /usr/sbin/iptables-legacy (restored)"], out
    assert root.query() == before_query
    assert root.links() == before_links
    assert root.ok("ls -d /var/lib/iptables-shim 2>/dev/null || echo gone").strip() == "gone"
    # Twice: nothing to undo, nothing changes.
    out = root.ok(SHIM + " uninstall --alternatives")
    assert out == "alternatives: the shim is not installed there; nothing to undo\n"
    assert (root.query(), root.links()) == (before_query, before_links)


def test_auto_mode_is_restored_as_auto(root):
    root.ok("update-alternatives --auto iptables >/dev/null; update-alternatives --auto ip6tables >/dev/null")
    before = (root.query(), root.links())
    assert "Status: auto\n" in before[0]
    root.ok(SHIM + " install --alternatives")
    assert root.ok("readlink /etc/alternatives/iptables").strip() == "/opt/iptables-shim/bin/iptables"
    # The shim outranks what a later iptables upgrade registers (Debian: nft 20, legacy 10).
    root.ok("update-alternatives --install /usr/sbin/iptables iptables /usr/sbin/iptables-nft 20 "
            "--slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-nft-restore "
            "--slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-nft-save")
    assert root.ok("readlink /etc/alternatives/iptables").strip() == "/opt/iptables-shim/bin/iptables"
    root.ok(SHIM + " uninstall --alternatives")
    assert (root.query(), root.links()) == before


def test_default_alias_is_the_recorded_choice_not_the_shim(root, netns):
    """With /usr/sbin/iptables leading to the shim (skipped as a shim), the alias the shim uses is
    the recorded one: legacy here, so ufw in an empty netns writes into legacy, not nft."""
    root.ok(SHIM + " install --alternatives")
    root.ok("ufw --force enable && ufw allow 2223/tcp", netns=netns)
    assert "-A ufw-user-input -p tcp -m tcp --dport 2223 -j ACCEPT" in netns.rules("legacy")
    assert netns.rules("nft") == []
    out = root.ok(SHIM + " explain", netns=netns)
    assert "default alias: /usr/sbin/iptables-legacy" in out, out


def test_refuses_what_it_did_not_create(root):
    before = (root.query(), root.links())
    # The shim registered by hand, not by install: install and uninstall both refuse.
    root.ok("update-alternatives --install /usr/sbin/iptables iptables /opt/iptables-shim/bin/iptables 5 "
            "--slave /usr/sbin/iptables-restore iptables-restore /opt/iptables-shim/bin/iptables-restore "
            "--slave /usr/sbin/iptables-save iptables-save /opt/iptables-shim/bin/iptables-save >/dev/null")
    by_hand = (root.query(), root.links())
    for verb in ("install", "uninstall"):
        one_error_line(*root.run(SHIM + " %s --alternatives" % verb))
        assert (root.query(), root.links()) == by_hand
    root.ok("update-alternatives --remove iptables /opt/iptables-shim/bin/iptables >/dev/null")
    assert (root.query(), root.links()) == before
    # Installed, then someone chose nft by hand: uninstall will not undo their choice.
    root.ok(SHIM + " install --alternatives")
    root.ok("update-alternatives --set iptables /usr/sbin/iptables-nft >/dev/null")
    changed = (root.query(), root.links())
    rc, out, err = root.run(SHIM + " uninstall --alternatives")
    one_error_line(rc, out, err)
    assert "/usr/sbin/iptables-nft" in err
    one_error_line(*root.run(SHIM + " install --alternatives"))
    assert (root.query(), root.links()) == changed
    # No iptables alternatives at all (iptables not installed that way): install says what to use.
    root.ok("update-alternatives --remove-all iptables; update-alternatives --remove-all ip6tables; true")
    rc, out, err = root.run("rm -rf /var/lib/iptables-shim; " + SHIM + " install --alternatives")
    one_error_line(rc, out, err)
    assert "install /usr/local/sbin" in err
