"""Kernel support of each backend, read without loading anything.

Pure reads of /proc, /sys and /lib/modules (each root a parameter, so tests point them at fixture
trees): no socket is opened, no netlink message sent, no module loaded. Every answer is a `Fact`:
a value and why. The rules, and what the VM tests showed about which modules the kernel loads by
itself, are in docs/kernels.md.

- `nft_presence`: may nf_tables be asked without loading a module? True (loaded or built in),
  False (known not loaded: no nft rule can exist in any netns), None (cannot tell).
- `support`: can a backend work for a caller in this filesystem? "loaded" (loaded or built in),
  "loadable" (not loaded, but what would load it has the module), "absent" (known not to work
  here), None (cannot tell).
"""

import posix  # not os: read where a host's alias answers, on every such call (tests/test_hot_path.py)
import stat

LOADED, LOADABLE, ABSENT = "loaded", "loadable", "absent"
MISSING = "missing"  # what a read returns for a file that does not exist (as opposed to None: unreadable)

NETLINK_NETFILTER = 12  # the protocol of nfnetlink's kernel socket in /proc/net/netlink

# Per backend: the module that must be there, the kernel config symbols that build it.
# Linux 6.17 put legacy x_tables behind CONFIG_IP_NF_IPTABLES_LEGACY; older kernels have only
# CONFIG_IP_NF_IPTABLES.
LEGACY_MODULE = {"iptables": "ip_tables", "ip6tables": "ip6_tables"}
LEGACY_NAMES = {"iptables": "net/ip_tables_names", "ip6tables": "net/ip6_tables_names"}
LEGACY_CONFIG = {"iptables": ("CONFIG_IP_NF_IPTABLES_LEGACY", "CONFIG_IP_NF_IPTABLES"),
                 "ip6tables": ("CONFIG_IP6_NF_IPTABLES_LEGACY", "CONFIG_IP6_NF_IPTABLES")}


class Fact(object):
    """One kernel-support answer: value (True/False/None, or LOADED/LOADABLE/ABSENT/None) and why."""

    __slots__ = ("value", "why")

    def __init__(self, value, why):
        self.value = value
        self.why = why

    def __eq__(self, other):
        return isinstance(other, Fact) and (self.value, self.why) == (other.value, other.why)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "Fact(%r, %r)" % (self.value, self.why)


# -- reads: each returns None when the file cannot be read (unknown), never raises ---------------

def _is_dir(path):
    try:
        return stat.S_ISDIR(posix.stat(path).st_mode)
    except OSError:
        return False


def _lines(path):
    """The file's lines; MISSING if it does not exist; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace").splitlines()
    except FileNotFoundError:
        return MISSING
    except OSError:
        return None


def loaded_modules(proc):
    """Names of the loaded modules (a set), MISSING (no /proc/modules: a kernel without module
    support), or None (unreadable)."""
    lines = _lines(proc + "/modules")
    if lines is None or lines == MISSING:
        return lines
    return set(line.split(" ", 1)[0] for line in lines if line)


def _module_file_names(lines):
    """{module name} of modules.dep / modules.builtin lines ("kernel/net/x/ip_tables.ko.xz: ...")."""
    names = set()
    for line in lines:
        path = line.split(":", 1)[0].strip()
        base = path.rsplit("/", 1)[-1]
        if ".ko" in base:
            names.add(base.split(".ko", 1)[0].replace("-", "_"))
    return names


def module_index(lib_modules, release, index):
    """Module names listed by /lib/modules/RELEASE/INDEX ("modules.builtin": built into the kernel,
    "modules.dep": installed as files), as a set; MISSING when this filesystem has no
    /lib/modules/RELEASE at all (a container's usual case); None when it cannot be read."""
    base = lib_modules + "/" + release
    lines = _lines(base + "/" + index)
    if lines is None:
        return None
    if lines == MISSING:
        try:
            posix.stat(base)
        except FileNotFoundError:
            return MISSING
        except OSError:
            return None
        return None  # the directory without its index: depmod never ran, cannot tell
    return _module_file_names(lines)


def nfnetlink_registered(proc):
    """Does this netns show a NETLINK_NETFILTER socket in /proc/net/netlink? nfnetlink opens a
    kernel socket in every netns once it is registered (built in or loaded), and no socket of that
    protocol can be opened before. True, False, or None (unreadable or unexpected format)."""
    lines = _lines(proc + "/net/netlink")
    if lines is None or lines == MISSING or not lines:
        return None
    head = lines[0].split()
    if len(head) < 3 or head[1] != "Eth":
        return None
    for line in lines[1:]:
        cols = line.split()
        if len(cols) > 2 and cols[1] == str(NETLINK_NETFILTER):
            return True
    return False


def kernel_config(proc):
    """{CONFIG_X: "y"/"m"/"n"} from /proc/config.gz, or None where it is absent or unreadable
    (python3-minimal has no gzip module: then None too)."""
    try:
        import gzip
    except ImportError:
        return None
    try:
        with gzip.open(proc + "/config.gz", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (OSError, EOFError, ValueError):
        return None
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            config[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:-len(" is not set")]] = "n"
    return config


def _release():
    return posix.uname().release


# -- nf_tables -----------------------------------------------------------------------------------

def nft_presence(proc="/proc", sys_root="/sys", lib_modules="/lib/modules", release=None):
    """May nf_tables be asked (netlink) without making the kernel load a module? See
    docs/kernels.md: opening a NETLINK_NETFILTER socket loads nfnetlink, and an nf_tables request
    loads nf_tables, through the kernel's own modprobe, from any mount namespace."""
    release = release or _release()
    # A loaded module always has its /sys/module directory (built-in ones only sometimes).
    if _is_dir(sys_root + "/module/nf_tables"):
        return Fact(True, "nf_tables loaded (/sys/module/nf_tables)")
    modules = loaded_modules(proc)
    if modules == MISSING:
        # No /proc/modules: a kernel without module support; asking can load nothing.
        return Fact(True, "kernel without module support (no /proc/modules): nothing can be loaded")
    if modules is not None and "nf_tables" in modules:
        return Fact(True, "nf_tables loaded (/proc/modules)")
    # Not a loaded module: built in (and then perhaps without /sys/module entry), or not loaded.
    builtin = module_index(lib_modules, release, "modules.builtin")
    if isinstance(builtin, set):
        if "nf_tables" in builtin:
            return Fact(True, "nf_tables built in (modules.builtin)")
        if modules is not None:
            return Fact(False, "nf_tables is not built in (modules.builtin) and not loaded (/proc/modules)")
        return Fact(None, "nf_tables is not built in, but /proc/modules cannot be read")
    # No module index for the running kernel here (a container): other traces. docs/kernels.md.
    if modules is None:
        return Fact(None, "/proc/modules cannot be read and no modules.builtin for %s" % release)
    registered = nfnetlink_registered(proc)
    if registered is False:
        # nf_tables needs nfnetlink (Kconfig selects it): without nfnetlink's socket in this
        # netns, nf_tables is neither built in nor loaded.
        return Fact(False, "nfnetlink not registered (no protocol-12 socket in /proc/net/netlink): "
                           "nf_tables cannot be loaded or built in")
    if "nfnetlink" in modules:
        # A modular nfnetlink: nf_tables=y would have forced nfnetlink=y, so nf_tables is a module,
        # and /proc/modules says it is not loaded.
        return Fact(False, "nfnetlink is a module, so nf_tables is not built in, and it is not loaded")
    config = kernel_config(proc)
    if config is not None:
        value = config.get("CONFIG_NF_TABLES", "n")
        if value == "y":
            return Fact(True, "nf_tables built in (/proc/config.gz)")
        if value == "m":
            return Fact(False, "nf_tables is a module (/proc/config.gz) and not loaded (/proc/modules)")
        return Fact(False, "kernel built without nf_tables (/proc/config.gz)")
    return Fact(None, "no modules.builtin for %s here and no other trace tells whether nf_tables "
                      "is built in or not loaded" % release)


# -- can a backend work for this caller? ---------------------------------------------------------

def support(backend, family="iptables", proc="/proc", sys_root="/sys", lib_modules="/lib/modules",
            release=None):
    """Can `backend` ("nft" or "legacy") work for a caller in this filesystem? A Fact whose value
    is LOADED, LOADABLE, ABSENT or None. `family` ("iptables"/"ip6tables") matters for legacy
    only (ip_tables and ip6_tables are separate modules)."""
    release = release or _release()
    if backend == "nft":
        return _nft_support(proc, sys_root, lib_modules, release)
    if backend == "legacy":
        return _legacy_support(family, proc, lib_modules, release)
    raise ValueError("unknown backend %r" % (backend,))


def _nft_support(proc, sys_root, lib_modules, release):
    presence = nft_presence(proc, sys_root, lib_modules, release)
    if presence.value is True:
        return Fact(LOADED, presence.why)
    available = module_index(lib_modules, release, "modules.dep")
    if isinstance(available, set):
        # The kernel loads nf_tables itself on the first request (docs/kernels.md), with the
        # modprobe of the initial mount namespace; seen from here, the same kernel's modules.
        if "nf_tables" in available:
            return Fact(LOADABLE, "nf_tables not loaded; the kernel loads it on demand "
                                  "(nf_tables module in /lib/modules/%s)" % release)
        return Fact(ABSENT, "nf_tables neither loaded, built in nor in /lib/modules/%s" % release)
    config = kernel_config(proc)
    if config is not None and config.get("CONFIG_NF_TABLES", "n") == "n":
        return Fact(ABSENT, "kernel built without nf_tables (/proc/config.gz)")
    # A container: the kernel's autoload runs the host's modprobe on the host's /lib/modules, which
    # this filesystem cannot see. Not loaded is not absent (docs/kernels.md).
    return Fact(None, "nf_tables not loaded (%s); whether the host can load it is not visible "
                      "from this filesystem" % presence.why)


def _legacy_support(family, proc, lib_modules, release):
    module = LEGACY_MODULE[family]
    names = proc + "/" + LEGACY_NAMES[family]
    try:
        posix.stat(names)
        return Fact(LOADED, "%s loaded (/proc/%s exists)" % (module, LEGACY_NAMES[family]))
    except FileNotFoundError:
        pass
    except OSError as e:
        return Fact(None, "/proc/%s: %s" % (LEGACY_NAMES[family], e.strerror or e))
    if not _is_dir(proc + "/net"):
        return Fact(None, "no /proc/net to look in")
    modules = loaded_modules(proc)
    if modules == MISSING:
        return Fact(ABSENT, "kernel without module support and without %s" % module)
    config = kernel_config(proc)
    if config is not None and all(config.get(k, "n") == "n" for k in LEGACY_CONFIG[family]):
        return Fact(ABSENT, "kernel built without legacy x_tables (/proc/config.gz: %s)"
                    % " ".join(k + " not set" for k in LEGACY_CONFIG[family]))
    # Not loaded. The kernel never loads ip_tables by itself: iptables-legacy runs modprobe from
    # the caller's own filesystem (docs/kernels.md). So the caller's /lib/modules decides.
    available = module_index(lib_modules, release, "modules.dep")
    if available == MISSING:
        return Fact(ABSENT, "%s not loaded, and this filesystem has no /lib/modules/%s to load it "
                            "from (only a userspace modprobe loads it)" % (module, release))
    if available is None:
        return Fact(None, "%s not loaded; /lib/modules/%s cannot be read" % (module, release))
    if module in available:
        return Fact(LOADABLE, "%s not loaded; iptables-legacy loads it from /lib/modules/%s"
                    % (module, release))
    return Fact(ABSENT, "%s neither loaded nor in /lib/modules/%s" % (module, release))
