"""A stand-in container without a container engine: a chroot tree with its own iptables binaries.

A `ChrootContainer` is a directory that looks like a small container's root filesystem: its own
/usr/sbin holding copies of xtables-nft-multi and/or xtables-legacy-multi, the variant names
(`iptables-nft`, `ip6tables-legacy-save`, ...) as symlinks to them, and the default alias (`iptables`, ...) pointing
at whichever backend the container chose, or absent. Everything else the programs need (libraries,
python3, sh, nsenter) is the host's /usr/bin, /usr/lib and /usr/lib64 bind-mounted read-only; the
shim checkout is bind-mounted read-only at /opt/iptables-shim.

`ChrootContainer.run` enters it as a container runtime would: a private mount namespace and a new PID
namespace (`unshare -m -p -f`), the bind mounts and a fresh /proc made inside that private mount
namespace (nothing shows on the host), then `chroot`. Optionally first into a network namespace
(the container's own, a pod netns), and optionally, from inside the container, `nsenter --net` into
a named netns under /run/netns (a node agent reaching the host's netns by path; /run/netns is
bind-mounted into the root for that). Building one is a few copies and symlinks, and entering
it costs a few milliseconds, so every test can have its own.
"""

import json
import os
import shutil
import subprocess

import pytest

from namespaces import REPO
from shim.tools import FAMILIES, SHIM_NAMES, TOOL_SUFFIXES, split_name, variant_name

CONTAINER_SHIM = "/opt/iptables-shim"
CONTAINER_PATH = CONTAINER_SHIM + "/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MULTI = {"nft": "xtables-nft-multi", "legacy": "xtables-legacy-multi"}
HOST_SBIN = "/usr/sbin"
# Host directories shared read-only with every chroot: they must hold no iptables name of their own,
# or the chroot would not be the only source of its binaries.
SHARED_DIRS = ("usr/bin", "usr/lib", "usr/lib64")
ETC_FILES = ("protocols", "services", "ethertypes", "nsswitch.conf", "passwd", "group")

# Runs as PID 1 of the new PID namespace, in the private mount namespace, still on the host's root.
# $1: the chroot root, $2: "netns" to bind /run/netns into it, or "-"; the rest: the command.
ENTER = r"""
set -e
root=$1; runns=$2; shift 2
for d in usr/bin usr/lib usr/lib64; do
    if [ -d "/$d" ] && [ ! -L "/$d" ]; then /usr/bin/mount --bind -o ro "/$d" "$root/$d"; fi
done
/usr/bin/mount --bind /dev "$root/dev"
/usr/bin/mount -t proc proc "$root/proc"
/usr/bin/mount --bind -o ro "$SHIM_SRC" "$root/opt/iptables-shim"
if [ "$runns" = netns ]; then /usr/bin/mount --rbind /run/netns "$root/run/netns"; fi
unset SHIM_SRC
exec /usr/sbin/chroot "$root" "$@"
"""


# The rule the tests ask the shim to write, and how to find where it landed.
ADDR4 = "198.51.100.7"
ADDR6 = "2001:db8::7"
MARK = "iptables-shim-probe"
WRITE4 = ["iptables", "-A", "INPUT", "-s", ADDR4, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]
WRITE6 = ["ip6tables", "-A", "INPUT", "-s", ADDR6, "-m", "comment", "--comment", MARK, "-j", "ACCEPT"]


def landed(netns):
    """{backend: [rule lines carrying MARK]} over both families, read with the real save binaries
    (legacy only where /proc/net/ip*_tables_names lists tables, so reading changes nothing)."""
    return {
        backend: [l for f in FAMILIES for l in netns.rules(backend, f) if MARK in l]
        for backend in ("nft", "legacy")
    }


def assert_only_in(netns, backend, family="iptables"):
    """The one rule the shim wrote is in `backend` of this netns, and nothing of it in the other."""
    where = landed(netns)
    other = "legacy" if backend == "nft" else "nft"
    assert len(where[backend]) == 1, where
    assert (ADDR4 if family == "iptables" else ADDR6) in where[backend][0], where
    assert where[other] == [], where


def sbin_dir(directory, aliases=None, variants=(), names=None, via_variant=False):
    """A PATH directory standing for a container image's /usr/sbin, without the chroot: the variant
    names of each backend in `variants` as symlinks to the host's multi-call binaries, and the
    default names (`names`, or all six) running `aliases` (one backend for both families, or
    {family: backend}): symlinks straight to the multi-call binary, or with via_variant to the
    variant name beside them (as update-alternatives leaves them). Its path."""
    os.makedirs(directory, exist_ok=True)
    if aliases is not None and not isinstance(aliases, dict):
        aliases = {f: aliases for f in FAMILIES}
    for backend in variants:
        for name in variant_links(backend):
            os.symlink(os.path.join(HOST_SBIN, MULTI[backend]), os.path.join(directory, name))
    for name in sorted(names if names is not None else SHIM_NAMES):
        family, suffix = split_name(name)
        backend = (aliases or {}).get(family)
        if backend:
            target = variant_name(family, backend, suffix) if via_variant else os.path.join(HOST_SBIN, MULTI[backend])
            os.symlink(target, os.path.join(directory, name))
    return directory


def variant_links(backend):
    return [variant_name(f, backend, s) for f in FAMILIES for s in TOOL_SUFFIXES]


class ChrootContainer(object):
    """A root filesystem with its own iptables binaries, and the way into it.

    backends: which of "nft", "legacy" ship (their multi binary copied, variant names linked);
    alias: "nft", "legacy" or None, the backend the default names `iptables`, `iptables-save`,
    `iptables-restore`, `ip6tables`, ... run (as symlinks to the variant), or no default names.
    """

    def __init__(self, root, backends=("nft", "legacy"), alias="nft"):
        if alias is not None and alias not in backends:
            raise ValueError("an alias to %s needs the %s binaries in the chroot" % (alias, alias))
        self.root = str(root)
        self.backends = tuple(backends)
        self.alias = alias
        self._build()

    def _build(self):
        root = self.root
        for d in SHARED_DIRS + ("usr/sbin", "etc", "dev", "proc", "run/netns", "tmp", "opt/iptables-shim"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        # The host's top-level layout (merged /usr: /bin -> usr/bin, /sbin -> usr/sbin, ...).
        for top in ("bin", "sbin", "lib", "lib64"):
            host = "/" + top
            if os.path.islink(host):
                os.symlink(os.readlink(host), os.path.join(root, top))
            else:
                raise RuntimeError("%s is not a symlink: this helper expects a merged-/usr host" % host)
        for d in SHARED_DIRS:
            if os.path.isdir("/" + d):
                clash = [n for n in os.listdir("/" + d) if n.startswith(("iptables", "ip6tables", "xtables"))
                         and n != "iptables-xml"]
                if clash:
                    raise RuntimeError("/%s holds %s: a chroot would not own its iptables" % (d, clash))
        for name in ETC_FILES:
            if os.path.exists("/etc/" + name):
                shutil.copy("/etc/" + name, os.path.join(root, "etc", name))
        sbin = os.path.join(root, "usr/sbin")
        for backend in self.backends:
            shutil.copy2(os.path.join(HOST_SBIN, MULTI[backend]), os.path.join(sbin, MULTI[backend]))
            for name in variant_links(backend):
                os.symlink(MULTI[backend], os.path.join(sbin, name))
        if self.alias:
            for f in FAMILIES:
                for s in TOOL_SUFFIXES:
                    os.symlink(variant_name(f, self.alias, s), os.path.join(sbin, f + s))

    def sbin(self):
        """{name: symlink target or "file"} of the chroot's own /usr/sbin."""
        d = os.path.join(self.root, "usr/sbin")
        return {n: (os.readlink(os.path.join(d, n)) if os.path.islink(os.path.join(d, n)) else "file")
                for n in os.listdir(d)}

    def command(self, cmd, netns=None, enter=None, pid_ns=True):
        """argv that runs cmd inside the container.

        netns: the Netns the container lives in (entered before the container's namespaces are
        made, as a runtime does), or None for the caller's own; enter: a Netns the process already
        inside the container joins by path (`nsenter --net=/run/netns/NAME`, as a node agent does);
        pid_ns=False: share the host's PID namespace (a `hostPID: true` pod), so only the mount
        namespace and the chroot make it a container."""
        inner = list(cmd)
        if enter is not None:
            inner = ["/usr/bin/nsenter", "--net=" + enter.path] + inner
        unshare = ["/usr/bin/unshare", "--mount"] + (["--pid", "--fork"] if pid_ns else [])
        argv = unshare + ["/bin/sh", "-c", ENTER, "enter", self.root, "netns" if enter is not None else "-"] + inner
        if netns is not None:
            argv = ["/usr/bin/nsenter", "--net=" + netns.path] + argv
        return argv

    def run(self, cmd, netns=None, enter=None, env=None, input=None, timeout=60, pid_ns=True, **extra_env):
        """Run cmd in the container; env is the container process's whole environment (default:
        the container PATH, LC_ALL=C), extra_env is added to it (None values dropped)."""
        full_env = dict(env) if env is not None else {"PATH": CONTAINER_PATH, "LC_ALL": "C"}
        full_env.update({k: v for k, v in extra_env.items() if v is not None})
        full_env["SHIM_SRC"] = REPO  # read by ENTER on the host side, unset before chroot
        return subprocess.run(
            self.command(cmd, netns, enter, pid_ns), env=full_env, input=input, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=timeout, check=False,
        )

    def sh(self, script, **kw):
        return self.run(["/bin/sh", "-c", script], **kw)

    def ok(self, script, **kw):
        r = self.sh(script, **kw)
        assert r.returncode == 0, (script, r.stdout, r.stderr)
        return r.stdout.decode()

    def explain(self, netns=None, enter=None, family="iptables", pid_ns=True, **extra_env):
        """`iptables-shim explain --json` inside the container, parsed."""
        r = self.run([CONTAINER_SHIM + "/bin/iptables-shim", "explain", "--json", "--family", family],
                     netns=netns, enter=enter, pid_ns=pid_ns, **extra_env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.decode())


@pytest.fixture
def make_chroot(tmp_path):
    """make_chroot(backends=("nft", "legacy"), alias="nft") -> a fresh ChrootContainer under tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts, PID namespaces and chroot")
    count = [0]

    def make(backends=("nft", "legacy"), alias="nft"):
        count[0] += 1
        return ChrootContainer(tmp_path / ("chroot%d" % count[0]), backends, alias)

    return make

