"""The configuration file: settings that hold for callers that reset the environment.

conmon runs `podman container cleanup` with only PATH, HOME and XDG_RUNTIME_DIR; sudo, systemd
units, `ufw-init` and netfilter-persistent reset the environment too. A backend override that holds
for `podman run` but not for its cleanup leaves DNAT rules behind in the other backend, so every
setting an environment variable holds can also be set in /etc/iptables-shim.conf (NAME=VALUE lines,
`#` comments), trusted only when root-owned and not group/world-writable; the environment wins.

The file at its real path is tested in a private mount namespace with an overlay over /etc (upper
layer on a tmpfs of that namespace): the machine's own /etc never sees a file. Everything else uses
IPTABLES_SHIM_CONFIG=PATH, the environment-only pointer to another file that exists for tests.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import BIN, SYSTEM_PATH, bin_for_other_users
from shim_output import shim_error_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network and mount namespaces")

MARK = "iptables-shim-config"
WRITE = ["iptables", "-A", "INPUT", "-s", "198.51.100.9", "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]
SHIM_PATH = BIN + ":" + SYSTEM_PATH
NOBODY = 65534

# Runs in a private mount namespace: an overlay over /etc whose upper layer is a tmpfs mounted
# there, so /etc/iptables-shim.conf exists for this process tree only. $1 tmpfs mountpoint, $2 the
# file's content, $3 its mode, $4 the netns path; the rest: the command, run with `env -i`.
IN_PRIVATE_ETC = r"""
set -e
t=$1; content=$2; mode=$3; netns=$4; shift 4
mount --make-rprivate /
mount -t tmpfs none "$t"
mkdir "$t/upper" "$t/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$t/upper,workdir=$t/work" /etc
printf '%s' "$content" > /etc/iptables-shim.conf
chmod "$mode" /etc/iptables-shim.conf
exec nsenter --net="$netns" env -i "$@"
"""


def with_etc_conf(tmp_path, netns, content, cmd, env_pairs=(), mode="0644"):
    """Run cmd in netns with /etc/iptables-shim.conf holding content, under `env -i` plus only the
    given NAME=VALUE pairs."""
    mnt = tmp_path / ("etc-%d" % len(os.listdir(str(tmp_path))))
    mnt.mkdir()
    argv = ["unshare", "--mount", "sh", "-c", IN_PRIVATE_ETC, "in-private-etc", str(mnt), content, mode,
            netns.path] + list(env_pairs) + list(cmd)
    r = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=60, check=False)
    return r


def landed(netns):
    return {b: [l for l in netns.rules(b) if MARK in l] for b in ("nft", "legacy")}


def one_line_naming(proc, *words):
    """The shim's one-line error (shim_output.shim_error_line), naming every one of words."""
    line = shim_error_line(proc)
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.fixture(autouse=True)
def machine_etc_untouched():
    before = os.path.exists("/etc/iptables-shim.conf")
    yield
    assert os.path.exists("/etc/iptables-shim.conf") == before, "a test left /etc/iptables-shim.conf behind"


# -- the file at /etc, for processes whose environment was emptied ---------------------------------

@pytest.mark.parametrize("env_pairs", [
    ["PATH=" + SHIM_PATH],
    ["PATH=" + SHIM_PATH, "HOME=/root", "XDG_RUNTIME_DIR=/run/user/0"],  # what conmon keeps
], ids=["env -i PATH", "conmon's three"])
def test_override_only_in_etc_holds_for_an_emptied_environment(netns, tmp_path, env_pairs):
    """nft holds the netns's rules and the host aliases nft, so without the file every step says
    nft; /etc/iptables-shim.conf says legacy, and a process whose environment was emptied obeys it."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT")
    r = with_etc_conf(tmp_path, netns, "# node set to legacy\nIPTABLES_SHIM_MODE=legacy\n", WRITE, env_pairs)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), r.stderr
    where = landed(netns)
    assert where["nft"] == [] and len(where["legacy"]) == 1, where


def test_etc_setting_beats_a_cached_decision(netns, tmp_path):
    """A setting must hold for every call of a netns, not just the first: a decision cached before
    the file said otherwise does not outweigh it."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT")
    cache = tmp_path / "cache"
    first = netns.run(["iptables", "-S"], env={"PATH": SHIM_PATH, "IPTABLES_SHIM_CACHE_DIR": str(cache),
                                               "IPTABLES_SHIM_CONTEXT": "container"})
    assert first.returncode == 0, first.stderr
    r = with_etc_conf(tmp_path, netns, "IPTABLES_SHIM_MODE=legacy\n", WRITE,
                      ["PATH=" + SHIM_PATH, "IPTABLES_SHIM_CACHE_DIR=%s" % cache])
    assert r.returncode == 0, r.stderr
    where = landed(netns)
    assert where["nft"] == [] and len(where["legacy"]) == 1, where


def test_log_set_only_in_etc_is_written_for_an_emptied_environment(netns, tmp_path):
    """Every setting the environment holds can be in the file: here the log file."""
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j ACCEPT")
    log = tmp_path / "from-etc.log"
    r = with_etc_conf(tmp_path, netns, "IPTABLES_SHIM_LOG=%s\nIPTABLES_SHIM_CONTEXT=container\n" % log,
                      ["iptables", "-S"], ["PATH=" + SHIM_PATH])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert log.exists(), "IPTABLES_SHIM_LOG set in /etc/iptables-shim.conf was not used"
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "legacy" in lines[0], lines


@pytest.mark.parametrize("mode", ["0664", "0646"], ids=["group-writable", "world-writable"])
def test_writable_etc_file_is_refused(netns, tmp_path, mode):
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT")
    before = netns.snapshot()
    r = with_etc_conf(tmp_path, netns, "IPTABLES_SHIM_MODE=legacy\n", WRITE, ["PATH=" + SHIM_PATH], mode=mode)
    one_line_naming(r, "/etc/iptables-shim.conf")
    assert netns.snapshot() == before, "a refused call changed the netns"


# -- IPTABLES_SHIM_CONFIG: the same rules for any file ---------------------------------------------

def conf_file(tmp_path, text, mode=0o644, uid=0, name="shim.conf"):
    p = tmp_path / name
    p.write_text(text)
    os.chmod(str(p), mode)
    os.chown(str(p), uid, 0)
    return str(p)


def call(netns, cmd, conf, **env):
    e = {"PATH": SHIM_PATH, "LC_ALL": "C", "IPTABLES_SHIM_CONFIG": conf, "IPTABLES_SHIM_CACHE": "off"}
    e.update(env)
    return netns.run(cmd, env=e)


@pytest.mark.parametrize("kind", ["group-writable", "world-writable", "owned by uid 65534", "symlink"])
def test_untrusted_file_is_refused_in_one_line_and_nothing_runs(netns, tmp_path, kind):
    """Whoever can write the file can choose where every rule of the node goes: a file that is not
    root's alone is refused, one `iptables-shim:` line naming it, nothing executed (no rule
    written, not even `--version` run)."""
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT")
    if kind == "group-writable":
        conf = conf_file(tmp_path, "IPTABLES_SHIM_MODE=legacy\n", mode=0o664)
    elif kind == "world-writable":
        conf = conf_file(tmp_path, "IPTABLES_SHIM_MODE=legacy\n", mode=0o666)
    elif kind == "owned by uid 65534":
        conf = conf_file(tmp_path, "IPTABLES_SHIM_MODE=legacy\n", uid=NOBODY)
    else:
        real = conf_file(tmp_path, "IPTABLES_SHIM_MODE=legacy\n", name="real.conf")
        conf = str(tmp_path / "link.conf")
        os.symlink(real, conf)
    before = netns.snapshot()
    for cmd in (WRITE, ["iptables", "--version"]):
        r = call(netns, cmd, conf)
        one_line_naming(r, conf)
    assert netns.snapshot() == before


@pytest.mark.parametrize("text,line", [
    ("# ok\nIPTABLES_SHIM_CACHE=off\nIPTABLES_SHIM_MODE=bogus\n", 3),
    ("IPTABLES_SHIM_MODE=legacy\nthis is not a setting\n", 2),
    ("IPTABLES_SHIM_MOOD=legacy\n", 1),
    ("\n\nIPTABLES_SHIM_CONTEXT=pod\n", 3),
], ids=["bad value", "not NAME=VALUE", "unknown name", "bad context"])
def test_bad_line_is_one_error_naming_file_and_line(netns, tmp_path, text, line):
    conf = conf_file(tmp_path, text)
    before = netns.snapshot()
    r = call(netns, WRITE, conf)
    msg = one_line_naming(r, conf)
    assert re.search(r"(line |:)%d\b" % line, msg), msg
    assert netns.snapshot() == before


def test_environment_wins_over_the_file(netns, tmp_path):
    netns.ok("iptables-legacy -A FORWARD -s 192.0.2.1 -j ACCEPT")
    conf = conf_file(tmp_path, "IPTABLES_SHIM_MODE=legacy\n")
    r = call(netns, WRITE, conf, IPTABLES_SHIM_MODE="nft")
    assert r.returncode == 0, r.stderr
    where = landed(netns)
    assert len(where["nft"]) == 1 and where["legacy"] == [], where


def test_file_override_holds_and_comments_are_ignored(netns, tmp_path):
    netns.ok("iptables-nft -A FORWARD -s 192.0.2.1 -j ACCEPT")
    conf = conf_file(tmp_path, "# the node runs legacy\n\n  # indented comment\nIPTABLES_SHIM_MODE=legacy\n")
    r = call(netns, WRITE, conf)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    where = landed(netns)
    assert where["nft"] == [] and len(where["legacy"]) == 1, where


def test_unprivileged_caller_is_refused_by_an_untrusted_file_too(netns):
    """A caller running as uid 65534 (a non-root CNI plugin) reads the same file as root: a
    world-writable one refuses it too (pytest's tmp_path is 0700: the file sits under /var/tmp)."""
    d = tempfile.mkdtemp(prefix="shim-config-", dir="/var/tmp")
    try:
        os.chmod(d, 0o755)
        bad = conf_file(pathlib.Path(d), "IPTABLES_SHIM_MODE=legacy\n", mode=0o666)
        r = netns.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups", "iptables", "-V"],
                      env={"PATH": bin_for_other_users() + ":" + SYSTEM_PATH, "IPTABLES_SHIM_CONFIG": bad,
                           "IPTABLES_SHIM_CACHE": "off"})
        one_line_naming(r, bad)
    finally:
        shutil.rmtree(d, ignore_errors=True)
