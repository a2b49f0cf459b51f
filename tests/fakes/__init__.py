"""Helpers for the passthrough, cache, loop, error and explain tests: recording stand-ins for the
real binaries (only where recording argv, PIDs or probes is the point), calls through the shim that
work even with a broken PATH, and the netns's cache key as the shim computes it."""

import os
import subprocess
import time

FAKES = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(FAKES, "record")
REPO = os.path.dirname(os.path.dirname(FAKES))
NSENTER = "/usr/bin/nsenter"
SAVE_NAMES = ["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"]
VARIANT_NAMES = ["%s-%s%s" % (f, b, s) for f in ("iptables", "ip6tables") for b in ("nft", "legacy")
                 for s in ("", "-save", "-restore")]


def recording_dir(directory, names):
    """A directory of symlinks named like real binaries, each to the recording wrapper."""
    os.makedirs(str(directory), exist_ok=True)
    for name in names:
        os.symlink(RECORD, os.path.join(str(directory), name))
    return str(directory)


def log_lines(path):
    """The recording wrapper's log: one `pid=.. name=.. argc=..` line per run; [] if none ran."""
    try:
        with open(str(path)) as f:
            return [dict(w.split("=", 1) for w in line.split()) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def recorded_argv(path):
    """argv[1:] the recording wrapper saw, as bytes, exactly."""
    with open(str(path), "rb") as f:
        data = f.read()
    return data.split(b"\0")[:-1] if data else []


def call(netns, argv, env, input=None, timeout=30, cwd=None):
    """Run argv inside netns with exactly env (PATH may be empty or broken: nsenter is named by
    absolute path). Returns (CompletedProcess, elapsed seconds)."""
    start = time.monotonic()
    proc = subprocess.run([NSENTER, "--net=" + netns.path] + list(argv), env=env, input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)
    return proc, time.monotonic() - start


def netns_key(netns):
    """The cache key the shim computes in netns (its own function, run there)."""
    code = "import sys; sys.path.insert(0, %r); from shim.facts.netns import netns_key; print(netns_key())" % REPO
    proc = subprocess.run([NSENTER, "--net=" + netns.path, "/usr/bin/python3", "-I", "-S", "-c", code],
                          stdout=subprocess.PIPE, check=True, env={"PATH": "/usr/bin:/bin"})
    key = proc.stdout.decode().strip()
    assert key.startswith(("cookie-", "ino-")), key
    return key


def shim_error_line(proc):
    """Assert the shim's own failure: exit 127, nothing on stdout, exactly one stderr line
    starting `iptables-shim:`. Returns that line."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 127, (proc.returncode, err)
    assert proc.stdout == b"", proc.stdout
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("iptables-shim: "), err
    return err.rstrip("\n")


def cache_files(directory):
    """Names in the cache directory ([] if it does not exist)."""
    try:
        return sorted(os.listdir(str(directory)))
    except (FileNotFoundError, NotADirectoryError):
        return []
