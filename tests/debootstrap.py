"""Debian trees for the tests: a debootstrap started in the background (so that several suites
download at once) and finished later, marked done only when it succeeded; and the timestamped
progress log of the workspaces that build them. Used by the image tests (tests/images) and the VM
disks (tests/vm.py)."""

import os
import re
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


class PrivateApt(object):
    """apt-get and apt-cache with lists, sources, status and preferences of their own under `top`,
    for one suite and its architectures (the first native to them), and the sources (deb-src)
    if asked: the machine's own apt state and dpkg architectures stay as they are."""

    __slots__ = ("ws", "top", "suite", "arches", "label", "sources", "_updated")

    def __init__(self, ws, top, suite, arches, label, sources=False):
        self.ws, self.top, self.suite, self.arches, self.label = ws, top, suite, tuple(arches), label
        self.sources, self._updated = sources, False

    def options(self):
        t = self.top
        return ["-o", "Dir::State::Lists=" + os.path.join(t, "lists"),
                "-o", "Dir::Cache=" + os.path.join(t, "cache"),
                "-o", "Dir::Etc::SourceList=" + os.path.join(t, "sources.list"),
                "-o", "Dir::Etc::SourceParts=" + os.path.join(t, "parts"),
                "-o", "Dir::Etc::Preferences=" + os.path.join(t, "preferences"),
                "-o", "Dir::Etc::PreferencesParts=" + os.path.join(t, "parts"),
                # An empty dpkg status: what this machine has installed plays no part (and the
                # dpkg lock apt would take is the one beside it).
                "-o", "Dir::State::status=" + os.path.join(t, "status"),
                "-o", "APT::Architecture=" + self.arches[0],
                "-o", "APT::Install-Recommends=0", "-o", "APT::Sandbox::User=root"] + [
                    x for a in self.arches for x in ("-o", "APT::Architectures::=" + a)]

    def run(self, tool, args, what, cwd=None):
        """The CompletedProcess of `tool` (apt-get, apt-cache) with these options."""
        if not self._updated:
            for d in ("lists/partial", "cache/archives/partial", "parts"):
                os.makedirs(os.path.join(self.top, d), exist_ok=True)
            open(os.path.join(self.top, "status"), "w").close()
            with open(os.path.join(self.top, "sources.list"), "w") as f:
                f.write("deb %s %s main\n" % (MIRROR, self.suite))
                if self.sources:
                    f.write("deb-src %s %s main\n" % (MIRROR, self.suite))
            self.ws.run(["apt-get", "-q"] + self.options() + ["update"],
                        what="%s: apt-get update (%s %s)" % (self.label, self.suite, ",".join(self.arches)))
            self._updated = True
        return self.ws.run([tool, "-q"] + self.options() + list(args), what=what, cwd=cwd)

    def text(self, tool, args, what, cwd=None):
        return self.run(tool, args, what, cwd).stdout.decode()

    def closure(self, names):
        """name=version of names and all they (Pre-)Depend on, as apt would install them."""
        out = self.text("apt-get", ["install", "--simulate", "-y"] + list(names), "%s: resolve %d packages" % (self.label, len(names)))
        found = re.findall(r"^Inst (\S+) \((\S+) ", out, re.M)
        assert found, out
        return ["%s=%s" % nv for nv in found]

    def depends(self, name):
        """The first package the newest `name` Depends on (a kernel meta package: its image)."""
        show = self.text("apt-cache", ["show", "--no-all-versions", name], "%s: apt-cache show %s" % (self.label, name))
        return [l.split(":", 1)[1].split()[0].rstrip(",") for l in show.splitlines() if l.startswith("Depends:")][0]

    def download(self, specs, into):
        """The .deb files of specs (name or name=version), in `into` (emptied first): their paths."""
        shutil.rmtree(into, ignore_errors=True)
        os.makedirs(into)
        self.text("apt-get", ["download"] + list(specs), "%s: apt-get download %d packages" % (self.label, len(specs)), cwd=into)
        debs = sorted(os.path.join(into, n) for n in os.listdir(into) if n.endswith(".deb"))
        assert len(debs) == len(specs), (specs, debs)
        return debs
