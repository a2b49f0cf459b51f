"""Generated cases: the launcher's C route gives Python's answer, or hands the call to Python.

Hypothesis draws a caller (root, root without CAP_NET_ADMIN, CAP_NET_ADMIN only, nobody; the
host's PID namespace or a new one), a PATH (Debian's alternatives, merged /usr through a link,
nft only, legacy only, no plain names, an alias whose backend only `--version` tells, a script
alias, a missing family, the tree itself on PATH, a copy of the tree, a world-writable directory,
relative, empty and missing entries), a cache (an entry valid or truncated, oversize, symlinked,
another owner's, group-writable, garbage, a step of every number, a directory that is not trusted)
and settings (environment and files, valid and invalid, quoted, CRLF, UTF-8 comments, untrusted
files). Each case runs in that caller's own context through tests/croute/compare.py: the C route
(the probe, built with AddressSanitizer and UBSan against glibc) and Python's shim.main.answer.
Where the C route answers, Python must have answered from the override, the caller's own facts or
the cache, with the same binary, re-entry mark, log file and log line.

The same cases against deliberately broken routes must fail (test_the_suite_catches_a_broken_route),
and the fuzz harness runs the C parsers under the sanitizers (test_parsers_under_the_sanitizers).
"""

import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import croute
from conftest import NOBODY, bin_for_other_users
from namespaces import NSENTER, Netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: callers of every privilege, a netns")

SHIM_NAMES = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]
REAL = {"nft": "/usr/sbin/xtables-nft-multi", "legacy": "/usr/sbin/xtables-legacy-multi"}

CALLERS = {
    "root": [],
    "root without CAP_NET_ADMIN": ["/usr/bin/setpriv", "--bounding-set=-net_admin"],
    "CAP_NET_ADMIN only": ["/usr/bin/setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                           "--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"],
    "nobody": ["/usr/bin/setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"],
}
RUNNER_UID = {"root": 0, "root without CAP_NET_ADMIN": 0, "CAP_NET_ADMIN only": NOBODY, "nobody": NOBODY}


# -- what a case is made of ---------------------------------------------------------------------

def names(family, backend, alias=True, variants=True):
    out = {}
    for suffix in ("", "-save", "-restore"):
        if variants:
            out["%s-%s%s" % (family, backend, suffix)] = REAL[backend]
        if alias:
            out[family + suffix] = "%s-%s%s" % (family, backend, suffix) if variants else REAL[backend]
    return out


def layout(kind, backend, other):
    """{name: link target or ("script", text)} of one PATH directory shaped like a distribution's."""
    both = {}
    if kind == "alternatives":  # Debian: the alias -> the variant -> xtables-*-multi; both variants
        for family in ("iptables", "ip6tables"):
            both.update(names(family, other, alias=False))
            both.update(names(family, backend))
    elif kind == "one backend":  # RHEL/UBI (nft only), or a legacy-only musl root
        for family in ("iptables", "ip6tables"):
            both.update(names(family, backend))
    elif kind == "variants only":
        for family in ("iptables", "ip6tables"):
            both.update(names(family, backend, alias=False))
            both.update(names(family, other, alias=False))
    elif kind == "alias by --version only":
        for family in ("iptables", "ip6tables"):
            both.update(names(family, backend, alias=False))
            for suffix in ("", "-save", "-restore"):
                both[family + suffix] = ("script", "#!/bin/sh\necho 'iptables v1.8.9 (%s)'\n"
                                         % ("nf_tables" if other == "nft" else "legacy"))
    elif kind == "script alias":  # its links name the backend, its variant is not on PATH
        for family in ("iptables", "ip6tables"):
            both.update(names(family, other, alias=False))
            for suffix in ("", "-save", "-restore"):
                both[family + suffix] = "%s-%s-wrapper%s" % (family, backend, suffix)
                both["%s-%s-wrapper%s" % (family, backend, suffix)] = (
                    "script", "#!/bin/sh\nexec %s \"$@\"\n" % REAL[backend])
    elif kind == "ip6tables only":
        both.update(names("ip6tables", backend))
    elif kind == "alternatives to the shim":  # install --alternatives (the .deb): the names lead to the shim
        for family in ("iptables", "ip6tables"):
            both.update(names(family, other, alias=False))
            both.update(names(family, backend, alias=False))
            for suffix in ("", "-save", "-restore"):
                both[family + suffix] = "../tree/iptables-shim"
    return both


def write_record(case, top):
    """/var/lib/iptables-shim/alternatives as install --alternatives writes it, under the case's
    own /var/lib (bind-mounted in a mount namespace of the case's: the machine's is never touched)."""
    state = os.path.join(top, "varlib", "iptables-shim")
    os.makedirs(state)
    lines = ["# iptables-shim install --alternatives: what was selected before.", "tool /usr/bin/update-alternatives",
             "group iptables auto /usr/sbin/iptables-nft %s/tree/iptables 100" % top]
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            lines.append("alias %s%s %s/layout/%s-%s%s" % (family, suffix, top, family, case["alias_backend"], suffix))
    kind = case["record"]
    if kind == "unknown line":
        lines.append("bogus line")
    data = ("\n".join(lines) + "\n").encode()
    if kind == "non-ASCII":
        data += "# caf\u00e9\n".encode()
    if kind == "a symlinked directory":  # /var/lib/iptables-shim -> a root-owned directory: never trusted
        os.rename(state, state + ".real")
        os.symlink("iptables-shim.real", state)
        state += ".real"
    path = os.path.join(state, "alternatives")
    if kind == "a FIFO":  # opened to be read, it would block every call that reads the record
        os.mkfifo(path, 0o644)
        return
    if kind == "a directory":
        os.mkdir(path)
        return
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o666 if kind == "untrusted" else 0o644)


def make_dir(path, entries):
    os.makedirs(path, exist_ok=True)
    for name, target in entries.items():
        p = os.path.join(path, name)
        if isinstance(target, tuple):
            with open(p, "w") as f:
                f.write(target[1])
            os.chmod(p, 0o755)
        else:
            os.symlink(target, p)


def fake_tree(path, conf=None):
    """A stand-in for the frozen tree: a large executable file, the marker, the six names."""
    os.makedirs(path)
    exe = os.path.join(path, "iptables-shim")
    with open(exe, "wb") as f:
        f.write(b"\x7fELF" + b"\0" * 70000)
    os.chmod(exe, 0o755)
    open(os.path.join(path, "iptables-shim.frozen"), "w").close()
    for name in SHIM_NAMES:
        os.symlink("iptables-shim", os.path.join(path, name))
    return exe


# Each setting's values, the wrong ones last: an index past the valid ones (one draw in sixteen) is
# an error, which Python must report and the C route must hand over.
SETTING_VALUES = {
    "IPTABLES_SHIM_MODE": (["nft", "legacy", ""], ["bogus"]),
    "IPTABLES_SHIM_CONTEXT": (["host", "container"], ["pod"]),
    "IPTABLES_SHIM_CACHE": (["on", "off", "on"], ["maybe"]),
    "IPTABLES_SHIM_LOG": (["LOG"], ["relative.log"]),
    "IPTABLES_SHIM_DEBUG": (["0", "0", "1"], ["2"]),
    "IPTABLES_SHIM_FAST_ROUTE": (["on", "on", "off"], ["fast"]),
    "IPTABLES_SHIM_SYSLOG_SOCKET": (["off", "/dev/null/log"], ["log"]),
}


def setting_value(name, i, case_dir):
    valid, wrong = SETTING_VALUES[name]
    value = wrong[0] if i == 15 else valid[i % len(valid)]
    return value.replace("LOG", os.path.join(case_dir, "shim.log"))


env_settings = st.dictionaries(st.sampled_from(sorted(SETTING_VALUES)), st.integers(0, 15), max_size=3)
file_line = st.one_of(
    st.tuples(st.sampled_from(sorted(SETTING_VALUES)), st.integers(0, 15), st.sampled_from(
        ["%s=%s", "%s = %s", "  %s=\"%s\"", "%s='%s'\r", "%s=%s  # a comment", "%s=\"%s\"\t# after quotes",
         "%s=%s#not a comment", "%s= # %s", "%s='%s # in quotes' # c", "\t%s=%s\t"])),
    st.sampled_from(["# a comment \u00e9\u00e8", "", "   ", "#\u00a0x", "# x"] * 6 + [
        "IPTABLES_SHIM_NOPE=1", "not a line", "\u00a0IPTABLES_SHIM_MODE=nft", "IPTABLES_SHIM_MODE=nft\x0b",
        "\x1cIPTABLES_SHIM_MODE=nft"]),
)
config_file = st.one_of(st.none(), st.none(), st.none(), st.tuples(st.lists(file_line, max_size=4), st.sampled_from(
    ["trusted"] * 16 + ["group-writable", "not root's", "symlink", "not UTF-8"])))

ENTRY_KINDS = ["none"] + ["valid"] * 24 + ["truncated", "oversize", "symlink", "other owner",
               "group-writable", "garbage", "unicode digit", "non-ASCII reason", "directory", "two lines",
               "a FIFO"]
# The directory as given in IPTABLES_SHIM_CACHE_DIR: "... /" with a trailing slash (with one, the
# kernel follows a final symlink even under O_NOFOLLOW), "... /." naming what is behind a symlink.
CACHE_DIR_KINDS = ["absent", "world-writable", "symlink", "another owner's", "trusted, given with a trailing slash",
                   "symlink, given with a trailing slash", "symlink, given as link/."]
RECORD_KINDS = ["none", "none", "aliases", "aliases", "untrusted", "unknown line", "non-ASCII", "a FIFO",
                "a directory", "a symlinked directory"]
case_strategy = st.fixed_dictionaries({
    "name": st.sampled_from(SHIM_NAMES),
    "caller": st.sampled_from(sorted(CALLERS)),
    "pid_namespace": st.sampled_from(["host's", "new", "new"]),
    "layout": st.sampled_from(["alternatives", "one backend", "variants only", "alias by --version only",
                               "script alias", "ip6tables only", "alternatives to the shim", "none"]),
    "record": st.sampled_from(RECORD_KINDS),
    "alias_backend": st.sampled_from(["nft", "legacy"]),
    "path": st.lists(st.sampled_from(["layout"] * 4 + ["merged link", "tree", "tree copy", "world-writable",
                                                   "relative", "empty", "missing", "root"]), max_size=5),
    "cache_dir": st.sampled_from(["trusted"] * 16 + CACHE_DIR_KINDS),
    "entry": st.sampled_from(ENTRY_KINDS),
    "entry_backend": st.sampled_from(["nft", "legacy"]),
    "entry_step": st.sampled_from([3, 4, 5] * 4 + [0, 1, 2, 6, 7, 12]),
    "env": env_settings,
    "main_file": config_file,
    "tree_file": config_file,
})


# Explicit cases, run before the generated ones: every kind of cache entry and directory, every
# step in an entry, both aliases for each kind of caller; from a case the C route answers.
BASE = {"name": "iptables", "caller": "root", "pid_namespace": "new", "layout": "alternatives",
        "alias_backend": "legacy", "path": ["layout"], "cache_dir": "trusted", "entry": "valid",
        "entry_backend": "legacy", "entry_step": 5, "env": {}, "main_file": None, "tree_file": None,
        "record": "none"}
EXPLICIT = (
    [dict(BASE, entry=kind) for kind in sorted(set(ENTRY_KINDS))]
    + [dict(BASE, caller="CAP_NET_ADMIN only", entry=kind) for kind in ("valid", "other owner", "group-writable")]
    + [dict(BASE, cache_dir=kind) for kind in CACHE_DIR_KINDS]
    + [dict(BASE, entry_step=step) for step in range(8)]
    + [dict(BASE, caller=caller, pid_namespace=pid, alias_backend=backend, name=name)
       for caller in sorted(CALLERS) for pid in ("host's", "new") for backend in ("nft", "legacy")
       for name in ("iptables", "ip6tables-save")]
    + [dict(BASE, env={"IPTABLES_SHIM_MODE": i}) for i in (0, 1, 15)]
    + [dict(BASE, layout="alternatives to the shim", record=kind, caller=caller, pid_namespace=pid)
       for kind in sorted(set(RECORD_KINDS))
       for caller, pid in (("root", "host's"), ("nobody", "new"), ("root", "new"))]
)


def write_config(path, spec, case_dir):
    lines, trust = spec
    text = []
    for line in lines:
        if isinstance(line, tuple):
            name, i, shape = line
            text.append(shape % (name, setting_value(name, i, case_dir)))
        else:
            text.append(line)
    data = "\n".join(text).encode("utf-8")
    if trust == "not UTF-8":
        data += b"\n# \xff\xfe\n"
    target = path + ".real" if trust == "symlink" else path
    with open(target, "wb") as f:
        f.write(data)
    os.chmod(target, 0o664 if trust == "group-writable" else 0o644)
    if trust == "not root's":
        os.chown(target, NOBODY, NOBODY)
    if trust == "symlink":
        os.symlink(target, path)


def build_case(case, top, key):
    """The files of one case under top; (exe, env, wrap)."""
    uid = RUNNER_UID[case["caller"]]
    other_uid = NOBODY if uid == 0 else 0
    backend = case["alias_backend"]
    other = "legacy" if backend == "nft" else "nft"
    exe = fake_tree(os.path.join(top, "tree"))
    if case["tree_file"]:
        write_config(os.path.join(top, "tree", "iptables-shim.conf"), case["tree_file"], top)
    if case["layout"] != "none":
        make_dir(os.path.join(top, "layout"), layout(case["layout"], backend, other))
    else:
        os.makedirs(os.path.join(top, "layout"))
    os.symlink("layout", os.path.join(top, "merged"))
    shutil.copytree(os.path.join(top, "tree"), os.path.join(top, "tree-copy"), symlinks=True)
    make_dir(os.path.join(top, "planted"), names("iptables", other, alias=True, variants=True))
    os.chmod(os.path.join(top, "planted"), 0o777)
    entries = {"layout": top + "/layout", "merged link": top + "/merged", "tree": top + "/tree",
               "tree copy": top + "/tree-copy", "world-writable": top + "/planted", "relative": "layout",
               "empty": "", "missing": top + "/missing", "root": "/"}
    path = ":".join(entries[e] for e in case["path"])

    cache = os.path.join(top, "cache")
    kind = case["cache_dir"]
    if kind != "absent":
        real_cache = cache + ".real" if kind.startswith("symlink") else cache
        os.makedirs(real_cache)
        os.chown(real_cache, other_uid if kind == "another owner's" else uid, 0)
        os.chmod(real_cache, 0o777 if kind == "world-writable" else 0o700)
        if kind.startswith("symlink"):
            os.symlink(real_cache, cache)
        write_entry(case, real_cache, key, uid, other_uid)
    given = {"trusted, given with a trailing slash": cache + "/", "symlink, given with a trailing slash": cache + "//",
             "symlink, given as link/.": cache + "/."}.get(kind, cache)

    env = {"PATH": path, "IPTABLES_SHIM_CACHE_DIR": given, "LC_ALL": "C"}
    for name, i in case["env"].items():
        env[name] = setting_value(name, i, top)
    if case["main_file"]:
        env["IPTABLES_SHIM_CONFIG"] = os.path.join(top, "main.conf")
        write_config(env["IPTABLES_SHIM_CONFIG"], case["main_file"], top)
    else:
        env["IPTABLES_SHIM_CONFIG"] = os.path.join(top, "no.conf")
    wrap = [NSENTER, "--net=" + NETNS[0].path]
    if case["record"] != "none":
        write_record(case, top)
        wrap += ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                 '/usr/bin/mount --bind "$0" /var/lib && exec "$@"', os.path.join(top, "varlib")]
    if case["pid_namespace"] == "new":
        wrap += ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc"]
    return exe, env, wrap + CALLERS[case["caller"]]


def write_entry(case, cache, key, uid, other_uid):
    kind = case["entry"]
    if kind == "none":
        return
    path = os.path.join(cache, key)
    valid = ("%s %d %s holds rules\n" % (case["entry_backend"], case["entry_step"], case["entry_backend"])).encode()
    data = {"truncated": valid[:-4], "oversize": valid[:-1] + b"x" * 5000 + b"\n",
            "garbage": bytes(range(256)), "unicode digit": "nft \uff13 r\n".encode(),
            "non-ASCII reason": "nft 3 r\u00e9gle\n".encode(), "two lines": valid + valid}.get(kind, valid)
    if kind == "directory":
        os.mkdir(path)
        return
    if kind == "a FIFO":
        os.mkfifo(path, 0o600)
        os.chown(path, uid, 0)
        return
    target = path + ".target" if kind == "symlink" else path
    with open(target, "wb") as f:
        f.write(data)
    os.chown(target, other_uid if kind == "other owner" else uid, 0)
    os.chmod(target, 0o660 if kind == "group-writable" else 0o600)
    if kind == "symlink":
        os.symlink(os.path.basename(target), path)


# -- running them -----------------------------------------------------------------------------------

NETNS = []


@pytest.fixture(scope="module", autouse=True)
def shared_netns():
    """One netns for every generated case: nothing here writes rules, and a netns per example would
    cost more than the case. nft holds a rule, so Python's own decisions are grounded."""
    with Netns.create() as ns:
        ns.ok("iptables-nft -A INPUT -s 192.0.2.1 -j DROP")
        NETNS[:] = [ns]
        yield ns
        NETNS[:] = []


def both_ways(case, probe_path, timeout=60):
    """The case's call settled by the C route and by Python: compare.py's result."""
    top = tempfile.mkdtemp(prefix="croute-case-", dir="/var/tmp")
    try:
        os.chmod(top, 0o755)
        exe, env, wrap = build_case(case, top, NETNS[0].cache_key_value)
        repo = os.path.dirname(bin_for_other_users()) if RUNNER_UID[case["caller"]] else croute.REPO
        r = subprocess.run(wrap + ["/usr/bin/python3", "-I", "-S", croute.compare_script(), repo, exe, probe_path, case["name"]],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
        return json.loads(r.stdout)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_case(case, probe_path, stats):
    result = both_ways(case, probe_path)
    c, py = result["c"], result["python"]
    assert result["c_stderr"] == "", result["c_stderr"]  # a sanitizer's report, or a print
    if "handover" in c:
        assert result["c_rc"] == 3
        stats["handed over"] += 1
        stats.setdefault("why", {}).setdefault(c["handover"], 0)
        stats["why"][c["handover"]] += 1
        return
    stats["answered"] += 1
    stats["step %s" % py.get("step")] = stats.get("step %s" % py.get("step"), 0) + 1
    assert result["c_rc"] == 0
    assert "error" not in py, (case, c, py)
    assert py["source"] in ("override", "caller", "cache"), (case, c, py)
    for field in ("binary", "mark", "log", "line"):
        assert c[field] == py[field], (field, case, c, py)


def check_generated(probe_path, max_examples, shrink=True):
    stats = {"answered": 0, "handed over": 0}
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    def each(case):
        run_case(case, probe_path, stats)

    for case in EXPLICIT:
        each = example(case)(each)
    each = given(case_strategy)(each)
    settings(max_examples=max_examples, deadline=None, derandomize=True, phases=phases, database=None,
             report_multiple_bugs=False,
             suppress_health_check=list(HealthCheck))(each)()
    return stats


@pytest.fixture(scope="module")
def netns_key(shared_netns):
    shared_netns.cache_key_value = shared_netns.cache_key()
    return shared_netns.cache_key_value


def test_the_c_route_gives_pythons_answer_or_hands_over(netns_key):
    stats = check_generated(croute.probe(), max_examples=400)
    print(json.dumps(stats, indent=1, sort_keys=True))  # the distribution, for -s and the closing note
    # The suite can fail only if the C route answers often enough, at each of its steps.
    assert stats["answered"] >= 40, json.dumps(stats, indent=1)
    assert all(stats.get("step %d" % s, 0) > 0 for s in (0, 1, 2, 3, 4, 5)), stats


# What neither route may trust or block on, and one form it must still trust: (the case, the source
# of Python's answer it must not have, or must have where it starts with "="). BASE's entry holds
# legacy, step 5; a host caller's recorded alias answers at step 2 ("caller").
HOST_RECORD = dict(BASE, layout="alternatives to the shim", pid_namespace="host's")
TRUST_CASES = {
    "cache directory: a symlink given with a trailing slash": (dict(BASE, cache_dir="symlink, given with a trailing slash"),
                                                                "cache"),
    "cache directory: a symlink given as link/.": (dict(BASE, cache_dir="symlink, given as link/."), "cache"),
    "cache directory: trusted, given with a trailing slash": (dict(BASE, cache_dir="trusted, given with a trailing slash"),
                                                               "=cache"),
    "cache entry: a FIFO": (dict(BASE, entry="a FIFO"), "cache"),
    "install record: trusted": (dict(HOST_RECORD, record="aliases"), "=caller"),
    "install record: a FIFO": (dict(HOST_RECORD, record="a FIFO"), "caller"),
    "install record: a directory": (dict(HOST_RECORD, record="a directory"), "caller"),
    "install record: in a symlinked directory": (dict(HOST_RECORD, record="a symlinked directory"), "caller"),
}


@pytest.mark.parametrize("kind", sorted(TRUST_CASES))
def test_a_symlink_or_fifo_is_trusted_by_neither_route(netns_key, kind):
    """A cache directory named with a trailing slash (or as link/.) where it is a symlink, a FIFO as
    the cache entry or the install record, the record's directory a symlink: neither route trusts
    them, and neither blocks (the whole case in 20 s); the C route hands the call to Python or
    answers as Python does from what it may trust. The
    same directory given with a trailing slash where it is one is trusted by both. Failed before
    (both routes trusted the directory behind the link; the record's FIFO blocked both)."""
    case, source = TRUST_CASES[kind]
    result = both_ways(case, croute.probe(), timeout=20)
    c, py = result["c"], result["python"]
    assert result["c_stderr"] == "", result["c_stderr"]
    if source.startswith("="):
        assert py.get("source") == source[1:] and c.get("binary") == py["binary"], (c, py)
    else:
        assert py.get("source") != source and ("handover" in c or c["binary"] == py["binary"]), (c, py)


def test_a_candidate_swapped_for_a_fifo_after_its_stat_never_blocks(netns_key, tmp_path):
    """A FIFO put in place of a candidate binary between its stat and its open: stat() is made to
    call it a regular file (tests/croute/fifo_as_file.c, preloaded into the C route, the probe
    without sanitizers, and into Python). Both routes open it without blocking, read nothing from
    it and give one answer, in 20 s (the alias is the FIFO: no shim copy, not iptables' own binary,
    so the re-entry mark is set). Failed before (both opened it blocking, for the shim-copy check
    and the multi-call check: the call hung)."""
    top = tmp_path / "case"
    os.makedirs(str(top / "bin"))
    os.chmod(str(tmp_path), 0o755)
    os.chmod(str(top), 0o755)
    exe = fake_tree(str(top / "tree"))
    os.mkfifo(str(top / "bin" / "xtables-legacy-multi"), 0o755)
    os.symlink("xtables-legacy-multi", str(top / "bin" / "iptables"))
    env = {"PATH": str(top / "bin"), "IPTABLES_SHIM_MODE": "legacy", "IPTABLES_SHIM_CONFIG": str(top / "no.conf"),
           "IPTABLES_SHIM_CACHE_DIR": str(top / "cache"), "LC_ALL": "C", "LD_PRELOAD": croute.fifo_as_file()}
    r = subprocess.run([NSENTER, "--net=" + NETNS[0].path, "/usr/bin/python3", "-I", "-S", croute.compare_script(),
                        croute.REPO, exe, croute.probe(sanitize=False), "iptables"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    result = json.loads(r.stdout)
    c, py = result["c"], result["python"]
    assert result["c_stderr"] == "" and result["c_rc"] == 0, result
    assert py.get("binary") == str(top / "bin" / "iptables") and py["mark"], (c, py)
    for field in ("binary", "mark", "log", "line"):
        assert c[field] == py[field], (field, c, py)


# Each breaks one rule of the C route; each must be caught by the generated cases above.
MUTATIONS = {
    "the owner check of the cache dropped": (
        "S_ISREG(st->st_mode)) && owned_alone(st, euid);",
        "S_ISREG(st->st_mode)) && !(st->st_mode & (S_IWGRP | S_IWOTH));"),
    "an alias misread (every chain read as nft)": (
        "            if (strcmp(name, multi) == 0 || strstr(name, dashed))\n                return b;",
        "            if (strcmp(name, multi) == 0 || strstr(name, dashed))\n                return 0;"),
    "an entry of a step outside 3-5 accepted": (
        "if (*step < CACHEABLE_FIRST || *step > CACHEABLE_LAST)", "if (*step > 99)"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_suite_catches_a_broken_route(netns_key, mutation):
    broken = croute.probe(MUTATIONS[mutation])
    # Caught as a different answer (the C route's answer is in the message), not as a crash.
    with pytest.raises(AssertionError, match="'binary': '/"):
        check_generated(broken, max_examples=250, shrink=False)


def test_the_documented_configuration_reads_alike(netns_key):
    """docs/configuration.md's example file, comments after values included, as the main file: the
    C route reads it (it answers, step 1) as Python does."""
    from unit.test_config import documented_configurations

    for where, body in documented_configurations():
        stats = {"answered": 0, "handed over": 0}
        run_case(dict(BASE, main_file=(body.splitlines(), "trusted")), croute.probe(), stats)
        assert stats["answered"] == 1, (where, stats)


def test_parsers_under_the_sanitizers(tmp_path):
    """The C route's parsers of untrusted bytes (cache entries, configuration, /proc, the install
    record) over a fixed corpus and 20,000 deterministic mutations of each seed (gcc, ASan + UBSan),
    then libFuzzer for 20 s where Debian's clang is installed (.ci/setup installs it)."""
    seeds = sorted(glob.glob(os.path.join(croute.CORPUS, "*")))
    # A seed for each parser: the first byte picks it (tests/croute/fuzz.c, `which`).
    assert {open(s, "rb").read(1)[0] % 5 for s in seeds} == set(range(5)), seeds
    r = subprocess.run([croute.fuzz_standalone()] + seeds, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=600)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode("utf-8", "replace")[-3000:]
    assert r.stdout.decode().split()[0] == str(20000 * len(seeds))
    fuzzer = croute.libfuzzer()
    if fuzzer is None:
        pytest.skip("no clang-14 for libFuzzer: the fixed corpus ran")
    corpus = tmp_path / "corpus"
    shutil.copytree(croute.CORPUS, str(corpus))
    r = subprocess.run([fuzzer, "-max_total_time=20", "-timeout=5", "-rss_limit_mb=2048", str(corpus)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")[-3000:]
    assert b"Done " in r.stderr
