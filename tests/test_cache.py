"""Issue 2, item 5: the per-netns cache. One entry per netns, reused without probing, re-checked
when it rested on no rules, never trusted unless only this user could have written it, never a
path to run, and never a reason to fail when it cannot be used."""

import os
import stat
import subprocess

import pytest

from conftest import BIN, cache_files, shim_env
from namespaces import call
from shim_output import shim_error_line

CONTAINER = {"IPTABLES_SHIM_CONTEXT": "container"}  # decide from the rules, not the host's alias
WRONG = b"nft 4 nft holds rules\n"  # a well-formed entry naming the backend that is wrong here


def add(netns, env, source, **kw):
    """The shim writes one rule; returns the CompletedProcess."""
    proc, _ = call(netns, ["iptables", "-A", "INPUT", "-s", source, "-j", "ACCEPT"], env, **kw)
    return proc


def holder(netns, source):
    """Which backends hold the rule for `source`, read back from the kernel."""
    return [b for b in ("nft", "legacy") if any(" %s/32 " % source in l for l in netns.rules(b))]


def legacy_netns(netns):
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")


def assert_good_entry(path, backend):
    st = os.lstat(str(path))
    assert stat.S_ISREG(st.st_mode), "entry is not a regular file"
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    with open(str(path), "rb") as f:
        data = f.read()
    assert data.startswith(backend.encode() + b" ") and data.endswith(b"\n") and data.count(b"\n") == 1, data


PROBE_SYSCALLS = "socket,getsockopt,sendto,sendmsg,execve,clone,clone3,fork,vfork"


def shim_syscalls(netns, env, source, trace):
    """Run the shim's `iptables -A` under strace; the syscalls of the shim itself, i.e. those before
    the execve into the real binary (the same PID carries on as iptables-legacy afterwards)."""
    proc, _ = call(netns, ["/usr/bin/strace", "-f", "-qq", "-e", "trace=" + PROBE_SYSCALLS, "-o", str(trace),
                           "iptables", "-A", "INPUT", "-s", source, "-j", "ACCEPT"], env)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if line.strip()]
    execs = [i for i, c in enumerate(calls) if c.startswith("execve(")]
    assert len(execs) >= 2 and calls[execs[-1]].startswith('execve("/usr/sbin/iptables-legacy"'), calls
    return calls[execs[0] + 1:execs[-1]]


def test_first_call_writes_one_entry_and_the_second_reuses_it_without_probing(netns, cache_dir, tmp_path):
    """Shown with strace: the first call probes the kernel (netlink, x_tables sockopts); the next
    ones read the netns cookie and the entry, open no other socket, start no process."""
    legacy_netns(netns)
    env = shim_env(cache_dir, **CONTAINER)
    first = shim_syscalls(netns, env, "192.0.2.1", tmp_path / "trace1")
    assert any("AF_NETLINK" in c or "IPT_SO_GET_INFO" in c or c.startswith(("clone", "fork", "vfork"))
               for c in first), first
    key = netns.cache_key()
    assert cache_files(cache_dir) == [key]
    assert_good_entry(cache_dir / key, "legacy")
    assert stat.S_IMODE(os.lstat(str(cache_dir)).st_mode) == 0o700
    for n, source in enumerate(("192.0.2.2", "192.0.2.3")):
        again = shim_syscalls(netns, env, source, tmp_path / ("trace-again%d" % n))
        assert len(again) == 2 and again[0].startswith("socket(AF_UNIX,") and "SO_NETNS_COOKIE" in again[1], again
    assert cache_files(cache_dir) == [key]
    assert [holder(netns, s) for s in ("192.0.2.1", "192.0.2.2", "192.0.2.3")] == [["legacy"]] * 3


def test_reused_entry_outweighs_rules_added_later(netns, cache_dir):
    """Behaviourally: once the entry says legacy, nft rules added directly do not change the
    next call (a fresh decision would now say nft, step 4, as the cache-off call shows)."""
    legacy_netns(netns)
    env = shim_env(cache_dir, **CONTAINER)
    assert add(netns, env, "192.0.2.1").returncode == 0
    netns.ok("iptables-nft -A FORWARD -s 198.51.100.1 -j DROP")
    assert add(netns, env, "192.0.2.2").returncode == 0
    assert holder(netns, "192.0.2.2") == ["legacy"]
    assert add(netns, dict(env, IPTABLES_SHIM_CACHE="off"), "192.0.2.3").returncode == 0
    assert holder(netns, "192.0.2.3") == ["nft"]


def test_decision_on_an_empty_netns_is_rechecked(netns, cache_dir):
    env = shim_env(cache_dir, **CONTAINER)
    listed, _ = call(netns, ["iptables", "-S"], env)  # empty netns: the image's alias (nft), step 6
    assert listed.returncode == 0 and b"-P INPUT ACCEPT" in listed.stdout
    assert cache_files(cache_dir) == []  # nothing grounded the decision: not cached
    netns.ok("iptables-legacy -A FORWARD -s 203.0.113.1 -j DROP")
    assert add(netns, env, "192.0.2.1").returncode == 0
    assert holder(netns, "192.0.2.1") == ["legacy"]
    assert_good_entry(cache_dir / netns.cache_key(), "legacy")


def test_a_call_that_cannot_run_leaves_no_entry_for_later_calls(netns, cache_dir):
    """A call from a PATH with only the nft variant decides legacy from the rules but cannot run
    it; it must not cache that decision before a binary for it is found (a later call might then
    run from a half-broken PATH), and the next call with a whole PATH decides and caches legacy."""
    legacy_netns(netns)
    only_nft = netns.ok("mktemp -d").strip()
    netns.ok("ln -s /usr/sbin/iptables-nft %s/iptables-nft" % only_nft)
    failed = add(netns, shim_env(cache_dir, path=BIN + ":" + only_nft, **CONTAINER), "192.0.2.1")
    shim_error_line(failed)
    assert b"iptables-legacy is not on PATH" in failed.stderr
    assert cache_files(cache_dir) == []
    assert add(netns, shim_env(cache_dir, **CONTAINER), "192.0.2.2").returncode == 0
    assert holder(netns, "192.0.2.2") == ["legacy"]
    assert_good_entry(cache_dir / netns.cache_key(), "legacy")


def test_host_context_answers_are_never_cached_and_never_served_to_a_container(netns, cache_dir):
    """Step 2 (the host's alias) belongs to the caller, not the netns: a host-context call in a
    netns whose rules are in legacy runs the host alias (nft) and stores nothing; a container
    caller afterwards, with the same cache directory, still writes into legacy. Failed before the
    resolution split caller facts from netns facts: the host's entry sent the container to nft."""
    legacy_netns(netns)
    listed, _ = call(netns, ["iptables", "-S"], shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="host"))
    assert listed.returncode == 0
    assert cache_files(cache_dir) == []
    assert add(netns, shim_env(cache_dir, **CONTAINER), "192.0.2.3").returncode == 0
    assert holder(netns, "192.0.2.3") == ["legacy"]
    assert add(netns, shim_env(cache_dir, IPTABLES_SHIM_CONTEXT="host"), "192.0.2.4").returncode == 0
    assert holder(netns, "192.0.2.4") == ["nft"]  # the host's own alias, as kubelet's iptables writes


def plant_evil(tmp_path):
    """An executable that leaves a marker if anything ever runs it."""
    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil"
    evil.write_text("#!/bin/sh\ntouch %s\n" % marker)
    evil.chmod(0o755)
    return str(evil), marker


BAD_ENTRIES = ["symlink-to-wrong", "symlink-to-evil", "other-owner", "group-writable", "world-writable",
               "truncated", "garbage", "empty", "names-a-path", "path-as-backend", "two-lines"]


@pytest.mark.parametrize("kind", BAD_ENTRIES)
def test_bad_entry_is_ignored_replaced_and_never_runs_anything(netns, cache_dir, tmp_path, kind):
    legacy_netns(netns)
    key = netns.cache_key()
    evil, marker = plant_evil(tmp_path)
    os.mkdir(str(cache_dir), 0o700)
    entry = str(cache_dir / key)
    target = tmp_path / "elsewhere"
    target.write_bytes(WRONG)
    contents = {
        "other-owner": WRONG, "group-writable": WRONG, "world-writable": WRONG, "truncated": WRONG[:9],
        "garbage": b"\x00\xffnft\x7f 4 \xc3(\n", "empty": b"", "names-a-path": (evil + "\n").encode(),
        "path-as-backend": ("%s 4 nft holds rules\n" % evil).encode(), "two-lines": WRONG + WRONG,
    }
    if kind == "symlink-to-wrong":
        os.symlink(str(target), entry)
    elif kind == "symlink-to-evil":
        os.symlink(evil, entry)
    else:
        with open(entry, "wb") as f:
            f.write(contents[kind])
        os.chmod(entry, {"group-writable": 0o620, "world-writable": 0o602}.get(kind, 0o600))
        if kind == "other-owner":
            os.chown(entry, 65534, 65534)
    env = shim_env(cache_dir, **CONTAINER)
    proc = add(netns, env, "192.0.2.1")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert holder(netns, "192.0.2.1") == ["legacy"]
    assert_good_entry(entry, "legacy")
    assert cache_files(cache_dir) == [key]  # no temporary file left behind
    assert target.read_bytes() == WRONG  # a symlink is replaced, never written through
    assert not marker.exists()


def test_entry_that_is_a_directory_costs_only_speed(netns, cache_dir, tmp_path):
    """rename() cannot replace a directory: the call goes on without the cache, silently."""
    legacy_netns(netns)
    key = netns.cache_key()
    os.makedirs(str(cache_dir / key), 0o700)
    env = shim_env(cache_dir, **CONTAINER)
    for source in ("192.0.2.1", "192.0.2.2"):
        proc = add(netns, env, source)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        assert holder(netns, source) == ["legacy"]
    assert cache_files(cache_dir) == [key] and os.path.isdir(str(cache_dir / key))


@pytest.mark.parametrize("kind", ["group-writable", "world-writable", "other-owner", "symlink",
                                  "symlink, given with a trailing slash", "symlink, given as link/."])
def test_untrusted_cache_directory_is_neither_read_nor_written(netns, cache_dir, tmp_path, kind):
    """A trailing slash makes the kernel follow a final symlink even under O_NOFOLLOW, and link/.
    names what is behind it: the directory behind the link is neither read nor written. Failed
    before for those two (the entry was read and obeyed: nft)."""
    legacy_netns(netns)
    key = netns.cache_key()
    real = tmp_path / "real-cache"
    os.mkdir(str(real), 0o700)
    with open(str(real / key), "wb") as f:
        f.write(WRONG)
    os.chmod(str(real / key), 0o600)
    if kind.startswith("symlink"):
        os.symlink(str(real), str(cache_dir))
    else:
        os.rename(str(real), str(cache_dir))
        os.chmod(str(cache_dir), {"group-writable": 0o770, "world-writable": 0o707}.get(kind, 0o700))
        if kind == "other-owner":
            os.chown(str(cache_dir), 65534, 65534)
    given = {"symlink, given with a trailing slash": "%s/", "symlink, given as link/.": "%s/."}.get(kind, "%s")
    env = shim_env(given % cache_dir, **CONTAINER)
    proc = add(netns, env, "192.0.2.1")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert holder(netns, "192.0.2.1") == ["legacy"]
    assert cache_files(cache_dir) == [key]
    with open(str(cache_dir / key), "rb") as f:
        assert f.read() == WRONG  # left alone: the shim does not write into a directory it distrusts


def test_a_trusted_directory_given_with_trailing_slashes_is_used(netns, cache_dir):
    """`IPTABLES_SHIM_CACHE_DIR=/run/x//`: the directory itself, written and then read (the slashes
    stripped before it is opened without following a symlink)."""
    legacy_netns(netns)
    env = shim_env(str(cache_dir) + "//", **CONTAINER)
    for source in ("192.0.2.1", "192.0.2.2"):
        proc = add(netns, env, source)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert cache_files(cache_dir) == [netns.cache_key()]
    assert_good_entry(cache_dir / netns.cache_key(), "legacy")
    proc, _ = call(netns, ["iptables-shim", "explain"], env)
    assert b"//, entry for this netns: legacy (step 5" in proc.stdout, proc.stdout


@pytest.mark.parametrize("kind", ["missing-parent", "parent-is-a-file", "read-only-mount", "immutable"])
def test_unusable_cache_directory_costs_only_speed(netns, cache_dir, tmp_path, kind):
    legacy_netns(netns)
    directory = {"missing-parent": tmp_path / "absent" / "deeper" / "cache",
                 "parent-is-a-file": tmp_path / "file" / "cache"}.get(kind, cache_dir)
    (tmp_path / "file").write_text("not a directory\n")
    if kind in ("read-only-mount", "immutable"):
        os.mkdir(str(cache_dir), 0o700)
    env = shim_env(directory, **CONTAINER)
    cmd = "iptables -A INPUT -s 192.0.2.1 -j ACCEPT && iptables -A INPUT -s 192.0.2.2 -j ACCEPT"
    try:
        if kind == "read-only-mount":
            # A private mount namespace: the read-only bind mount is gone when the call ends.
            cmd = "mount --bind {d} {d} && mount -o remount,bind,ro {d} && {c}".format(d=directory, c=cmd)
            proc, _ = call(netns, ["/usr/bin/unshare", "-m", "/bin/sh", "-c", cmd], env)
        else:
            if kind == "immutable":
                subprocess.run(["chattr", "+i", str(directory)], check=True)
            proc, _ = call(netns, ["/bin/sh", "-c", cmd], env)
    finally:
        if kind == "immutable":
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert holder(netns, "192.0.2.1") == ["legacy"] and holder(netns, "192.0.2.2") == ["legacy"]
    assert cache_files(directory) == []
    assert not (tmp_path / "absent").exists()


def test_cache_off_writes_nothing(netns, cache_dir):
    legacy_netns(netns)
    env = shim_env(cache_dir, IPTABLES_SHIM_CACHE="off", **CONTAINER)
    for source in ("192.0.2.1", "192.0.2.2"):
        assert add(netns, env, source).returncode == 0
        assert holder(netns, source) == ["legacy"]
    assert not cache_dir.exists()
    assert not os.path.exists(os.path.join("/run/iptables-shim", netns.cache_key()))


def test_override_is_never_cached_nor_blocked_by_an_entry(netns, cache_dir):
    netns.ok("iptables-nft -A FORWARD -s 203.0.113.1 -j DROP")
    env = shim_env(cache_dir, **CONTAINER)
    assert add(netns, dict(env, IPTABLES_SHIM_MODE="legacy"), "192.0.2.1").returncode == 0
    assert holder(netns, "192.0.2.1") == ["legacy"]
    assert cache_files(cache_dir) == []
    # Without the override, the facts decide again (both hold rules now: nft, step 4) and are cached.
    assert add(netns, env, "192.0.2.2").returncode == 0
    assert holder(netns, "192.0.2.2") == ["nft"]
    key = netns.cache_key()
    assert_good_entry(cache_dir / key, "nft")
    before = (cache_dir / key).read_bytes()
    assert add(netns, dict(env, IPTABLES_SHIM_MODE="legacy"), "192.0.2.3").returncode == 0
    assert holder(netns, "192.0.2.3") == ["legacy"]
    assert (cache_dir / key).read_bytes() == before


def test_entries_of_dead_netns_are_pruned_past_the_limit(netns, cache_dir):
    """A node churning pods leaves an entry per dead netns: past 1,024 entries the older half
    goes, the new entry stays, and nothing but the shim's own entries is ever deleted."""
    from shim.cache import KEY_PREFIXES, MAX_ENTRIES

    cache_dir.mkdir(mode=0o700)
    old = [("cookie-%d" % (10 ** 9 + i)) for i in range(MAX_ENTRIES + 100)]
    for i, name in enumerate(old):
        path = cache_dir / name
        path.write_bytes(b"legacy 5 legacy holds rules\n")
        os.chmod(str(path), 0o600)
        os.utime(str(path), (1000000 + i, 1000000 + i))  # oldest first
    (cache_dir / "operator-notes").write_text("not the shim's")
    legacy_netns(netns)
    proc = add(netns, shim_env(cache_dir, **CONTAINER), "192.0.2.91")
    assert proc.returncode == 0, proc.stderr
    assert holder(netns, "192.0.2.91") == ["legacy"]
    key = netns.cache_key()
    assert key.startswith(KEY_PREFIXES)  # the only names prune() deletes: the keys netns_key makes
    left = cache_files(cache_dir)
    assert key in left and "operator-notes" in left
    entries = [n for n in left if n.startswith(KEY_PREFIXES)]
    assert len(entries) == MAX_ENTRIES // 2
    assert set(entries) == set(old[-(MAX_ENTRIES // 2 - 1):]) | {key}  # the newest survive
    assert_good_entry(cache_dir / key, "legacy")
