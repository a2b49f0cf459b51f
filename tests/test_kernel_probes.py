"""The kernel probes on a real kernel (docs/decision.md). They see both backends whatever
binaries an image has (so the shim refuses instead of writing where the host does not read), their
cost does not grow with the ruleset, they change nothing, they see what iptables-nft-save hides,
and where the kernel refuses them the `*-save` probe answers and `explain` says so. What they
conclude from each kind of reply, without a kernel: tests/unit/test_nft_kernel.py and
tests/unit/test_legacy_kernel.py.

The container here is tests/rootfs.py's ChrootContainer: a root filesystem with only the binaries we give it,
entered with its own mount and PID namespaces and chroot, in the test's netns.
"""

import json
import os

import pytest

from conftest import BIN, bin_for_other_users, shim_env
from rootfs import ADDR4, MARK, WRITE4, WRITE6, landed
from shim_output import shim_error_line

NFT_RULE = "iptables-nft -A FORWARD -s 192.0.2.1 -j DROP"
LEGACY_RULE = "iptables-legacy -A FORWARD -s 192.0.2.1 -j DROP"
RESTORE4 = ("*filter\n-A INPUT -s %s -m comment --comment %s -j ACCEPT\nCOMMIT\n" % (ADDR4, MARK)).encode()


PROBES = ("from shim.facts import nft_kernel, legacy_kernel\n"
          "print(json.dumps({'nft': nft_kernel.probe(), 'legacy': legacy_kernel.probe()}))\n")


# --- refusal: the rules are in a backend this image has no binary for ---

REFUSALS = [
    # (case, image backends, set-up with the host's real binaries, the backend that holds them)
    ("nft rules, image with legacy binaries only", ("legacy",), NFT_RULE, "nft"),
    ("IPv6 nft rules only, image with legacy binaries only", ("legacy",),
     "ip6tables-nft -A INPUT -s 2001:db8::1 -j DROP", "nft"),
    ("nft hint chain only, image with legacy binaries only", ("legacy",),
     "iptables-nft -t mangle -N KUBE-IPTABLES-HINT", "nft"),
    ("legacy rules, image with nft binaries only", ("nft",), LEGACY_RULE, "legacy"),
    ("legacy hint chain only, image with nft binaries only", ("nft",),
     "ip6tables-legacy -t mangle -N KUBE-KUBELET-CANARY", "legacy"),
]
CALLS = [("iptables -A", WRITE4, None), ("ip6tables -A", WRITE6, None),
         ("iptables-restore --noflush", ["iptables-restore", "--noflush"], RESTORE4)]


@pytest.mark.parametrize("call,argv,stdin", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("case,backends,setup,holder", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_rules_in_a_backend_the_image_cannot_run_are_refused(netns, make_chroot, case, backends, setup, holder,
                                                             call, argv, stdin):
    """The image's own alias and binaries are the other backend's, and the image has no
    `*-save` of the backend holding the rules (a save probe would find nothing and write into the
    other backend: Istio #49279). The kernel probe sees the rules; the shim refuses with one
    `iptables-shim:` line, exit 127, and nothing is written into either backend."""
    container = make_chroot(backends, backends[0])
    assert not any(n.startswith(("iptables-" + holder, "ip6tables-" + holder)) for n in container.sbin())
    netns.ok(setup)
    before = netns.snapshot()
    r = container.run(argv, netns=netns, input=stdin)
    err = shim_error_line(r)
    assert err.startswith("iptables-shim: chose %s" % holder), err
    assert "%s-%s" % (argv[0].split("-")[0], holder) in err and "not on PATH" in err, err
    assert netns.snapshot() == before  # no legacy table created, nft ruleset unchanged
    assert landed(netns) == {"nft": [], "legacy": []}
    # explain, inside the same image, says where the facts came from: the kernel, not a binary.
    report = container.explain(netns=netns)
    state = report["backends"][holder]
    assert state["source"].startswith("kernel") and (state["rules"] or state["hint"]), state
    assert report["decision"]["backend"] == holder and report["runs"].startswith("error: "), report


def test_same_image_writes_where_the_rules_are_when_it_can(netns, make_chroot):
    """Control for the refusals: an image with both backends follows the nft rules (no refusal)."""
    container = make_chroot(("nft", "legacy"), "legacy")
    netns.ok(NFT_RULE)
    r = container.run(WRITE4, netns=netns)
    assert r.returncode == 0, r.stderr
    assert [len(v) for v in (landed(netns)["nft"], landed(netns)["legacy"])] == [1, 0]


# --- what iptables-nft-save hides, the kernel probe sees ---

def test_rule_in_an_incompatible_base_chain_of_an_xtables_table_counts(netns):
    """A native base chain named `bar` in `table ip mangle` holding a rule: iptables-nft-save 1.8.9
    prints the table without it ("contains incompatible base-chains"), so the save reference cannot
    tell (unknown: tests/test_native_tables.py); the rule is in an xtables-named table of family ip
    all the same (SPEC: it counts)."""
    netns.ok("nft add table ip mangle; nft 'add chain ip mangle bar { type filter hook prerouting priority -150; }';"
             " nft add rule ip mangle bar ip saddr 192.0.2.9 counter drop")
    save = netns.save("nft")
    assert "incompatible" in save and "-A " not in save, save
    assert netns.python(PROBES) == {"nft": [True, False], "legacy": [False, False]}


def test_rule_iptables_nft_save_cannot_translate_counts(netns):
    """`meta mark set` in `table ip6 nat`: ip6tables-nft-save fails (the save probe leaves the fact
    open: None); the kernel probe answers."""
    netns.ok("nft add table ip6 nat; nft add chain ip6 nat foo; nft add rule ip6 nat foo meta mark set 3 counter")
    assert netns.run(["ip6tables-nft-save"]).returncode != 0
    reference = netns.python("from shim.facts import rules\n"
                                "s = rules.save_probe('nft', {'iptables': '/usr/sbin/iptables-nft-save', "
                                "'ip6tables': '/usr/sbin/ip6tables-nft-save'})\nprint(json.dumps(s.as_dict()))\n")
    assert reference["rules"] is None and "unread" in reference["source"], reference
    assert netns.python(PROBES)["nft"] == [True, False]


@pytest.mark.parametrize("setup", [
    "nft add table inet firewalld; nft add chain inet firewalld c; nft add rule inet firewalld c counter accept",
    "nft add table ip kube-proxy; nft add chain ip kube-proxy c; nft add rule ip kube-proxy c counter accept",
    "nft add table arp filter; nft add chain arp filter c; nft add rule arp filter c counter",
    "nft add table inet mangle; nft add chain inet mangle KUBE-IPTABLES-HINT",
    "nft add table ip filter; nft add chain ip filter KUBE-IPTABLES-HINT",
], ids=["inet firewalld", "ip kube-proxy", "arp filter", "inet mangle hint", "hint outside mangle"])
def test_native_nft_tables_are_not_iptables_rules(netns, setup):
    netns.ok(setup)
    assert netns.python(PROBES) == {"nft": [False, False], "legacy": [False, False]}


# --- cost: the same system calls and a bounded amount read, at 1 rule and at 10,000 ---

def probe_syscalls(netns, tmp_path, label):
    trace = tmp_path / ("trace-" + label)
    strace = ["/usr/bin/strace", "-f", "-qq", "-e", "trace=socket,sendto,recvfrom,recvmsg,getsockopt",
              "-o", str(trace)]
    printed = netns.python("from shim.facts import nft_kernel, legacy_kernel\n"
                           "print(json.dumps([nft_kernel.probe(), legacy_kernel.probe()]))", wrap=strace)
    assert printed == [[True, False], [True, False]]
    calls, received = [], 0
    for line in trace.read_text().splitlines():
        call = line.split(None, 1)[1]
        if call.startswith(("socket(AF_UNIX", "socket(AF_INET6, SOCK_DGRAM")):
            continue  # the interpreter's own, if any
        name = call.split("(", 1)[0]
        if name == "getsockopt":
            name += ":" + call.split(", ")[2]  # IPT_SO_GET_INFO / IPT_SO_GET_ENTRIES
        calls.append(name)
        if name in ("recvfrom", "recvmsg"):
            received += int(call.rsplit("= ", 1)[1])
    return calls, received


def test_probe_cost_does_not_grow_with_the_ruleset(netns, tmp_path):
    netns.ok("iptables-nft -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j ACCEPT")
    small, small_bytes = probe_syscalls(netns, tmp_path, "1")
    lines = "".join("-A INPUT -s 10.%d.%d.%d -j ACCEPT\n" % (i >> 16, (i >> 8) & 255, i & 255) for i in range(10000))
    for backend in ("nft", "legacy"):
        r = netns.run(["iptables-%s-restore" % backend, "--noflush"], input=("*filter\n%sCOMMIT\n" % lines).encode())
        assert r.returncode == 0, r.stderr
    large, large_bytes = probe_syscalls(netns, tmp_path, "10k")
    assert large == small, (small, large)
    assert "getsockopt:IPT_SO_GET_ENTRIES" not in large  # built-in chain rules show in GET_INFO
    assert small_bytes <= large_bytes <= 3 * 8192, (small_bytes, large_bytes)


def traced_legacy_probe(netns, tmp_path, syscalls):
    """(what legacy_kernel.probe() answered, the strace log of `syscalls` it made) in the netns."""
    trace = tmp_path / "trace"
    strace = ["/usr/bin/strace", "-f", "-qq", "-e", "trace=" + syscalls, "-o", str(trace)]
    answer = netns.python("from shim.facts import legacy_kernel\nprint(json.dumps(legacy_kernel.probe()))",
                          wrap=strace)
    return answer, trace.read_text()


def legacy_getsockopts(netns, tmp_path):
    printed, trace = traced_legacy_probe(netns, tmp_path, "getsockopt")
    return printed, [l.split(", ")[2] for l in trace.splitlines()]


def test_legacy_rules_in_user_chains_only_show_in_the_table_figures(netns, tmp_path):
    """Empty built-in chains, 2,000 rules in user chains: entry count and table size cannot be
    those of a table without rules, so the entries are not read."""
    chains = "".join(":U%d - [0:0]\n" % i for i in range(20))
    rules = "".join("-A U%d -s 10.0.%d.%d -j ACCEPT\n" % (i % 20, i // 250, i % 250) for i in range(2000))
    r = netns.run(["iptables-legacy-restore"], input=("*nat\n%s%sCOMMIT\n" % (chains, rules)).encode())
    assert r.returncode == 0, r.stderr
    assert legacy_getsockopts(netns, tmp_path) == ([True, False], ["IPT_SO_GET_INFO"])


def test_legacy_table_whose_figures_fit_no_rules_is_read(netns, tmp_path):
    """Three 152-byte rules and one 200-byte rule average a chain head plus tail (164 bytes): the
    figures fit "two more empty chains", so the entries are read, and they show the rules."""
    netns.ok("iptables-legacy -N U; for i in 1 2 3; do iptables-legacy -A U -j ACCEPT; done; "
             "iptables-legacy -A U -p tcp --dport 80 -j ACCEPT")
    assert legacy_getsockopts(netns, tmp_path) == ([True, False], ["IPT_SO_GET_INFO", "IPT_SO_GET_ENTRIES"])
    netns.ok("iptables-legacy -F U")
    assert legacy_getsockopts(netns, tmp_path) == ([False, False], ["IPT_SO_GET_INFO", "IPT_SO_GET_ENTRIES"])


def test_no_legacy_table_means_no_socket_at_all(netns, tmp_path):
    printed, trace = traced_legacy_probe(netns, tmp_path, "socket,getsockopt")
    assert printed == [False, False]
    assert "SOCK_RAW" not in trace and "getsockopt" not in trace


# --- nf_tables not loaded: not asked (asking would load the module) ---
# Which traces say what: tests/unit/test_kernel_support.py. Here: that the probe obeys them.

def fake_roots(tmp_path, loaded=None, builtin=None):
    """/proc, /sys and /lib/modules stand-ins: `loaded` modules in /proc/modules (None: the file
    cannot be read), `builtin` in modules.builtin (None: no index)."""
    proc, sysfs, libmod = tmp_path / "proc", tmp_path / "sys", tmp_path / "lib-modules"
    for d in (proc, sysfs / "module", libmod / os.uname().release):
        d.mkdir(parents=True)
    if loaded is not None:
        (proc / "modules").write_text("".join("%s 1 0 - Live 0x0\n" % m for m in loaded))
    else:
        (proc / "modules").mkdir()  # there, but unreadable (EISDIR)
    if builtin is not None:
        (libmod / os.uname().release / "modules.builtin").write_text(
            "".join("kernel/net/netfilter/%s.ko\n" % m for m in builtin))
    return str(proc), str(sysfs), str(libmod)


def test_nf_tables_not_loaded_is_answered_without_asking_and_unknown_falls_back(netns, tmp_path):
    netns.ok(NFT_RULE)
    proc, sysfs, libmod = fake_roots(tmp_path, ["nfnetlink"], ["x_tables"])
    code = ("from shim.facts import nft_kernel, rules\nfrom shim.facts.xtables import Unavailable\n"
            "out = [nft_kernel.probe(%r, %r, %r)]\n" % (proc, sysfs, libmod))
    unknown = fake_roots(tmp_path / "unknown", None, None)
    code += ("try:\n    nft_kernel.probe(%r, %r, %r)\nexcept Unavailable as e:\n    out.append(str(e))\n" % unknown)
    code += "print(json.dumps(out))\n"
    # The fake roots say "a module, not loaded": the probe trusts them and opens no socket.
    assert netns.python(code) == [[False, False], "cannot tell whether nf_tables is loaded; asking could load it"]


# --- refused kernel probes: the save probe answers, explain says so ---

def test_refused_kernel_probe_falls_back_to_save_probe(netns):
    netns.ok(NFT_RULE + "; " + LEGACY_RULE + "; iptables-legacy -t mangle -N KUBE-IPTABLES-HINT")
    code = (
        "from shim.facts import rules\nfrom shim.facts.xtables import Unavailable\n"
        "def refused(proc):\n    raise Unavailable('netlink socket refused: Operation not permitted')\n"
        "out = {}\n"
        "for b in ('nft', 'legacy'):\n"
        "    paths = {f: '/usr/sbin/%s-%s-save' % (f, b) for f in ('iptables', 'ip6tables')}\n"
        "    out[b] = rules.backend_state(b, paths, kernel_probe=(refused, 'kernel')).as_dict()\n"
        "    out[b + '-kernel'] = rules.backend_state(b, paths).as_dict()\n"
        "print(json.dumps(out))\n")
    out = netns.python(code)
    fallback = "save; kernel probe unavailable: netlink socket refused: Operation not permitted"
    assert out["nft"] == {"rules": True, "hint": False, "source": fallback}
    assert out["legacy"] == {"rules": True, "hint": True, "source": fallback}
    assert out["nft-kernel"] == {"rules": True, "hint": False, "source": "kernel (nf_tables netlink)"}
    assert out["legacy-kernel"] == {"rules": True, "hint": True, "source": "kernel (x_tables sockopts)"}


def test_explain_names_the_probe_that_answered(netns, cache_dir):
    """With CAP_NET_ADMIN and CAP_NET_RAW dropped, the kernel refuses netlink and the raw socket:
    explain shows the fallback and why (here the save binaries are refused too, so the facts stay
    open); with them, it shows the kernel probes."""
    netns.ok(NFT_RULE + "; " + LEGACY_RULE)
    explain = [os.path.join(BIN, "iptables-shim"), "explain", "--json"]
    r = netns.run(explain, env=shim_env(cache_dir))
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout.decode())["backends"]
    assert full["nft"]["source"] == "kernel (nf_tables netlink)" and full["nft"]["rules"] is True
    assert full["legacy"]["source"] == "kernel (x_tables sockopts)" and full["legacy"]["rules"] is True
    drop = ["setpriv", "--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw", "--"]
    r = netns.run(drop + explain, env=shim_env(cache_dir))
    assert r.returncode == 0, r.stderr
    reduced = json.loads(r.stdout.decode())["backends"]
    assert reduced["nft"]["source"].startswith("save (unread: iptables-nft-save, ip6tables-nft-save); "
                                               "kernel probe unavailable: nf_tables refused"), reduced
    assert reduced["legacy"]["source"].startswith("save (unread: iptables-legacy-save); "
                                                  "kernel probe unavailable: raw socket refused"), reduced
    assert reduced["nft"]["rules"] is None and reduced["legacy"]["rules"] is None


def test_without_ctypes_the_legacy_probe_falls_back_to_save(netns):
    """Debian's python3-minimal has _socket built in but not _ctypes (libpython3-stdlib): there the
    x_tables socket options cannot be called with a table name, and the save probe answers."""
    netns.ok(LEGACY_RULE)
    code = ("sys.modules['_ctypes'] = sys.modules['ctypes'] = None  # as if not installed\n"
            "from shim.facts import rules\n"
            "paths = {f: '/usr/sbin/%s-legacy-save' % f for f in ('iptables', 'ip6tables')}\n"
            "print(json.dumps(rules.backend_state('legacy', paths).as_dict()))\n")
    assert netns.python(code) == {
        "rules": True, "hint": False,
        "source": "save; kernel probe unavailable: no ctypes to call getsockopt with a table name"}


# --- per family, and an unreadable table list ---

def test_per_family_probes(netns):
    """probe_families() on a real kernel: each family's own tables, rules and hint, in both
    backends; the aggregate probe() is any family's; and asking changes nothing."""
    netns.ok("iptables-nft -A INPUT -j ACCEPT; ip6tables-nft -t mangle -N KUBE-IPTABLES-HINT; "
             "ip6tables-legacy -t raw -A PREROUTING -j ACCEPT; iptables-legacy -t mangle -N KUBE-KUBELET-CANARY; "
             "iptables-legacy -t nat -N EMPTY")
    before = netns.snapshot()
    code = ("from shim.facts import nft_kernel, legacy_kernel\n"
            "print(json.dumps({b: [{f: s.as_dict() for f, s in m.probe_families().items()}, m.probe()]\n"
            "                  for b, m in (('nft', nft_kernel), ('legacy', legacy_kernel))}))\n")
    out = netns.python(code)
    assert out["nft"] == [{"iptables": {"tables": ["filter"], "rules": True, "hint": False},
                           "ip6tables": {"tables": ["mangle"], "rules": False, "hint": True}}, [True, True]]
    assert out["legacy"] == [{"iptables": {"tables": ["mangle", "nat"], "rules": False, "hint": True},
                              "ip6tables": {"tables": ["raw"], "rules": True, "hint": False}}, [True, True]]
    assert netns.snapshot() == before


def test_per_family_probe_reads_every_family_past_a_long_dump(netns):
    """1,000 rules in IPv4 filter: its rule dump is left at the first rule, still running, and the
    kernel refuses another dump on that socket (EBUSY); IPv6 raw's rule is read all the same."""
    rules = "".join("-A INPUT -s 10.0.%d.%d -j ACCEPT\n" % (i // 250, i % 250) for i in range(1000))
    r = netns.run(["iptables-nft-restore"], input=("*filter\n%sCOMMIT\n" % rules).encode())
    assert r.returncode == 0, r.stderr
    netns.ok("ip6tables-nft -t raw -A PREROUTING -j ACCEPT")
    code = ("from shim.facts import nft_kernel\n"
            "print(json.dumps({f: s.as_dict() for f, s in nft_kernel.probe_families().items()}))\n")
    assert netns.python(code) == {"iptables": {"tables": ["filter"], "rules": True, "hint": False},
                                     "ip6tables": {"tables": ["raw"], "rules": True, "hint": False}}


CAP_NET_ADMIN_ONLY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      "--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw", "--"]


def test_unreadable_legacy_table_list_is_unknown_not_empty(netns):
    """/proc/net/ip_tables_names is 0440 root: a caller with CAP_NET_ADMIN but another uid gets
    EACCES. That must leave the fact open (SPEC "Facts"), never read as "no legacy tables": the
    shim would then write into nft while legacy holds rules."""
    netns.ok(LEGACY_RULE)
    code = ("from shim.facts import legacy_kernel\nfrom shim.facts.xtables import Unavailable\n"
            "try:\n    print(json.dumps(legacy_kernel.probe()))\n"
            "except Unavailable as e:\n    print(json.dumps(str(e)))\n")
    readable = os.path.dirname(bin_for_other_users())  # a checkout under /root: uid 65534's copy
    assert netns.python(code, wrap=CAP_NET_ADMIN_ONLY, repo=readable) == \
        "cannot read /proc/net/ip_tables_names: Permission denied"
