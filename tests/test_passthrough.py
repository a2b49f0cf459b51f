"""Issue 2, item 4: argv and stdin reach the real binary untouched, its stdout, stderr and exit
code are the caller's, and it runs in the shim's own PID (execv, no child process)."""

import os
import subprocess
import time

import pytest

from conftest import BIN, SYSTEM_PATH, shim_env
from fakes import fake_argv, fake_runs, recording_fakes
from namespaces import NSENTER, call
from shim.tools import SHIM_NAMES, all_variant_names

CONTAINER = {"IPTABLES_SHIM_CONTEXT": "container"}

# Every awkward byte a caller may hand to iptables: spaces, tabs, newlines, both quotes, shell
# metacharacters, non-ASCII, invalid UTF-8, empty strings, leading dashes, a lone `--`.
AWKWARD_ARGV = [
    b"-A", b"INPUT", b"-m", b"comment", b"--comment", b"two words\tand a tab",
    b"\"double\" 'single' `back` $HOME \\ ; | & * ? [x]", "caf\u00e9 \u00fc\u4e2d \U0001F525".encode("utf-8"),
    b"\xff\xfe not utf-8 \x80", b"", b"line one\nline two", b"-", b"--", b"--comment=-x", b"-leading",
    b"  leading and trailing spaces  ", b"-j", b"ACCEPT",
]

# A comment iptables accepts (at most 255 bytes, valid UTF-8) with the same kinds of bytes.
COMMENT = "-leading dash, two  spaces\ta tab \"double\" 'single' $x \\ caf\u00e9 \u4e2d --x"


def seed(netns, backend):
    """A rule in one backend, written directly with the real binary, so the shim picks it."""
    if backend:
        netns.ok("iptables-%s -A FORWARD -s 203.0.113.1 -j DROP" % backend)


@pytest.mark.parametrize("name", sorted(SHIM_NAMES))
def test_awkward_argv_arrives_byte_exact(netns, cache_dir, tmp_path, name):
    fake = recording_fakes(tmp_path / "fake", all_variant_names())
    argv_file, log = tmp_path / "argv", tmp_path / "log"
    env = shim_env(cache_dir, path=BIN + ":" + fake + ":" + SYSTEM_PATH, FAKE_ARGV=str(argv_file),
                   FAKE_LOG=str(log), FAKE_NO_EXEC="1")
    proc, _ = call(netns, [name.encode()] + AWKWARD_ARGV, env)
    assert proc.returncode == 0, proc.stderr
    assert fake_argv(argv_file) == AWKWARD_ARGV
    family, _, tool = name.partition("-")
    *probes, run = fake_runs(log)  # probes first (each `*-save` with no argument), then the exec
    assert run == {"pid": run["pid"], "name": "%s-nft%s" % (family, "-" + tool if tool else ""),
                   "argc": str(len(AWKWARD_ARGV))}
    assert all(p["name"].endswith("-save") and p["argc"] == "0" for p in probes), probes


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_comment_text_lands_in_kernel_as_a_direct_call_writes_it(netns, cache_dir, backend):
    seed(netns, backend)
    env = shim_env(cache_dir, **CONTAINER)
    args = ["-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]
    proc, _ = call(netns, ["iptables", "-A", "INPUT"] + args, env)
    assert proc.returncode == 0, proc.stderr
    netns.ok("iptables-%s -N DIRECT" % backend)
    direct = netns.run(["iptables-%s" % backend, "-A", "DIRECT"] + args)
    assert direct.returncode == 0, direct.stderr
    lines = [l for l in netns.rules(backend) if "comment" in l]
    by_shim = [l[len("-A INPUT "):] for l in lines if l.startswith("-A INPUT ")]
    by_hand = [l[len("-A DIRECT "):] for l in lines if l.startswith("-A DIRECT ")]
    assert len(by_shim) == 1 and by_shim == by_hand, lines
    assert "caf\u00e9 \u4e2d" in by_shim[0] and "\t" in by_shim[0] and "-leading dash" in by_shim[0]
    other = {"nft": "legacy", "legacy": "nft"}[backend]
    assert not [l for l in netns.rules(other) if "comment" in l]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_restore_of_20000_rules_on_stdin_lands_whole(netns, cache_dir, backend):
    seed(netns, backend)
    lines = ["*filter"] + [
        "-A INPUT -s 10.%d.%d.%d/32 -p tcp --dport %d -m comment --comment \"rule %d\" -j ACCEPT"
        % (i >> 16 & 255, i >> 8 & 255, i & 255, 1 + i % 65000, i) for i in range(20000)] + ["COMMIT", ""]
    env = shim_env(cache_dir, **CONTAINER)
    proc, _ = call(netns, ["iptables-restore", "--noflush"], env, input="\n".join(lines).encode(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    held = netns.rules(backend)
    assert len(held) == 20001  # the seed rule survived: --noflush arrived too
    assert sum(1 for l in held if l.startswith("-A INPUT ")) == 20000
    assert '-A INPUT -s 10.0.78.30/32 -p tcp -m tcp --dport 19999 -m comment --comment "rule 19998" -j ACCEPT' in held
    other = {"nft": "legacy", "legacy": "nft"}[backend]
    assert netns.rules(other) == []


# (tool, argv after the name, exit code a direct call gives)
CASES = [
    ("", ["-S"], 0),
    ("", ["-L", "FORWARD", "-n", "-v", "--line-numbers"], 0),
    ("", ["-C", "FORWARD", "-s", "203.0.113.1", "-j", "DROP"], 0),
    ("", ["-C", "FORWARD", "-s", "192.0.2.99", "-j", "DROP"], 1),
    ("", ["-D", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"], 1),
    ("", ["-L", "NO-SUCH-CHAIN"], 1),
    ("", ["--no-such-option"], 2),
    ("", ["-A", "INPUT", "-p", "tcp", "--dport", "not-a-port", "-j", "ACCEPT"], 2),
    ("-save", [], 0),
    ("-save", ["-t", "filter", "-c"], 0),
    ("-save", ["--no-such-option"], 1),
    ("-restore", ["--test"], 0),
    ("-restore", ["--no-such-option"], 1),
]
RESTORE_INPUT = b"*filter\n-A INPUT -s 192.0.2.7 -j ACCEPT\nCOMMIT\n"


def comparable(stdout):
    """Save output carries the time it was generated: drop only those comment lines."""
    return [l for l in stdout.decode("utf-8", "replace").splitlines()
            if not l.startswith(("# Generated by", "# Completed on"))]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_stdout_stderr_and_exit_code_equal_a_direct_call(netns, cache_dir, backend):
    seed(netns, backend)
    env = shim_env(cache_dir, **CONTAINER)
    seen = set()
    for tool, args, code in CASES:
        stdin = RESTORE_INPUT if tool == "-restore" else b""
        direct, _ = call(netns, ["iptables-%s%s" % (backend, tool)] + args, env={"PATH": SYSTEM_PATH, "LC_ALL": "C"},
                         input=stdin)
        shimmed, _ = call(netns, ["iptables" + tool] + args, env, input=stdin)
        what = (tool, args)
        assert direct.returncode == code, (what, direct.stderr)
        assert shimmed.returncode == direct.returncode, what
        assert comparable(shimmed.stdout) == comparable(direct.stdout), what
        # Both run as the variant (the shim passes the resolved name as argv[0]): the same text.
        assert shimmed.stderr == direct.stderr, what
        seen.add(code)
    assert seen == {0, 1, 2}
    assert "192.0.2.7" not in "\n".join(netns.rules(backend))  # --test wrote nothing, twice


def test_real_binary_runs_in_the_shells_pid(netns, cache_dir, tmp_path):
    """`exec iptables` from a shell: the PID the shell had is the PID the real binary has."""
    fake = recording_fakes(tmp_path / "fake", all_variant_names())
    log = tmp_path / "log"
    env = shim_env(cache_dir, path=BIN + ":" + fake + ":" + SYSTEM_PATH, FAKE_LOG=str(log))
    proc, _ = call(netns, ["/bin/sh", "-c", "echo $$; exec iptables -S"], env)
    assert proc.returncode == 0, proc.stderr
    shell_pid, listing = proc.stdout.decode().split("\n", 1)
    assert "-P INPUT ACCEPT" in listing
    *probes, run = fake_runs(log)
    assert run == {"pid": shell_pid, "name": "iptables-nft", "argc": "1"}
    assert all(p["pid"] != shell_pid and p["name"].endswith("-save") for p in probes), probes


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_blocking_real_call_is_the_spawned_pid(netns, cache_dir, backend):
    """iptables-restore waiting on stdin: the PID we spawned is the real xtables binary, not a
    shim with a child."""
    seed(netns, backend)
    env = shim_env(cache_dir, **CONTAINER)
    p = subprocess.Popen([NSENTER, "--net=" + netns.path, os.path.join(BIN, "iptables-restore"), "--noflush"],
                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        exe = cmdline = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                exe = os.readlink("/proc/%d/exe" % p.pid)
                with open("/proc/%d/cmdline" % p.pid, "rb") as f:
                    cmdline = f.read()
            except OSError:
                exe = cmdline = None
            # execve installs the new exe before it lays out the new argv: wait for both.
            if exe and "xtables" in exe and cmdline:
                break
            time.sleep(0.01)
        assert exe == "/usr/sbin/xtables-%s-multi" % backend
        assert cmdline.split(b"\0")[:2] == [b"iptables-%s-restore" % backend.encode(), b"--noflush"]
        children = open("/proc/%d/task/%d/children" % (p.pid, p.pid)).read().split()
        assert children == []
        out, err = p.communicate(RESTORE_INPUT, timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "-A INPUT -s 192.0.2.7/32 -j ACCEPT" in netns.rules(backend)
