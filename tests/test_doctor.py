"""`iptables-shim doctor` on the real kernel (docs/doctor.md).

Twenty network namespaces, each set up with the real binaries to hold one case, audited at once:
the right problems for each in the table, the JSON and the Prometheus file; every namespace and the
cache directory exactly as before. Then namespaces and processes vanishing mid-audit, bad --netns
paths, a caller without privilege, and the frozen build's JSON against the source's.

Two of the cases need a namespace of their own kind: the initial one (host-alias-disagrees is
checked there only) and one that only a process is in. Neither may be the machine's own, so the
audit runs in a fresh PID namespace with a private /proc (`unshare -p -f --mount-proc -n`): there
PID 1's network namespace is the initial one, as it is on a node, and only our processes show.
Named namespaces are shared with other jobs on this machine: checks look at ours (by prefix) only.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BIN, SYSTEM_PATH, bin_for_other_users
from namespaces import Netns
from shim_output import shim_error_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces")

SHIM = os.path.join(BIN, "iptables-shim")
PREFIX = "shimdoc-" + uuid.uuid4().hex[:6] + "-"
NFT_RULE = "iptables-nft -A INPUT -j ACCEPT"
LEGACY_RULE = "iptables-legacy -A INPUT -j ACCEPT"
HINT = "-t mangle -N KUBE-IPTABLES-HINT"
KINDS = ("split", "hint-disagrees", "hint-in-both", "cache-stale", "empty-legacy-tables",
         "host-alias-disagrees", "unreadable")

# name: (set-up with the real binaries, cache entry to plant or None, the problems expected)
CASES = {
    "nft": (NFT_RULE, None, set()),
    "legacy": (LEGACY_RULE, None, set()),
    "nft6": ("ip6tables-nft -A INPUT -j ACCEPT", None, set()),
    "empty": ("true", None, set()),
    "split": (NFT_RULE + "; " + LEGACY_RULE, None, {"split"}),
    "split6": ("iptables-nft -A FORWARD -j DROP; ip6tables-legacy -A INPUT -j ACCEPT", None, {"split"}),
    "split-hinted": ("iptables-legacy %s; %s; %s" % (HINT, NFT_RULE, LEGACY_RULE), None, {"split"}),
    "hint-nft": ("iptables-nft %s; %s" % (HINT, LEGACY_RULE), None, {"hint-disagrees"}),
    # kubelet's hint made the legacy mangle table: legacy tables without a rule beside nft's rules
    "hint-legacy": ("iptables-legacy %s; %s" % (HINT, NFT_RULE), None,
                    {"hint-disagrees", "empty-legacy-tables"}),
    "hint-both": ("iptables-nft %s; iptables-legacy %s" % (HINT, HINT), None, {"hint-in-both"}),
    "hint6-legacy-ok": ("ip6tables-legacy %s; %s" % (HINT, LEGACY_RULE), None, set()),
    "hint6-nft": ("ip6tables-nft -t mangle -N KUBE-KUBELET-CANARY; " + LEGACY_RULE, None, {"hint-disagrees"}),
    "cache-stale": (LEGACY_RULE, ("nft", 4, "nft holds rules"), {"cache-stale"}),
    "cache-fresh": (LEGACY_RULE, ("legacy", 5, "legacy holds rules"), set()),
    "emptied": (LEGACY_RULE + "; iptables-legacy -F INPUT", None, set()),
    "emptied-nft": (LEGACY_RULE + "; iptables-legacy -F INPUT; " + NFT_RULE, None, {"empty-legacy-tables"}),
    "chain-nft": ("iptables-legacy -N STRAY; " + NFT_RULE, None, {"empty-legacy-tables"}),
    # native nft tables are not iptables rules (SPEC "rules[backend]")
    "native-nft": ("nft add table inet fw; nft add chain inet fw c; nft add rule inet fw c accept; "
                   + LEGACY_RULE, None, set()),
}
# and, inside the PID namespace: the initial netns and a netns that only a process is in
INITIAL_SETUP = "iptables-legacy " + HINT  # the alias on PATH is nft (Debian's default)
INITIAL_EXPECTED = {"host-alias-disagrees"}
PROCESS_SETUP = NFT_RULE
PROCESS_MARK = "3001"  # `sleep 3001`: how the test finds the process-only namespace in the report


def doctor_env(cache_dir, **extra):
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "IPTABLES_SHIM_CACHE_DIR": str(cache_dir),
           # the machine's own /etc/iptables-shim.conf, if any, must not change the answers
           "IPTABLES_SHIM_CONFIG": "/nonexistent/iptables-shim.conf"}
    env.update(extra)
    return env


def netns_cookie(ns):
    key = ns.cache_key()
    assert key.startswith("cookie-"), key
    return key


def plant(cache_dir, key, entry):
    from shim.cache import format_entry

    path = os.path.join(str(cache_dir), key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, format_entry(*entry))
    os.close(fd)


def cache_snapshot(cache_dir):
    out = {}
    for name in sorted(os.listdir(str(cache_dir))):
        path = os.path.join(str(cache_dir), name)
        st = os.lstat(path)
        with open(path, "rb") as f:
            out[name] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ino, f.read())
    return out


def named_netns(names):
    """A Netns named PREFIX + name for each name (doctor reports them by path)."""
    made = []
    try:
        for name in names:
            made.append(Netns.create(name=PREFIX + name))
    except BaseException:
        delete_netns(made)
        raise
    return made


def delete_netns(namespaces):
    for ns in namespaces:
        ns.delete()


def parse_prometheus(text):
    """{(metric, problem label or None): value}, checking every sample has HELP and TYPE lines."""
    helped, typed, samples = set(), set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            assert line.split()[3] == "gauge", line
            typed.add(line.split()[2])
        elif line:
            name, value = line.rsplit(" ", 1)
            label = None
            if "{" in name:
                name, rest = name.split("{", 1)
                assert rest.startswith('problem="') and rest.endswith('"}'), line
                label = rest[len('problem="'):-2]
            assert name in helped and name in typed, line
            samples[(name, label)] = float(value)
    return samples


def table_rows(text):
    """{first word of the WHO column: last word of the row (the problems)} of the table part."""
    rows = {}
    for line in text.splitlines()[1:]:
        if not line.strip():
            break
        words = line.split()
        rows[words[0]] = words[-1]
    return rows


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """The named cases set up, their cookies' cache entries planted; deleted afterwards."""
    tmp = tmp_path_factory.mktemp("doctor")
    cache_dir = tmp / "cache"
    os.mkdir(str(cache_dir), 0o700)
    made = named_netns(sorted(CASES))
    try:
        by_case = dict(zip(sorted(CASES), made))
        for case, ns in by_case.items():
            setup, entry, _ = CASES[case]
            ns.ok(setup)
            if entry:
                plant(cache_dir, netns_cookie(ns), entry)
        yield tmp, cache_dir, by_case
    finally:
        delete_netns(made)


AUDIT_SCRIPT = r"""
set -e
{initial_setup}
unshare -n sh -c '{process_setup} && touch "$0/ready" && exec sleep {mark}' "$TMP" &
while [ ! -e "$TMP/ready" ]; do sleep 0.02; done
snap() {{ cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; echo ---; nft list ruleset;
         echo ---; nsenter --net=/proc/$!/ns/net sh -c 'cat /proc/net/ip_tables_names 2>/dev/null; nft list ruleset'; }}
snap > "$TMP/before"
set +e
{shim} doctor --json --prometheus "$TMP/doctor.prom" > "$TMP/doctor.json"; echo $? > "$TMP/rc-json"
{shim} doctor > "$TMP/doctor.txt"; echo $? > "$TMP/rc-table"
snap > "$TMP/after"
kill $!
"""


def test_twenty_namespaces_each_get_exactly_their_problems_and_nothing_changes(twenty, tmp_path):
    tmp, cache_dir, by_case = twenty
    before = {case: ns.snapshot() for case, ns in by_case.items()}
    cache_before = cache_snapshot(cache_dir)
    script = AUDIT_SCRIPT.format(initial_setup=INITIAL_SETUP, process_setup=PROCESS_SETUP, mark=PROCESS_MARK,
                                 shim=SHIM)
    env = doctor_env(cache_dir, TMP=str(tmp_path))
    r = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "-n", "sh", "-c", script], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    # 2. nothing created or changed: our named namespaces, the two inside, the cache directory
    assert {case: ns.snapshot() for case, ns in by_case.items()} == before
    assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()
    assert cache_snapshot(cache_dir) == cache_before

    # 1. the JSON
    report = json.loads((tmp_path / "doctor.json").read_text())
    got = {}
    entries = {}
    for ns in report["namespaces"]:
        mine = [n for n in ns["names"] if n.startswith("/run/netns/" + PREFIX)]
        if mine:
            case = mine[0][len("/run/netns/" + PREFIX):]
        elif ns["initial"]:
            case = "(initial)"
        elif any(p.get("cmdline") == "sleep " + PROCESS_MARK for p in ns["processes"]):
            case = "(process only)"
        else:
            continue  # another job's namespace
        assert case not in got, "listed twice: %s" % case
        assert ns["state"] == "audited", ns
        got[case] = {p["kind"] for p in ns["problems"]}
        entries[case] = ns
    expected = {case: c[2] for case, c in CASES.items()}
    expected["(initial)"] = INITIAL_EXPECTED
    expected["(process only)"] = set()
    assert len(expected) == 20
    assert got == expected

    # what the problems rest on, for a few cases
    assert entries["(process only)"]["names"] == []
    assert entries["(process only)"]["summary"]["nft"]["rules"] is True
    assert entries["hint6-legacy-ok"]["backends"]["legacy"]["ip6tables"]["hint"] is True
    assert entries["hint6-legacy-ok"]["backends"]["legacy"]["iptables"]["hint"] is False
    assert entries["emptied"]["backends"]["legacy"]["iptables"]["tables"] == ["filter"]
    assert entries["emptied"]["summary"]["legacy"]["rules"] is False
    assert entries["native-nft"]["summary"]["nft"]["rules"] is False
    assert entries["cache-stale"]["cache"]["entry"]["backend"] == "nft"
    assert entries["cache-stale"]["container_decision"]["backend"] == "legacy"
    assert entries["split"]["container_decision"]["backend"] == "nft"
    assert entries["(initial)"]["alias_backend"] == "nft"
    for ns in entries.values():
        assert ns["cookie"].startswith("cookie-")

    # the exit status says problems were found (ours alone would do)
    assert (tmp_path / "rc-json").read_text().strip() == "1"
    assert (tmp_path / "rc-table").read_text().strip() == "1"

    # 1. the Prometheus file, parsed back: the counts of this very run's JSON
    samples = parse_prometheus((tmp_path / "doctor.prom").read_text())
    for kind in KINDS:
        having = sum(1 for ns in report["namespaces"] if any(p["kind"] == kind for p in ns["problems"]))
        assert samples[("iptables_shim_doctor_namespaces_with_problem", kind)] == having == \
            report["counts"]["problems"][kind]
        mine = sum(1 for case in expected if kind in expected[case])
        assert having >= mine
    assert samples[("iptables_shim_doctor_namespaces_audited", None)] == report["counts"]["audited"] >= 20
    assert samples[("iptables_shim_doctor_duration_seconds", None)] > 0
    assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]

    # 1. the table (its own run): one row per namespace, the problems in the last column
    rows = table_rows((tmp_path / "doctor.txt").read_text())
    for case, ns in entries.items():
        if case == "(initial)":
            key = "initial"
        elif case == "(process only)":
            key = "netns:[%d]" % ns["inode"]
        else:
            key = "/run/netns/" + PREFIX + case
        assert key in rows, (key, rows)
        assert set(rows[key].split(",")) == (expected[case] or {"ok"}), (case, rows[key])


def test_exit_status_zero_when_the_audited_namespaces_are_healthy(twenty, tmp_path):
    _, cache_dir, by_case = twenty
    env = doctor_env(cache_dir)
    healthy = [by_case[c].path for c in ("nft", "legacy", "nft6", "empty", "cache-fresh", "emptied")]
    args = [a for p in healthy for a in ("--netns", p)]
    r = subprocess.run([SHIM, "doctor"] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, (r.stdout.decode(), r.stderr.decode())
    assert r.stderr == b""
    assert "6 namespaces audited, 0 gone during the audit, 0 with problems" in r.stdout.decode()
    r = subprocess.run([SHIM, "doctor", "--netns", by_case["split"].path] + args, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 1, r.stderr.decode()


def tmp_path_factory_free_dir():
    """A directory the unprivileged caller can reach and write (pytest's tmp dirs are root's 0700)."""
    path = tempfile.mkdtemp(prefix="shimdoc-")
    os.chmod(path, 0o755)
    os.chown(path, 65534, 65534)
    return path


def test_unprivileged_caller_marks_what_it_cannot_enter_unreadable(twenty, tmp_path):
    """As non-root the audit reads what it can and marks the rest `unreadable`, with why."""
    _, cache_dir, by_case = twenty
    env = doctor_env(cache_dir)
    prom = tmp_path_factory_free_dir()
    shim = os.path.join(bin_for_other_users(), "iptables-shim")  # a checkout under /root: a readable copy
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", shim, "doctor",
           "--json", "--prometheus", os.path.join(prom, "doctor.prom"), "--netns", by_case["split"].path]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 1, r.stderr.decode()
    report = json.loads(r.stdout)
    (ns,) = report["namespaces"]
    assert ns["state"] == "unreadable"
    assert [p["kind"] for p in ns["problems"]] == ["unreadable"]
    assert "needs root" in ns["problems"][0]["detail"]
    with open(os.path.join(prom, "doctor.prom")) as f:
        samples = parse_prometheus(f.read())
    shutil.rmtree(prom)
    assert samples[("iptables_shim_doctor_namespaces_with_problem", "unreadable")] == 1
    assert samples[("iptables_shim_doctor_namespaces_with_problem", "split")] == 0
    # the whole node as non-root: no crash, problems (what it cannot read), never exit 2
    r = subprocess.run(cmd[:7], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120)
    assert r.returncode == 1, r.stderr.decode()
    assert "unreadable" in r.stdout.decode() and r.stderr == b""


@pytest.mark.parametrize("bad", ["/etc/hostname", "/run", "/proc/self/ns/pid", "/no/such/netns"])
def test_a_netns_path_that_is_not_a_namespace_is_one_line_and_exit_2(bad, tmp_path):
    r = subprocess.run([SHIM, "doctor", "--netns", "/proc/self/ns/net", "--netns", bad],
                       env=doctor_env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert shim_error_line(r, returncode=2).startswith("iptables-shim: --netns " + bad), r.stderr


def descendants(pid):
    out = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open("/proc/%d/task/%d/children" % (current, current)) as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def start_slowed_audit(cmd, env):
    """Start the audit with every setns(2) delayed by 100 ms (strace's fault injection), and return
    once its first reading worker exists: the namespaces not yet entered can be made to vanish
    while it works, however loaded the machine is."""
    p = subprocess.Popen(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=setns",
                          "-e", "inject=setns:delay_enter=100000", "-o", "/dev/null"] + cmd,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(descendants(p.pid)) < 2:  # the audit, and a worker
        time.sleep(0.001)
    return p


def test_namespaces_deleted_while_the_audit_runs_are_gone_not_errors(tmp_path):
    names = ["gone-%02d" % i for i in range(60)]
    made = named_netns(names)
    try:
        for ns in made:
            ns.ok(NFT_RULE)
        args = [a for ns in made for a in ("--netns", ns.path)]
        p = start_slowed_audit([SHIM, "doctor", "--json"] + args, doctor_env(tmp_path / "c"))
        doomed = made[30:]
        delete_netns(doomed)
        out, err = p.communicate(timeout=120)
    finally:
        delete_netns(made)
    assert p.returncode == 0, err.decode()  # gone is no problem; the rest are healthy
    assert err == b""
    report = json.loads(out)
    states = {ns["paths"][0]: ns["state"] for ns in report["namespaces"]}
    assert all(states[ns.path] == "audited" for ns in made[:30])
    assert all(states[ns.path] in ("audited", "gone") for ns in doomed)
    gone = [ns for ns in report["namespaces"] if ns["state"] == "gone"]
    assert len(gone) >= len(doomed) // 2 and report["counts"]["gone"] == len(gone)
    assert all(ns["problems"] == [] for ns in gone)


def test_processes_exiting_while_the_audit_runs_leave_their_namespace_gone(tmp_path):
    """Namespaces only processes are in (no name): the processes exit mid-audit."""
    mark = str(4000 + os.getpid() % 1000)
    procs = []
    try:
        for _ in range(20):
            ready = tmp_path / ("ready-%d" % len(procs))
            procs.append(subprocess.Popen(
                ["unshare", "-n", "sh", "-c", '%s && touch "$0" && exec sleep %s' % (NFT_RULE, mark), str(ready)]))
        for i in range(len(procs)):
            while not (tmp_path / ("ready-%d" % i)).exists():
                time.sleep(0.01)
        env = doctor_env(tmp_path / "c")
        p = start_slowed_audit([SHIM, "doctor", "--json"], env)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        out, err = p.communicate(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert err == b"", err.decode()
    assert p.returncode in (0, 1)  # other jobs' namespaces on this machine may have problems
    report = json.loads(out)
    ours = [ns for ns in report["namespaces"] if any(
        pr.get("cmdline") == "sleep " + mark for pr in ns["processes"])]
    assert len(ours) == 20
    assert all(ns["state"] in ("gone", "audited") for ns in ours)
    assert sum(1 for ns in ours if ns["state"] == "gone") >= len(ours) // 2
    for ns in ours:
        assert ns["problems"] == []
        if ns["state"] == "audited":
            assert ns["summary"]["nft"]["rules"] is True


# -- 5. the frozen build -------------------------------------------------------------------------

def frozen_tree():
    """The frozen tree of this run's workspace (tests/images), built there if it is not yet."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from images import Workspace

    dist, _ = Workspace.open().frozen()
    return os.path.join(dist, "iptables-shim", "iptables-shim")


def comparable(report):
    report = dict(report)
    for key in ("duration_seconds", "finished"):
        report.pop(key)
    return report


def assert_frozen_doctor_matches_source(frozen, namespaces, cache_dir, tmp_path):
    """The frozen tree's `doctor --json` equals the source one's (timings aside)."""
    args = ["doctor", "--json"] + [a for ns in namespaces for a in ("--netns", ns.path)]
    env = doctor_env(cache_dir)
    reports = {}
    for label, exe in (("source", SHIM), ("frozen", frozen)):
        r = subprocess.run([exe] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert r.returncode == 1, (label, r.stderr.decode())
        reports[label] = comparable(json.loads(r.stdout))
    assert reports["frozen"] == reports["source"]


@pytest.mark.images
def test_frozen_build_gives_the_same_json(twenty, tmp_path):
    frozen = frozen_tree()
    _, cache_dir, by_case = twenty
    assert_frozen_doctor_matches_source(frozen, list(by_case.values()), cache_dir, tmp_path)


def test_nft_rules_of_both_families_beyond_one_dump_batch_are_read(tmp_path):
    """IPv4 rules filling more than one netlink batch, and IPv6 rules: the IPv4 rule dump is left
    at its first rule, and asking for the IPv6 one on the same socket is refused (EBUSY), which
    made a dual-stack node with a large ruleset `unreadable`."""
    rules = "\n".join(["*filter", ":INPUT ACCEPT [0:0]"] + ["-A INPUT -s 10.0.%d.%d/32 -j ACCEPT" % (i >> 8, i & 255)
                                                           for i in range(3000)] + ["COMMIT", ""])
    with Netns.create(PREFIX) as ns:
        r = ns.run(["iptables-nft-restore"], input=rules.encode())
        assert r.returncode == 0, r.stderr
        ns.ok("ip6tables-nft -A INPUT -j ACCEPT")
        r = subprocess.run([SHIM, "doctor", "--json", "--netns", ns.path], env=doctor_env(tmp_path / "c"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    (entry,) = json.loads(r.stdout)["namespaces"]
    assert entry["problems"] == [], entry["problems"]
    assert entry["backends"]["nft"]["iptables"]["rules"] is True
    assert entry["backends"]["nft"]["ip6tables"]["rules"] is True
    assert r.returncode == 0


def test_a_reader_that_dies_or_hangs_costs_its_namespace_only(monkeypatch):
    """The worker reading one namespace is killed by a signal, another hangs past the time limit:
    those two are reported with why, every other key is read, by fresh workers."""
    from shim.doctor import enter

    monkeypatch.setattr(enter, "CHILD_TIMEOUT", 1.0)
    monkeypatch.setattr(enter, "BATCH", 4)

    def work(key):
        if key == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        if key == 7:
            time.sleep(30)
        return {"ok": key * 2, "pid": os.getpid()}

    results = enter.run_all(list(range(20)), work, parallel=2)
    assert sorted(results) == list(range(20))
    assert results[3] == {"error": "the reading worker died of signal 9"}
    assert "longer than 1 s" in results[7]["error"]
    assert all(results[k]["ok"] == k * 2 for k in results if k not in (3, 7))
    assert len({results[k]["pid"] for k in results if k not in (3, 7)}) >= 5  # batches of 4: fresh workers
