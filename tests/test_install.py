"""`iptables-shim install DIR` (issue 4), from the source shim: links the six names and
iptables-shim into DIR, idempotent, never overwrites what is not already this shim, never writes a
distribution directory. The frozen shim's install runs in tests/test_images.py (packaging/Containerfile's
RUN) and is the same code."""

import hashlib
import os
import shutil
import subprocess

import pytest

from conftest import BIN, SYSTEM_PATH
from shim.tools import CLI_NAME, SHIM_NAMES

SHIM = os.path.join(BIN, "iptables-shim")
TARGET = os.path.realpath(SHIM)
ALL_NAMES = sorted(SHIM_NAMES) + [CLI_NAME]


def install(directory, shim=SHIM):
    # DIR first on PATH, as an image has /usr/local/sbin: else install warns that calls miss it.
    r = subprocess.run([shim, "install", str(directory)], env={"PATH": "%s:%s" % (directory, SYSTEM_PATH), "LC_ALL": "C"},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def state(directory):
    """Every entry of directory: name -> (link target or file hash, inode)."""
    out = {}
    for name in sorted(os.listdir(str(directory))):
        p = os.path.join(str(directory), name)
        st = os.lstat(p)
        if os.path.islink(p):
            out[name] = ("link", os.readlink(p), st.st_ino, st.st_mtime_ns)
        else:
            with open(p, "rb") as f:
                out[name] = ("file", hashlib.sha256(f.read()).hexdigest(), st.st_ino, st.st_mtime_ns)
    return out


def assert_one_error_line(rc, out, err):
    assert rc != 0 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("iptables-shim: "), err


def test_install_creates_the_links_and_is_idempotent(tmp_path):
    d = tmp_path / "usr-local-sbin"  # created when missing
    rc, out, err = install(d)
    assert rc == 0 and err == "", err
    assert out.splitlines() == ["%s/%s: link created" % (d, n) for n in ALL_NAMES]
    assert sorted(os.listdir(str(d))) == ALL_NAMES
    for n in ALL_NAMES:
        assert os.readlink(str(d / n)) == TARGET
    before = state(d)
    rc, out, err = install(d)
    assert rc == 0 and err == ""
    assert out.splitlines() == ["%s/%s: already this shim" % (d, n) for n in ALL_NAMES]
    assert state(d) == before  # not even re-created


def test_installed_names_are_the_shim(tmp_path):
    """The links dispatch on their names and find the real binaries behind them, not themselves."""
    d = tmp_path / "sbin"
    assert install(d)[0] == 0
    env = {"PATH": "%s:%s" % (d, SYSTEM_PATH), "IPTABLES_SHIM_MODE": "legacy", "IPTABLES_SHIM_DEBUG": "1",
           "IPTABLES_SHIM_CACHE": "off"}
    r = subprocess.run(["unshare", "-n", "iptables", "-V"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "iptables v1.8.9 (legacy)"
    assert r.stderr.decode().startswith("iptables-shim: iptables -> /usr/sbin/iptables-legacy: legacy")
    # Installing from an installed link links to the shim itself, not to the link.
    rc, _, _ = install(tmp_path / "other", shim=str(d / "iptables-shim"))
    assert rc == 0 and os.readlink(str(tmp_path / "other" / "iptables")) == TARGET


def test_install_into_the_shims_own_bin_changes_nothing():
    before = state(BIN)
    rc, out, err = install(BIN)
    assert rc == 0 and err == "", err
    assert all(l.endswith(": already this shim") for l in out.splitlines()), out
    assert state(BIN) == before


@pytest.mark.parametrize("kind", ["real binary", "link elsewhere", "shim copy", "dangling link"])
def test_install_refuses_to_overwrite_what_is_not_this_shim(tmp_path, kind):
    d = tmp_path / "sbin"
    d.mkdir()
    victim = d / "iptables-save"
    if kind == "real binary":
        shutil.copy2(os.path.realpath("/usr/sbin/iptables-save"), str(victim))
    elif kind == "link elsewhere":
        os.symlink("/usr/sbin/iptables-nft-save", str(victim))
    elif kind == "shim copy":
        shutil.copy2(SHIM, str(victim))  # same script, another file: not *this* shim
    else:
        os.symlink("/nonexistent/iptables-shim", str(victim))
    before = state(d)
    rc, out, err = install(d)
    assert_one_error_line(rc, out, err)
    assert str(victim) in err and "nothing was installed" in err
    assert state(d) == before  # nothing written, not even the names that were free


@pytest.mark.parametrize("directory", ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/sbin/"])
def test_install_never_writes_a_distribution_directory(directory):
    real = os.path.realpath(directory)
    before = sorted(os.listdir(real))
    rc, out, err = install(directory)
    assert_one_error_line(rc, out, err)
    assert "refusing to install into %s" % directory in err and "/usr/local/sbin" in err
    assert sorted(os.listdir(real)) == before


def test_install_through_a_symlink_to_usr_sbin_is_refused(tmp_path):
    link = tmp_path / "looks-harmless"
    os.symlink("/usr/sbin", str(link))
    before = sorted(os.listdir("/usr/sbin"))
    assert_one_error_line(*install(link))
    assert sorted(os.listdir("/usr/sbin")) == before


def test_install_usage_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_error_line(*install(f))  # not a directory
    for args in ([], ["a", "b"], ["--force"]):
        r = subprocess.run([SHIM, "install"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert r.returncode != 0 and r.stdout == b""
        assert r.stderr.decode().startswith("iptables-shim: install takes one directory")


def test_install_creates_the_directory_but_never_its_parents(tmp_path):
    """install writes nothing outside DIR: a missing DIR is made, a missing parent is refused."""
    d = tmp_path / "missing" / "sbin"
    assert_one_error_line(*install(d))
    assert os.listdir(str(tmp_path)) == []


def uninstall(directory, shim=SHIM):
    r = subprocess.run([shim, "uninstall", str(directory)], env={"PATH": SYSTEM_PATH, "LC_ALL": "C"},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_uninstall_removes_the_links_install_made_and_is_idempotent(tmp_path):
    d = tmp_path / "sbin"
    d.mkdir()
    (d / "unrelated").write_text("kept")
    before = state(d)
    assert install(d)[0] == 0
    rc, out, err = uninstall(d)
    assert rc == 0 and err == "", err
    assert out.splitlines() == ["%s/%s: link removed" % (d, n) for n in ALL_NAMES]
    assert state(d) == before
    rc, out, err = uninstall(d)  # twice: nothing to undo, nothing changes
    assert rc == 0 and err == "" and out == "%s: no link of this shim there; nothing to undo\n" % d
    assert state(d) == before
    rc, out, err = uninstall(tmp_path / "never-made")
    assert rc == 0 and err == "" and "nothing to undo" in out


@pytest.mark.parametrize("kind", ["real binary", "link elsewhere", "relative link to the shim"])
def test_uninstall_refuses_what_install_did_not_make(tmp_path, kind):
    d = tmp_path / "sbin"
    assert install(d)[0] == 0
    victim = d / "ip6tables-restore"
    victim.unlink()
    if kind == "real binary":
        shutil.copy2(os.path.realpath("/usr/sbin/ip6tables-restore"), str(victim))
    elif kind == "link elsewhere":
        os.symlink("/usr/sbin/ip6tables-nft-restore", str(victim))
    else:  # leads to the shim, but install writes the shim's absolute real path
        os.symlink(os.path.relpath(TARGET, str(d)), str(victim))
    before = state(d)
    rc, out, err = uninstall(d)
    assert_one_error_line(rc, out, err)
    assert str(victim) in err and "nothing was removed" in err
    assert state(d) == before


def test_uninstall_never_removes_the_shims_own_names():
    before = state(BIN)
    assert_one_error_line(*uninstall(BIN))  # bin/'s links are relative: not made by install
    assert state(BIN) == before
