"""The shim's own failures: one stderr line starting `iptables-shim:`, exit 127, nothing executed
(recording fakes stay silent), nothing written (kernel and cache as before). And the failures
that are not the shim's (garbage arguments) come from the real binary, untouched."""

import os

import pytest

from conftest import BIN, SYSTEM_PATH, cache_files, shim_env
from fakes import fake_runs, recording_fakes
from namespaces import call
from shim.tools import SHIM_NAMES, all_variant_names
from shim_output import shim_error_line

SHIM = os.path.join(BIN, "iptables")
ADD = ["-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"]


@pytest.fixture
def watched(netns, cache_dir, tmp_path):
    """A netns with a legacy rule, recording fakes for every real name on PATH before the
    real ones (so anything the shim executes, probe or exec, leaves a line), and the state that
    must not change."""
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    fake = recording_fakes(tmp_path / "fake", all_variant_names() + sorted(SHIM_NAMES))
    log = tmp_path / "ran.log"

    class W(object):
        path = BIN + ":" + fake + ":" + SYSTEM_PATH
        before = netns.snapshot()

        @staticmethod
        def env(**extra):
            return shim_env(cache_dir, path=extra.pop("path", W.path), FAKE_LOG=str(log), **extra)

        @staticmethod
        def assert_untouched():
            assert fake_runs(log) == [], "something was executed"
            assert netns.snapshot() == W.before
            assert cache_files(cache_dir) == []

    return W


@pytest.mark.parametrize("path", ["", ":", "usr/sbin:sbin:.", "usr/sbin", "/nonexistent:/also/missing"])
def test_bad_path_is_one_line_and_runs_nothing(netns, watched, path):
    """Relative entries are never searched (a root tool must not run what the caller's working
    directory holds): from / they would reach the real binaries, and still nothing runs."""
    proc, _ = call(netns, [SHIM] + ADD, watched.env(path=path), cwd="/")
    line = shim_error_line(proc)
    assert "PATH" in line
    watched.assert_untouched()


@pytest.mark.parametrize("extra", ["", ":/nonexistent", ":/usr/bin"], ids=["bin-only", "bin-and-missing-dir", "bin-and-usr-bin"])
def test_no_iptables_on_path_is_one_line_and_runs_nothing(netns, watched, extra):
    proc, _ = call(netns, [SHIM] + ADD, watched.env(path=BIN + extra))
    line = shim_error_line(proc)
    assert "not on PATH" in line and "install" in line
    watched.assert_untouched()


@pytest.mark.parametrize("mode", ["NFT", "auto", "iptables-legacy", " nft", "legacy\n", "1"])
def test_invalid_mode_is_one_line_and_runs_nothing(netns, watched, mode):
    proc, _ = call(netns, ["iptables"] + ADD, watched.env(IPTABLES_SHIM_MODE=mode))
    line = shim_error_line(proc)
    assert "IPTABLES_SHIM_MODE=%r" % mode in line and "nft or legacy" in line
    watched.assert_untouched()


@pytest.mark.parametrize("context", ["Host", "pod", "both", "container "])
def test_invalid_context_is_one_line_and_runs_nothing(netns, watched, context):
    proc, _ = call(netns, ["iptables"] + ADD, watched.env(IPTABLES_SHIM_CONTEXT=context))
    line = shim_error_line(proc)
    assert "IPTABLES_SHIM_CONTEXT=%r" % context in line and "host or container" in line
    watched.assert_untouched()


def test_invalid_context_is_an_error_on_a_cache_hit_too(netns, cache_dir):
    """A wrong setting fails every call, not only the ones that miss the cache."""
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    ok, _ = call(netns, ["iptables"] + ADD, shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container"))
    assert ok.returncode == 0 and len(cache_files(cache_dir)) == 1
    before = netns.snapshot()
    proc, _ = call(netns, ["iptables", "-A", "INPUT", "-s", "192.0.2.2", "-j", "ACCEPT"],
                   shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="hots"))
    assert "IPTABLES_SHIM_CONTEXT='hots'" in shim_error_line(proc)
    assert netns.snapshot() == before


@pytest.mark.parametrize("name", ["iptables-nft", "iptables-legacy-save", "ip6tables-nft-restore",
                                  "xtables-nft-multi", "iptables-translate", "ebtables", "iptables-shim.py"])
def test_a_name_the_shim_does_not_serve_is_one_line_and_runs_nothing(netns, watched, tmp_path, name):
    link = tmp_path / "links" / name
    link.parent.mkdir(exist_ok=True)
    os.symlink(os.path.join(BIN, "iptables-shim"), str(link))
    proc, _ = call(netns, [str(link)] + ADD, watched.env())
    line = shim_error_line(proc)
    assert repr(name) in line and "iptables-save" in line  # names what it does serve
    watched.assert_untouched()


# Garbage the real binary rejects: its message and exit code, as a direct call gives them.
GARBAGE = [
    ("iptables", ["--no-such-option"], b""),
    ("iptables", ["-A"], b""),
    ("iptables", ["-A", "INPUT", "-s", "not-an-address", "-j", "ACCEPT"], b""),
    ("iptables", ["-t", "no-such-table", "-S"], b""),
    ("ip6tables", ["-A", "INPUT", "-s", "192.0.2.1/33", "-j", "ACCEPT"], b""),
    ("iptables-restore", [], b"this is not a ruleset\n"),
    ("iptables-restore", [], b"*filter\n-A NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n"),
    ("iptables-save", ["-t", "no-such-table"], b""),
    ("ip6tables-save", ["--bogus"], b""),
]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_garbage_arguments_fail_in_the_real_binary_not_the_shim(netns, cache_dir, backend):
    netns.ok("iptables-{0} -A FORWARD -s 203.0.113.1 -j DROP; ip6tables-{0} -A FORWARD -s 2001:db8::1 -j DROP"
             .format(backend))
    env = shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="container")
    for name, args, stdin in GARBAGE:
        family, _, tool = name.partition("-")
        real = "%s-%s%s" % (family, backend, "-" + tool if tool else "")
        before = netns.snapshot()
        direct, _ = call(netns, [real] + args, {"PATH": SYSTEM_PATH, "LC_ALL": "C"}, input=stdin)
        shimmed, _ = call(netns, [name] + args, env, input=stdin)
        what = (name, args)
        assert direct.returncode not in (0, 127), (what, direct.stderr)
        assert (shimmed.returncode, shimmed.stdout, shimmed.stderr) == (direct.returncode, direct.stdout, direct.stderr), what
        assert not shimmed.stderr.startswith(b"iptables-shim:")
        assert netns.snapshot() == before, what


# The image's os-release, and the words its refusal must carry (docs/decision.md#errors-in-the-images-words).
OS_RELEASES = {
    "alpine": ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.21.3\nPRETTY_NAME="Alpine Linux v3.21"\n',
               ": apk add iptables-legacy (Alpine 3.19+ ships legacy apart from iptables"),
    "rhel": ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.5"\n'
             'PRETTY_NAME="Red Hat Enterprise Linux 9.5 (Plow)"\n',
             ": Red Hat Enterprise Linux ships no legacy iptables (only EPEL's iptables-legacy: enable EPEL, "
             "then dnf install iptables-legacy), or move the writer to nf_tables, or set IPTABLES_SHIM_MODE"),
    "no os-release": (None, ": install the legacy variant of iptables, or set IPTABLES_SHIM_MODE"),
}


@pytest.mark.parametrize("image", sorted(OS_RELEASES))
def test_a_missing_variant_is_named_in_the_images_words(netns, make_chroot, image):
    """A container whose image ships only nft, in a pod netns that holds a legacy rule: the shim
    chooses legacy and refuses, naming the fix as the image's distribution says it (read from the
    container's own /etc/os-release). Without one (the stand-in's /usr/lib is the host's, so its
    os-release is masked too) the words are the generic ones. One line, exit 127, nothing written."""
    text, words = OS_RELEASES[image]
    container = make_chroot(("nft",), "nft")
    if text is not None:
        with open(os.path.join(container.root, "etc", "os-release"), "w") as f:
            f.write(text)
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    before = netns.snapshot()
    cmd = ["iptables"] + ADD
    if text is None:
        cmd = ["/bin/sh", "-c", '/usr/bin/mount --bind /dev/null /usr/lib/os-release && exec "$@"', "sh"] + cmd
    proc = container.run(cmd, netns=netns, IPTABLES_SHIM_CACHE="off")
    line = shim_error_line(proc)
    assert "chose legacy (step 5: legacy holds rules) but iptables-legacy is not on PATH" in line, line
    assert words in line, line
    if text is not None:
        assert "variant of iptables" not in line
    assert netns.snapshot() == before
