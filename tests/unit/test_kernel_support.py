"""shim.facts.kernel_support against fixture trees standing in for /proc, /sys and /lib/modules.
No root, no kernel: what each combination of traces must answer (docs/kernels.md)."""

import gzip
import os

import pytest

from shim.facts import kernel_support as ks

RELEASE = "6.1.0-99-amd64"
NETLINK_HEAD = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"


def netlink_line(protocol, pid=0):
    return "0000000000000000 %-3d %-10d 00000000 0        0        0     2        0        1\n" % (protocol, pid)


class Roots(object):
    """A fixture machine. modules: loaded module names (None: no /proc/modules); builtin/available:
    what /lib/modules/RELEASE lists (available=None: no /lib/modules for the running kernel);
    netlink: protocols of /proc/net/netlink (None: no such file); config: {symbol: y/m/n} or None;
    sysmod: names under /sys/module; legacy_names: families whose /proc/net/*_tables_names exist."""

    def __init__(self, tmp, modules=(), builtin=(), available=(), netlink=None, config=None,
                 sysmod=(), legacy_names=(), compress=""):
        self.proc, self.sys, self.lib = str(tmp / "proc"), str(tmp / "sys"), str(tmp / "lib-modules")
        os.makedirs(os.path.join(self.proc, "net"))
        os.makedirs(os.path.join(self.sys, "module"))
        os.makedirs(self.lib)
        if modules is not None:
            write(os.path.join(self.proc, "modules"), "".join("%s 16384 0 - Live 0x0\n" % m for m in modules))
        if available is not None:
            base = os.path.join(self.lib, RELEASE)
            os.makedirs(base)
            write(os.path.join(base, "modules.builtin"), "".join("kernel/net/netfilter/%s.ko\n" % m for m in builtin))
            write(os.path.join(base, "modules.dep"),
                  "".join("kernel/net/netfilter/%s.ko%s:\n" % (m, compress) for m in available))
        if netlink is not None:
            write(os.path.join(self.proc, "net", "netlink"), NETLINK_HEAD + "".join(netlink_line(p) for p in netlink))
        if config is not None:
            with gzip.open(os.path.join(self.proc, "config.gz"), "wb") as f:
                f.write("".join("CONFIG_%s=%s\n" % (k, v) if v != "n" else "# CONFIG_%s is not set\n" % k
                                for k, v in config.items()).encode())
        for m in sysmod:
            os.makedirs(os.path.join(self.sys, "module", m))
        for family in legacy_names:
            write(os.path.join(self.proc, "net", "%s_tables_names" % family), "")

    def presence(self):
        return ks.nft_presence(self.proc, self.sys, self.lib, RELEASE)

    def support(self, backend, family="iptables"):
        return ks.support(backend, family, self.proc, self.sys, self.lib, RELEASE)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# --- nft_presence -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,expected", [
    (dict(sysmod=["nf_tables"]), True),
    (dict(modules=["nf_tables", "nfnetlink"]), True),
    (dict(modules=None), True),  # no module support: asking loads nothing
    (dict(modules=["nfnetlink"], builtin=["nf_tables"]), True),
    (dict(modules=["nfnetlink"], builtin=["x_tables"], available=["nf_tables"]), False),
    # A container (no /lib/modules for the kernel): the traces.
    (dict(modules=["x_tables"], available=None, netlink=[0, 9, 15]), False),  # no nfnetlink socket
    (dict(modules=["x_tables"], available=None, netlink=[0, 12]), None),  # built-in nfnetlink: can't tell
    (dict(modules=["nfnetlink"], available=None, netlink=[0, 12]), False),  # modular nfnetlink
    (dict(modules=["nfnetlink"], available=None), False),  # same without /proc/net/netlink
    (dict(modules=["x_tables"], available=None), None),  # nothing tells
    (dict(modules=["x_tables"], available=None, netlink=[12], config={"NF_TABLES": "y"}), True),
    (dict(modules=["x_tables"], available=None, netlink=[12], config={"NF_TABLES": "m"}), False),
    (dict(modules=["x_tables"], available=None, netlink=[12], config={"NF_TABLES": "n"}), False),
], ids=["sysfs", "proc modules", "no module support", "builtin", "not loaded", "no nfnetlink socket",
        "builtin nfnetlink", "modular nfnetlink", "modular nfnetlink, no netlink file", "no traces",
        "config y", "config m", "config n"])
def test_nft_presence(tmp_path, kw, expected):
    fact = Roots(tmp_path, **kw).presence()
    assert fact.value is expected, fact
    assert fact.why


def test_unreadable_proc_modules_with_no_index_is_unknown(tmp_path):
    roots = Roots(tmp_path, modules=None, available=None)
    os.mkdir(os.path.join(roots.proc, "modules"))  # reading a directory fails: not "missing"
    assert roots.presence().value is None


def test_presence_is_what_nft_kernel_asks(tmp_path):
    from shim.facts import nft_kernel

    roots = Roots(tmp_path, modules=["nfnetlink"], available=["nf_tables"])
    assert nft_kernel.nf_tables_present(roots.proc, roots.sys, roots.lib) is \
        ks.nft_presence(roots.proc, roots.sys, roots.lib).value


# --- support: nft -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,expected", [
    (dict(modules=["nf_tables", "nfnetlink"]), ks.LOADED),
    (dict(modules=["x_tables"], builtin=["nf_tables"]), ks.LOADED),
    (dict(modules=["x_tables"], available=["nf_tables", "nfnetlink"]), ks.LOADABLE),
    (dict(modules=["x_tables"], available=["nf_tables", "nfnetlink"], compress=".xz"), ks.LOADABLE),
    (dict(modules=["x_tables"], available=["ip_tables"]), ks.ABSENT),
    # Container: the kernel autoloads with the host's modprobe: not loaded is not absent.
    (dict(modules=["x_tables"], available=None, netlink=[0]), None),
    (dict(modules=["nfnetlink"], available=None), None),
    (dict(modules=["x_tables"], available=None, netlink=[12], config={"NF_TABLES": "n"}), ks.ABSENT),
], ids=["loaded", "builtin", "loadable", "loadable xz", "absent", "container not loaded",
        "container modular nfnetlink", "container config n"])
def test_nft_support(tmp_path, kw, expected):
    fact = Roots(tmp_path, **kw).support("nft")
    assert fact.value == expected, fact


# --- support: legacy ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw,family,expected", [
    (dict(legacy_names=["ip"]), "iptables", ks.LOADED),
    (dict(legacy_names=["ip"]), "ip6tables", ks.ABSENT),  # ip6_tables: not loaded, no module
    (dict(legacy_names=["ip6"], available=["ip6_tables"]), "ip6tables", ks.LOADED),
    (dict(available=["ip_tables", "x_tables"]), "iptables", ks.LOADABLE),
    (dict(available=["ip_tables"], compress=".zst"), "iptables", ks.LOADABLE),
    (dict(available=["nf_tables", "x_tables"]), "iptables", ks.ABSENT),  # modules removed / not built
    # Container: only a userspace modprobe from this filesystem can load ip_tables: absent here.
    (dict(available=None), "iptables", ks.ABSENT),
    (dict(modules=None, available=None), "iptables", ks.ABSENT),  # no module support, not there
    (dict(available=["ip_tables"], config={"IP_NF_IPTABLES_LEGACY": "n", "IP_NF_IPTABLES": "n"}),
     "iptables", ks.ABSENT),
    (dict(available=["ip_tables"], config={"IP_NF_IPTABLES_LEGACY": "n", "IP_NF_IPTABLES": "m"}),
     "iptables", ks.LOADABLE),
], ids=["loaded", "ip6 not loaded", "ip6 loaded", "loadable", "loadable zst", "absent", "container",
        "no module support", "config without legacy", "config m"])
def test_legacy_support(tmp_path, kw, family, expected):
    fact = Roots(tmp_path, **kw).support("legacy", family)
    assert fact.value == expected, fact
    assert fact.why


def test_legacy_unreadable_modules_dir_is_unknown(tmp_path):
    roots = Roots(tmp_path, available=None)
    os.makedirs(os.path.join(roots.lib, RELEASE, "modules.dep"))  # a directory: unreadable as a file
    write(os.path.join(roots.lib, RELEASE, "modules.builtin"), "")
    assert roots.support("legacy").value is None


def test_no_proc_is_unknown_never_absent(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ks.support("legacy", "iptables", str(empty), str(empty), str(empty), RELEASE).value is None


def test_fact_is_a_small_record():
    f = ks.Fact(True, "why")
    assert f == ks.Fact(True, "why") and f != ks.Fact(None, "why")
    with pytest.raises(AttributeError):
        f.other = 1
