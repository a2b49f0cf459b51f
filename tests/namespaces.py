"""Network namespaces for the tests: the one place one is made (`Netns.create`) and deleted, the
fixtures over it, and the ways into one (a command, a shell script, a Python snippet).

Every test that writes rules does so inside a netns made here, never in the machine's own. A pytest
plugin (tests/conftest.py `pytest_plugins`): the fixtures `netns` and `make_netns` reach every suite.
"""

import json
import os
import subprocess
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSENTER = "/usr/bin/nsenter"  # by absolute path: the commands' own PATH may be empty or broken
PREFIX = "shimtest-"

# Put ahead of a snippet sent into a netns: the checkout's shim importable, json at hand.
SNIPPET_PRELUDE = "import json, sys\nsys.path.insert(0, %r)\n"


class Netns(object):
    """A network namespace reached by path (/run/netns/NAME for a named one); commands run inside it
    with nsenter. A named one made by `create` is deleted by `delete` or at the end of a `with`."""

    def __init__(self, name, path=None):
        self.name = name
        self.path = path if path is not None else "/run/netns/" + name

    @classmethod
    def create(cls, prefix=PREFIX, name=None):
        """`ip netns add` a new one: NAME, or PREFIX and a random suffix."""
        ns = cls(name if name is not None else prefix + uuid.uuid4().hex[:10])
        subprocess.run(["ip", "netns", "add", ns.name], check=True)
        return ns

    def delete(self):
        """Gone, if it is not already (a test may delete it itself)."""
        subprocess.run(["ip", "netns", "delete", self.name], check=False, stderr=subprocess.DEVNULL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.delete()

    def run(self, cmd, env=None, input=None, check=False, timeout=120, **kw):
        full = [NSENTER, "--net=" + self.path] + list(cmd)
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

    def python(self, snippet, *args, wrap=(), repo=REPO):
        """Run a Python snippet here (isolated: -I -S, the shim of `repo` on sys.path, `json` and
        `sys` imported; sys.argv[1:] = args; under the `wrap` argv prefix: strace, setpriv, ...)
        and return what it printed, parsed as JSON. A snippet run as another user takes
        repo=os.path.dirname(conftest.bin_for_other_users())."""
        argv = list(wrap) + ["/usr/bin/python3", "-I", "-S", "-c", SNIPPET_PRELUDE % repo + snippet] + list(args)
        r = self.run(argv)
        assert r.returncode == 0, (snippet, r.stderr.decode("utf-8", "replace"))
        return json.loads(r.stdout.decode())

    def cache_key(self):
        """The cache key the shim computes here (its own function, run here)."""
        key = self.python("from shim.facts.netns import netns_key\nprint(json.dumps(netns_key()))")
        assert key.startswith(("cookie-", "ino-")), key
        return key

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

    def legacy_tables(self):
        """The legacy tables that exist here, both families (reading the lists creates none)."""
        return self.ok("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null || true").split()

    def snapshot(self):
        """Legacy table lists and the nft ruleset: what detection must leave exactly as it was."""
        return self.ok(
            "cat /proc/net/ip_tables_names 2>/dev/null; echo ---; "
            "cat /proc/net/ip6_tables_names 2>/dev/null; echo ---; nft list ruleset"
        )


def call(netns, argv, env, input=None, timeout=30, cwd=None):
    """Run argv inside netns with exactly env (PATH may be empty or broken). Returns
    (CompletedProcess, elapsed seconds)."""
    start = time.monotonic()
    proc = netns.run(argv, env=env, input=input, timeout=timeout, cwd=cwd)
    return proc, time.monotonic() - start


def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")


@pytest.fixture
def netns():
    """A fresh named netns, deleted at teardown."""
    _needs_root()
    with Netns.create() as ns:
        yield ns


@pytest.fixture
def make_netns():
    """make_netns(prefix=PREFIX, name=None) -> one more fresh Netns, deleted at teardown."""
    _needs_root()
    made = []

    def make(prefix=PREFIX, name=None):
        made.append(Netns.create(prefix, name))
        return made[-1]

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()
