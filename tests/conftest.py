"""Shared fixtures: real network namespaces, the shim reached through PATH, a private cache dir.

Every test that writes rules does so inside a netns created here: never in the machine's own.
"""

import os
import subprocess
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHIM_NAMES = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces and rules")


def shim_env(cache_dir, path=None, **extra):
    """Environment for a call through the shim: bin/ first on PATH, a private cache directory."""
    env = {
        "PATH": path if path is not None else BIN + ":" + SYSTEM_PATH,
        "IPTABLES_SHIM_CACHE_DIR": str(cache_dir),
        "LC_ALL": "C",
    }
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


class Netns(object):
    """A named network namespace, deleted at teardown; commands run inside it with nsenter."""

    def __init__(self, name):
        self.name = name
        self.path = "/run/netns/" + name

    def run(self, cmd, env=None, input=None, check=False, timeout=120, **kw):
        full = ["nsenter", "--net=" + self.path] + list(cmd)
        return subprocess.run(
            full, env=env if env is not None else {"PATH": SYSTEM_PATH, "LC_ALL": "C"},
            input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=check, timeout=timeout, **kw
        )

    def sh(self, script, env=None, **kw):
        return self.run(["/bin/sh", "-c", script], env=env, **kw)

    def ok(self, script):
        """Set-up step with the real binaries: must succeed."""
        r = self.sh(script)
        assert r.returncode == 0, (script, r.stderr)
        return r.stdout.decode()

    def save(self, backend, family="iptables"):
        """What the kernel holds in one backend, read back with the real save binary."""
        return self.ok("%s-%s-save" % (family, backend))

    def rules(self, backend, family="iptables"):
        """The `-A` lines one backend holds (legacy only read where tables exist, to change nothing)."""
        if backend == "legacy":
            names = "/proc/net/ip_tables_names" if family == "iptables" else "/proc/net/ip6_tables_names"
            if not self.ok("cat %s 2>/dev/null || true" % names).strip():
                return []
        return [l for l in self.save(backend, family).splitlines() if l.startswith("-A ")]

    def snapshot(self):
        """Legacy table lists and the nft ruleset: what detection must leave exactly as it was."""
        return self.ok(
            "cat /proc/net/ip_tables_names 2>/dev/null; echo ---; "
            "cat /proc/net/ip6_tables_names 2>/dev/null; echo ---; nft list ruleset"
        )


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    name = "shimtest-" + uuid.uuid4().hex[:10]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "cache"
    return d
