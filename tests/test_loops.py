"""Issue 2, item 6: no PATH layout makes the shim run itself forever. Each call either runs the
real binary (the rule lands in the right backend) or stops with one `iptables-shim:` line, and
either way within a second."""

import os
import shutil

import pytest

from conftest import BIN, REPO, SYSTEM_PATH, shim_env
from namespaces import call
from shim_output import shim_error_line

CONTAINER = {"IPTABLES_SHIM_CONTEXT": "container"}  # decide from the rules: legacy here


def copy_checkout(dest):
    """A second checkout (bin/ and the shim package, cp -r): the same code, other files."""
    shutil.copytree(BIN, os.path.join(dest, "bin"), symlinks=True)
    shutil.copytree(os.path.join(REPO, "shim"), os.path.join(dest, "shim"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return os.path.join(dest, "bin")


def wrapper_dir(dest, via_nft_name=False):
    """A default alias that is a shell script calling `iptables` again through PATH. With
    via_nft_name its symlink chain ends in a file named xtables-nft-multi, so the shim takes it for
    an nft alias and may execute it."""
    os.makedirs(dest)
    script = os.path.join(dest, "xtables-nft-multi" if via_nft_name else "iptables")
    with open(script, "w") as f:
        f.write('#!/bin/sh\nexec iptables "$@"\n')
    os.chmod(script, 0o755)
    if via_nft_name:
        os.symlink("xtables-nft-multi", os.path.join(dest, "iptables"))
    return dest


def layout(tmp_path, name):
    t = str(tmp_path)
    link = os.path.join(t, "link-to-bin")
    os.symlink(BIN, link)
    layouts = {
        "bin-twice": lambda: [BIN, BIN, SYSTEM_PATH],
        "symlinked-dir-first": lambda: [link, BIN, SYSTEM_PATH],
        "symlinked-dir-second": lambda: [BIN, link, SYSTEM_PATH],
        "copied-checkout-first": lambda: [copy_checkout(t + "/copy"), BIN, SYSTEM_PATH],
        "copied-checkout-second": lambda: [BIN, copy_checkout(t + "/copy"), SYSTEM_PATH],
        "two-copies-and-bin": lambda: [copy_checkout(t + "/a"), copy_checkout(t + "/b"), BIN, SYSTEM_PATH],
        "wrapper-alias": lambda: [BIN, wrapper_dir(t + "/wrap"), SYSTEM_PATH],
        "nft-named-wrapper-alias": lambda: [BIN, wrapper_dir(t + "/wrap", True), SYSTEM_PATH],
        # Nothing real after the shim: these can only end in an error.
        "only-a-copy-after": lambda: [BIN, copy_checkout(t + "/copy")],
        "only-copies": lambda: [copy_checkout(t + "/a"), copy_checkout(t + "/b"), BIN],
        "only-a-symlinked-dir-after": lambda: [BIN, link],
        "only-a-wrapper-after": lambda: [BIN, wrapper_dir(t + "/wrap")],
        "only-an-nft-named-wrapper-after": lambda: [BIN, wrapper_dir(t + "/wrap", True)],
    }
    return ":".join(layouts[name]())


RUNS = ["bin-twice", "symlinked-dir-first", "symlinked-dir-second", "copied-checkout-first",
        "copied-checkout-second", "two-copies-and-bin", "wrapper-alias", "nft-named-wrapper-alias"]
STOPS = ["only-a-copy-after", "only-copies", "only-a-symlinked-dir-after", "only-a-wrapper-after",
         "only-an-nft-named-wrapper-after"]


def holders(netns, source):
    return [b for b in ("nft", "legacy") if any(" %s/32 " % source in l for l in netns.rules(b))]


@pytest.mark.parametrize("rules", ["legacy-rules", "empty-netns"])
@pytest.mark.parametrize("name", RUNS + STOPS)
def test_path_layout_runs_the_real_binary_or_stops_within_a_second(netns, cache_dir, tmp_path, name, rules):
    if rules == "legacy-rules":
        netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    env = shim_env(cache_dir, path=layout(tmp_path, name), **CONTAINER)
    proc, elapsed = call(netns, ["iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"], env, timeout=20)
    assert elapsed < 1.0, (name, elapsed)
    err = proc.stderr.decode("utf-8", "replace")
    if name in RUNS:
        assert proc.returncode == 0 and err == "", err
        # Legacy rules: legacy (step 5). Empty netns: the first real alias on PATH (nft) or, where
        # the only alias is a wrapper, the nft variant (step 7); never a loop, never nothing.
        assert holders(netns, "192.0.2.1") == (["legacy"] if rules == "legacy-rules" else ["nft"])
    else:
        shim_error_line(proc)
        assert holders(netns, "192.0.2.1") == []
        if name == "only-an-nft-named-wrapper-after" and rules == "empty-netns":
            # The one layout where the shim executes the alias (nft, like the decision) and the
            # alias runs the shim again: the re-entry is stopped and named.
            assert "started again by the shim at %s/iptables" % BIN in err, err


@pytest.mark.parametrize("name", ["bin-twice", "symlinked-dir-first", "copied-checkout-first",
                                  "copied-checkout-second", "two-copies-and-bin"])
def test_another_shim_on_path_does_not_hide_the_host_alias(netns, cache_dir, tmp_path, name):
    """Host context: the host's own alias (/usr/sbin/iptables, nft here) decides, as kubelet would,
    even with legacy rules present. A second shim found before it on PATH is no alias of any
    backend: taking it for one would drop that rule and write where the host does not read."""
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    env = shim_env(cache_dir, path=layout(tmp_path, name))
    proc, elapsed = call(netns, ["iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"], env, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 1.0
    assert holders(netns, "192.0.2.1") == ["nft"]
