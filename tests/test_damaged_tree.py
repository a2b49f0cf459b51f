"""A shim damaged or half-replaced (an upgrade caught between two files, a disk error) says so in
one `iptables-shim:` line and exits 127, running nothing: never a Python traceback on the caller's
stderr, which callers parse (SPEC "Errors"). For the frozen tree (the guarded entry of
packaging/launcher/main.c) and the source shim (bin/iptables-shim), each damage on a call that
Python answers (the first of a netns); the rule the call would have added is in neither backend.
A call the launcher's C route answers never reads lib/: a cached netns keeps working while the
tree's bytecode is half-replaced.
"""

import os
import py_compile
import shutil
import tempfile

import pytest

from namespaces import SYSTEM_PATH

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_other_version(source_text, out):
    """Bytecode of another version of a module, as packaging/build.sh compiles it."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "module.py")
        with open(src, "w") as f:
            f.write(source_text)
        py_compile.compile(src, cfile=out, doraise=True, optimize=2,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def garbage(path):
    with open(path, "wb") as f:
        f.write(os.urandom(3000))


# Each damage: (what, function(module path)), applied to one module of the tree or checkout.
TOOLS_WITHOUT_VARIANT_NAME = open(os.path.join(REPO, "shim", "tools.py")).read().replace(
    "def variant_name(", "def renamed_variant_name(")
DAMAGES = {
    "truncated": ("shim/resolve", truncate),
    "missing": ("shim/gather", os.unlink),
    "from another version": ("shim/tools", lambda p: compile_other_version(TOOLS_WITHOUT_VARIANT_NAME, p)
                             if p.endswith(".pyc") else open(p, "w").write(TOOLS_WITHOUT_VARIANT_NAME)),
    "garbage": ("shim/main", garbage),
}


def assert_one_line_and_nothing_run(netns, r):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 127, (r.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("iptables-shim: the shim at "), err
    assert "damaged or half-replaced" in err, err
    assert r.stdout == b""
    assert netns.rules("nft") == [] and netns.rules("legacy") == []


def call(netns, shim_dir, cache, argv=("iptables", "-A", "INPUT", "-s", "192.0.2.44", "-j", "ACCEPT")):
    env = {"PATH": shim_dir + ":" + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache,
           "IPTABLES_SHIM_CONTEXT": "container", "LC_ALL": "C"}
    return netns.run([os.path.join(shim_dir, argv[0])] + list(argv[1:]), env=env)


@pytest.fixture
def checkout_copy():
    top = tempfile.mkdtemp(prefix="damaged-checkout-", dir="/var/tmp")
    for part in ("bin", "shim"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(top, part), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkout_says_so_in_one_line(netns, checkout_copy, tmp_path, damage):
    module, spoil = DAMAGES[damage]
    spoil(os.path.join(checkout_copy, module + ".py"))
    r = call(netns, os.path.join(checkout_copy, "bin"), str(tmp_path / "cache"))
    assert_one_line_and_nothing_run(netns, r)


@pytest.fixture
def tree_copy():
    from test_frozen_roots import workspace

    _, built = workspace()
    top = tempfile.mkdtemp(prefix="damaged-tree-", dir="/var/tmp")
    copy = os.path.join(top, "iptables-shim")
    shutil.copytree(built, copy, symlinks=True)
    yield copy
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.images
@pytest.mark.parametrize("damage", sorted(DAMAGES) + ["entry missing"])
def test_a_damaged_frozen_tree_says_so_in_one_line(netns, tree_copy, tmp_path, damage):
    module, spoil = DAMAGES.get(damage, ("iptables_shim_entry", os.unlink))
    spoil(os.path.join(tree_copy, "lib", module + ".pyc"))
    r = call(netns, tree_copy, str(tmp_path / "cache"))
    assert_one_line_and_nothing_run(netns, r)
    assert tree_copy in r.stderr.decode()


@pytest.mark.images
def test_a_cached_netns_keeps_working_while_the_trees_bytecode_is_half_replaced(netns, tree_copy, tmp_path):
    netns.ok("iptables-legacy -t mangle -N KUBE-IPTABLES-HINT")
    cache = str(tmp_path / "cache")
    assert call(netns, tree_copy, cache, ("iptables", "-S")).returncode == 0  # Python decides, caches
    for module, spoil in DAMAGES.values():
        spoil(os.path.join(tree_copy, "lib", module + ".pyc"))
    r = call(netns, tree_copy, cache)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert netns.rules("legacy") == ["-A INPUT -s 192.0.2.44/32 -j ACCEPT"] and netns.rules("nft") == []
