"""Write settled.h: every name, limit and text of the shim that the launcher's C route (route.c)
must spell exactly as Python does, taken from shim/ itself, so each has one definition.

    /usr/bin/python3 -I packaging/launcher/settled_h.py REPO > settled.h

packaging/build.sh runs it before compiling the launcher; so do the tests that build route.c on
its own (tests/croute.py), so a text edited in shim/ can never drift from the C route's.
"""

import sys

sys.path.insert(0, sys.argv[1])

from shim import cache, config, log, policy, resolve  # noqa: E402
from shim.facts import binaries, context, kernel_support, netns, privilege  # noqa: E402
from shim.install import STATE_DIR, STATE_FILE  # noqa: E402
from shim.tools import BACKENDS, SHIM_NAMES, TOOL_SUFFIXES  # noqa: E402


def c_string(value):
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not all(" " <= ch <= "~" or ch == "\n" for ch in value):
        raise SystemExit("settled_h.py: %r is not printable ASCII" % value)
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def c_strings(values):
    return "{%s, NULL}" % ", ".join(c_string(v) for v in values)


def main():
    out = ["/* Made by packaging/launcher/settled_h.py from shim/: do not edit. */",
           "#ifndef SETTLED_H", "#define SETTLED_H", ""]

    def define(name, value, hexadecimal=False):
        if isinstance(value, (str, bytes)):
            value = c_string(value)
        elif hexadecimal:
            value = "0x%XU" % value
        out.append("#define %s %s" % (name, value))

    # Settings: their names (shim.config's constants), in shim.config.SETTINGS' order, and values.
    names = {value: attr for attr, value in vars(config).items() if attr.isupper() and isinstance(value, str) and value in config.SETTINGS}
    out.append("enum setting {")
    for name in config.SETTINGS:
        out.append("    SETTING_%s," % names[name])
    out.append("    SETTING_COUNT\n};")
    out.append("/* values: the allowed ones, or NULL for an absolute path (path_or_off: or `off`) */")
    out.append("static const struct setting_def {\n    const char *name;\n    const char *const *values;\n"
               "    int path_or_off;\n} SETTING_DEFS[SETTING_COUNT] = {")
    for name, (allowed, _) in config.SETTINGS.items():
        values = "(const char *const[])%s" % c_strings(allowed) if allowed else "NULL"
        out.append("    {%s, %s, %d}," % (c_string(name), values, int(name == config.SYSLOG)))
    out.append("};")
    define("CONFIG_FILE", config.CONFIG_FILE)
    define("CONFIG_ENV", config.CONFIG_ENV)
    define("TREE_CONFIG", config.TREE_CONFIG)
    define("CONFIG_MAX_FILE", config.MAX_FILE)
    define("SYSLOG_OFF", "off")
    define("CACHE_OFF", "off")
    define("FAST_ROUTE_OFF", "off")
    define("DEBUG_ON", "1")
    out.append("")
    # Names, PATH and the marks of a shim.
    out.append("static const char *const SHIM_NAMES[] = %s;" % c_strings(sorted(SHIM_NAMES)))
    out.append("#define SHIM_NAME_COUNT %d" % len(SHIM_NAMES))
    out.append("static const char *const ALIAS_ORDER[] = %s;" % c_strings(resolve.ALIAS_ORDER))
    out.append("#define ALIAS_COUNT %d" % len(resolve.ALIAS_ORDER))
    out.append("static const char *const BACKENDS[] = %s;" % c_strings(BACKENDS))
    out.append("static const char *const TOOL_SUFFIXES[] = %s;" % c_strings(TOOL_SUFFIXES))
    define("REENTRY_MARKER", binaries.REENTRY_MARKER)
    define("FROZEN_MARK", binaries.FROZEN_MARK)
    define("SHIM_MARK", binaries.SHIM_MARK)
    define("OLD_MULTI", binaries.OLD_MULTI)
    define("STATE_FILE", STATE_FILE)
    define("STATE_DIR", STATE_DIR)
    assert STATE_FILE.rpartition("/")[0] == STATE_DIR
    define("STATE_NAME", STATE_FILE.rpartition("/")[2])
    out.append("")
    # The caller's facts and the kernel's support, as Python reads them.
    define("PROC_PID_INIT_INO", context.PROC_PID_INIT_INO, hexadecimal=True)
    define("PROC_MNT_INIT_INO", context.PROC_MNT_INIT_INO, hexadecimal=True)
    define("CAP_NET_ADMIN", privilege.CAP_NET_ADMIN)
    define("SO_NETNS_COOKIE", netns.SO_NETNS_COOKIE)
    define("LEGACY_NAMES", "/" + kernel_support.LEGACY_NAMES["iptables"])
    define("NFT_MODULE", "nf_tables")
    out.append("")
    # The cache and the answers' texts.
    define("CACHE_DEFAULT_DIR", cache.DEFAULT_DIR)
    define("CACHE_MAX_ENTRY", cache.MAX_ENTRY)
    define("CACHE_KEY_COOKIE", cache.KEY_PREFIXES[0])
    assert netns.netns_key() is None or netns.netns_key().startswith(cache.KEY_PREFIXES[0])
    define("CACHEABLE_FIRST", min(policy.CACHEABLE_STEPS))
    define("CACHEABLE_LAST", max(policy.CACHEABLE_STEPS))
    assert list(policy.CACHEABLE_STEPS) == list(range(min(policy.CACHEABLE_STEPS), max(policy.CACHEABLE_STEPS) + 1))
    # The same name in C as in shim/, from the module that defines it.
    for module, names in ((policy, ("NO_PRIVILEGE_STEP", "OVERRIDE_STEP", "HOST_ALIAS_STEP", "NO_PRIVILEGE_REASON",
                                    "OVERRIDE_REASON", "HOST_ALIAS_REASON")),
                          (resolve, ("HOW_OVERRIDE", "HOW_CALLER", "HOW_CACHE_HIT")),
                          (log, ("LINE_FORMAT", "RECORD_FORMAT", "TIME_FORMAT", "MAX_LINE"))):
        for name in names:
            define(name, getattr(module, name))
    out += ["", "#endif", ""]
    sys.stdout.write("\n".join(out))


main()
