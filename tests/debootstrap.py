"""Debian trees for the tests: a debootstrap started in the background (so that several suites
download at once) and finished later, marked done only when it succeeded; and the timestamped
progress log of the workspaces that build them. Used by the image tests (tests/images) and the VM
disks (tests/vm.py)."""

import os
import shutil
import subprocess
import sys
import time

MIRROR = os.environ.get("IPTABLES_SHIM_MIRROR", "http://deb.debian.org/debian")


def log_line(logfile, tag, msg):
    """One timestamped line in a workspace's log file, and on stderr (shown with pytest -s)."""
    line = "%s %s" % (time.strftime("%H:%M:%S"), msg)
    with open(logfile, "a") as f:
        f.write(line + "\n")
    sys.stderr.write("[%s] %s\n" % (tag, line))


class Debootstrap(object):
    """A running `debootstrap --variant=minbase` of `suite` into `tree`."""

    __slots__ = ("suite", "tree", "packages", "proc", "log_path", "log_file", "started")

    def __init__(self, suite, tree, packages, proc, log_path, log_file):
        self.suite, self.tree, self.packages, self.proc = suite, tree, packages, proc
        self.log_path, self.log_file, self.started = log_path, log_file, time.monotonic()


def start(suite, tree, packages, cache_root, log, note=print):
    """Start debootstrap of `suite` into `tree` with `packages` (a comma list); None when `tree` is
    already done. Downloads are kept in cache_root/debs/SUITE, the output in `log`."""
    if os.path.exists(tree + ".done"):
        return None
    shutil.rmtree(tree, ignore_errors=True)
    debs = os.path.join(cache_root, "debs", suite)
    os.makedirs(debs, exist_ok=True)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", "--cache-dir=" + debs, "--include=" + packages, suite, tree, MIRROR]
    note("start: " + " ".join(cmd))
    log_file = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    return Debootstrap(suite, tree, packages, proc, log, log_file)


def finish(run, timeout, note=print, error=RuntimeError):
    """Wait for a started debootstrap (None: nothing to wait for); mark its tree done (the marker
    names what it holds: images are keyed on it), or raise `error` naming the log."""
    if run is None:
        return
    rc = run.proc.wait(timeout=timeout)
    run.log_file.close()
    note("debootstrap %-38s rc=%d %7.1f s" % (run.suite, rc, time.monotonic() - run.started))
    if rc != 0:
        raise error("debootstrap %s failed: see %s" % (run.suite, run.log_path))
    with open(run.tree + ".done", "w") as f:
        f.write("%s %s %s\n" % (run.suite, run.packages, time.time()))
