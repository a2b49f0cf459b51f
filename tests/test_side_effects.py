"""Detection must not change what it measures: no table created, no rule written, in any backend.

How this is measured, and why this way. What a read-only call through the shim can change is the
sum of two things: what detection does (probes) and what the real binary it execs does. Only the
first is the shim's to answer for, and the second is not always nothing: `iptables-legacy -S` in a
netns without legacy tables creates the legacy `filter` table (so does `iptables-legacy-save -t nat`
for `nat`); that is the real binary's doing, and a shim that ran it would be no worse than the image
it replaced. So every case is run against a twin:

- two fresh netns, A and B, get the same set-up with the real variant binaries (their snapshots
  equal: `/proc/net/ip_tables_names`, `/proc/net/ip6_tables_names`, `nft list ruleset`);
- in A, `iptables-shim explain` runs detection alone (every probe of the cold path, no real binary
  executed): A's snapshot must not change at all;
- in A the command runs through the shim, in B the real binary the shim is expected to pick runs
  directly (from the same filesystem, so the same binary): the two snapshots must be equal again.

With the cache off, every call pays full detection. Where the real binary changes nothing (every
nft case, `--version`, `*-save` without `-t`), the twin equality is the strict "exactly as before"
of the issue; the one place it is not (`iptables -S` executed as `iptables-legacy -S` where legacy has
no filter table) is exactly the real binary's own table, and the explain step shows that detection
added nothing before it. The commands run in sequence in A and in B, so each later call also meets
the state the earlier ones left, in step with its twin.
"""

import os

import pytest

from conftest import BIN, SYSTEM_PATH, shim_env

COMMANDS = [
    ["iptables", "--version"],
    ["iptables", "-S"],
    ["iptables-save"],
    ["ip6tables-save"],
]

STATES = {
    "fresh netns": "",
    "nft rules": "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP; "
                 "ip6tables-nft -t mangle -A PREROUTING -s 2001:db8::1 -j RETURN",
    # nat only, no filter table: a detection that ran `iptables-legacy -S` would show here.
    "legacy rules": "iptables-legacy -t nat -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE",
    "rules in both": "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP; "
                     "iptables-legacy -t nat -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE; "
                     "ip6tables-legacy -t raw -A PREROUTING -s 2001:db8::1 -j NOTRACK",
}

# (context, image alias or None for the host's own filesystem) -> {state: backend the shim picks}
EXPECTED = {
    ("host", None): {"fresh netns": "nft", "nft rules": "nft", "legacy rules": "nft", "rules in both": "nft"},
    ("container", "nft"): {"fresh netns": "nft", "nft rules": "nft", "legacy rules": "legacy",
                           "rules in both": "nft"},
    ("container", "legacy"): {"fresh netns": "legacy", "nft rules": "nft", "legacy rules": "legacy",
                              "rules in both": "nft"},
}

CASES = [(ctx, alias, state) for (ctx, alias) in EXPECTED for state in STATES]


def real_name(cmd, backend):
    """The real binary the shim runs for cmd: `iptables-save` -> `iptables-legacy-save`."""
    family, _, tool = cmd[0].partition("-")
    return ["%s-%s%s" % (family, backend, "-" + tool if tool else "")] + cmd[1:]


def content(out):
    """Output without `#` comment lines (save output stamps the time)."""
    return [l for l in out.decode().splitlines() if not l.startswith("#")]


@pytest.mark.parametrize("ctx,alias,state", CASES, ids=["%s-%s-%s" % c for c in CASES])
def test_reading_through_the_shim_changes_nothing_the_real_binary_does_not(
        netns, make_netns, make_chroot, cache_dir, ctx, alias, state):
    backend = EXPECTED[(ctx, alias)][state]
    a, b = netns, make_netns()
    if STATES[state]:
        a.ok(STATES[state])
        b.ok(STATES[state])
    if ctx == "host":
        env = shim_env(cache_dir, IPTABLES_SHIM_CACHE="off")

        def shim(cmd):
            return a.run(cmd, env=env)

        def direct(cmd):
            return b.run(cmd, env={"PATH": SYSTEM_PATH, "LC_ALL": "C"})

        explain_cmd = [os.path.join(BIN, "iptables-shim"), "explain"]
    else:
        container = make_chroot(("nft", "legacy"), alias)

        def shim(cmd):
            return container.run(cmd, netns=a, IPTABLES_SHIM_CACHE="off")

        def direct(cmd):
            return container.run(cmd, netns=b)

        explain_cmd = ["iptables-shim", "explain"]

    before = a.snapshot()
    assert b.snapshot() == before
    for cmd in COMMANDS:
        family = cmd[0].partition("-")[0]
        r = shim(explain_cmd + ["--family", family])
        assert r.returncode == 0, r.stderr
        assert ("decision:      %s " % backend) in r.stdout.decode(), r.stdout
        assert a.snapshot() == before, "detection alone changed the kernel's state (%s)" % cmd

        via_shim, real = shim(cmd), direct(real_name(cmd, backend))
        assert via_shim.returncode == real.returncode == 0, (cmd, via_shim.stderr, real.stderr)
        assert content(via_shim.stdout) == content(real.stdout), cmd
        before = b.snapshot()
        assert a.snapshot() == before, "%s through the shim did more than %s" % (cmd, real_name(cmd, backend))
