"""The one executable carries every module the shim imports (docs/images.md#one-file).

Its sys.path is empty: an import that no builtin or frozen module answers reaches the entry's last
finder (packaging/entry.py NotFrozenIn), which says so on stderr under IPTABLES_SHIM_DEBUG=1. Every
verb and route runs here through the built file in a trixie root (tests/test_frozen_roots.py's
overlay roots: its own iptables 1.8.11 and update-alternatives, the tree at /opt/iptables-shim),
with that watch on, and any such line fails the test, except a module that no Linux Python has
(the platform probes of the standard library: `msvcrt` in subprocess), which the build python
itself cannot find either.

The six names answer through the C route (no import at all) or Python's: IPTABLES_SHIM_DEBUG=1
hands every call to Python, so the cases below are Python's route, which is also the route of every
call the C route hands over. The cases: a netns's first call with rules in nft, in legacy, a hint,
none; a cache hit; the cache off; host context; a caller without CAP_NET_ADMIN; the override; a log
file; each of the six names; the refusals (a bad setting, no binary of the chosen backend, the
re-entry mark, a name the shim does not serve); `explain` (text, --json, --family), `doctor`
(text, --json, --prometheus, --every), `install`/`uninstall` of a directory and --alternatives, the
verbs' usage errors.
"""

import os
import shutil
import subprocess

import pytest

from test_frozen_roots import CALLER_ENV, SHIM_DIR, root_with_tree

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts, namespaces, chroot"),
]

WATCH = ": not in the executable"
SHIM = SHIM_DIR + "/iptables-shim"
SEEDS = {
    "nft rules": "iptables-nft -A INPUT -j ACCEPT",
    "legacy rules": "iptables-legacy -A INPUT -j ACCEPT",
    "a hint": "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; iptables-nft -A INPUT -j ACCEPT",
    "no rules": "true",
}
CONTAINER = "IPTABLES_SHIM_CONTEXT=container"
CALLS = [
    # (what, shell script run in the root: the shim's calls after the seed; {seed} in front)
    ("first call, then a cache hit, every name",
     "{seed}; for n in 'iptables -S' iptables-save 'ip6tables -S' ip6tables-save; do %s %s/$n >/dev/null; done; "
     "printf '*filter\\nCOMMIT\\n' | %s %s/iptables-restore; printf '*filter\\nCOMMIT\\n' | %s %s/ip6tables-restore"
     % ((CONTAINER, SHIM_DIR) * 3)),
    ("the cache off", "{seed}; %s IPTABLES_SHIM_CACHE=off %s/iptables -S >/dev/null" % (CONTAINER, SHIM_DIR)),
    ("a log file", "{seed}; %s IPTABLES_SHIM_LOG=/tmp/shim.log %s/iptables -S >/dev/null" % (CONTAINER, SHIM_DIR)),
    ("host context", "{seed}; %s/iptables -S >/dev/null" % SHIM_DIR),
    ("no CAP_NET_ADMIN", "{seed}; setpriv --reuid=65534 --regid=65534 --clear-groups env IPTABLES_SHIM_CACHE_DIR=/tmp/c "
     "%s %s/iptables -S >/dev/null 2>&1 || true" % (CONTAINER, SHIM_DIR)),
    ("the override", "{seed}; IPTABLES_SHIM_MODE=legacy %s/iptables -S >/dev/null" % SHIM_DIR),
    ("explain", "{seed}; %s explain >/dev/null; %s explain --json >/dev/null; %s explain --family ip6tables >/dev/null"
     % ((SHIM,) * 3)),
    # doctor exits 1 where it finds a problem (kubelet's hint in legacy, rules in nft)
    ("doctor", "{seed}; for a in '' --json '--prometheus /tmp/d.prom'; do %s doctor $a >/dev/null || test $? = 1; done"
     % SHIM),
    ("install and uninstall", "%s install /usr/local/sbin >/dev/null && %s uninstall /usr/local/sbin >/dev/null && "
     "%s install --alternatives >/dev/null && %s uninstall --alternatives >/dev/null" % ((SHIM,) * 4)),
]
# Refusals: each must print its one line and run nothing (exit status not 0).
REFUSALS = [
    "IPTABLES_SHIM_MODE=bogus %s/iptables -S" % SHIM_DIR,
    "%s PATH=/nonexistent %s/iptables -S" % (CONTAINER, SHIM_DIR),
    "IPTABLES_SHIM_CALLER=/x %s/iptables -S" % SHIM_DIR,
    "ln -s %s /tmp/not-a-name && /tmp/not-a-name" % SHIM,
    "%s bogus" % SHIM,
    "%s install" % SHIM,
    "%s explain --bogus" % SHIM,
    "%s doctor --every" % SHIM,
]


def missing_everywhere(name):
    """True when the build's own python3.11 cannot find `name` either: a module no Linux Python has."""
    r = subprocess.run(["/usr/bin/python3.11", "-I", "-c", "import importlib.util, sys; "
                        "sys.exit(importlib.util.find_spec(sys.argv[1]) is not None)", name])
    return r.returncode == 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return root_with_tree("trixie", tmp_path_factory.mktemp("imports"))


def not_frozen(stderr):
    return sorted({l.split()[3].rstrip(":") for l in stderr.decode("utf-8", "replace").splitlines() if l.endswith(WATCH)})


@pytest.mark.parametrize("seed", sorted(SEEDS))
@pytest.mark.parametrize("what,script", CALLS, ids=[c[0] for c in CALLS])
def test_every_import_is_frozen_in(root, seed, what, script):
    env = dict(CALLER_ENV, IPTABLES_SHIM_DEBUG="1")
    r = root.run(["/bin/sh", "-ec", script.format(seed=SEEDS[seed])], env)
    assert r.returncode == 0, (what, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr.decode("utf-8", "replace"), r.stderr
    missing = [m for m in not_frozen(r.stderr) if not missing_everywhere(m)]
    assert not missing, (what, seed, missing)


@pytest.mark.parametrize("script", REFUSALS)
def test_every_refusal_imports_only_what_is_frozen_in(root, script):
    env = dict(CALLER_ENV, IPTABLES_SHIM_DEBUG="1")
    r = root.run(["/bin/sh", "-c", script], env)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0 and "iptables-shim: " in err and "Traceback" not in err, (script, r)
    missing = [m for m in not_frozen(r.stderr) if not missing_everywhere(m)]
    assert not missing, (script, missing)


def test_the_watch_sees_a_module_left_out(root, tmp_path):
    """The watch can fail. A copy of the checkout whose jsontext imports json in a way freeze.py
    cannot see (`__import__`) builds a file without json; its `explain --json` then falls back to
    the shim's own JSON, silently but for the watch, which names json. The copy is built by
    packaging/build.sh with the workspace's interpreter (a relink: seconds)."""
    from images import REPO
    from test_frozen_roots import workspace

    ws, _ = workspace()
    copy = tmp_path / "checkout"
    for part in ("shim", "packaging", "pyproject.toml"):
        src = os.path.join(REPO, part)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, str(copy / part))
    p = copy / "shim" / "jsontext.py"
    text = p.read_text()
    assert "        import json\n" in text
    p.write_text(text.replace("        import json\n", "        json = __import__('js' + 'on')\n"))
    env = dict(os.environ, IPTABLES_SHIM_BUILD_CACHE=os.path.join(ws.root, "build"))
    subprocess.run([str(copy / "packaging" / "build.sh"), "--out", str(tmp_path / "out")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
    built = (tmp_path / "out" / "iptables-shim" / "BUILDINFO").read_text()
    assert "frozen-stdlib\tjson\n" not in built and "frozen-stdlib\tre\n" in built
    r = subprocess.run(["/usr/bin/unshare", "-n", str(tmp_path / "out" / "iptables-shim" / "iptables-shim"),
                        "explain", "--json"], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IPTABLES_SHIM_DEBUG": "1"},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(b"{"), r
    assert [m for m in not_frozen(r.stderr) if not missing_everywhere(m)] == ["json"], r.stderr
