"""Settings: the environment, then /etc/iptables-shim.conf, then a file beside a frozen tree.

Callers such as conmon, sudo, systemd units, ufw-init and netfilter-persistent reset the
environment, and a setting must hold for every call of a netns (docs/configuration.md): the file
holds the same names as the environment, in lines NAME=VALUE, `#` comments on a line of their own
or after a value (after a space or tab, outside the value's quotes). It is trusted only when
root-owned and not group- or world-writable; anything else is one clear error, nothing executed.

Read on every call (an override must beat the cache): the builtin posix module, one open() that
fails with ENOENT where there is no file, a few microseconds.
"""

import posix
import stat

from shim.errors import ShimError
from shim.tools import BACKENDS, CONTEXTS

CONFIG_FILE = "/etc/iptables-shim.conf"
TREE_CONFIG = "iptables-shim.conf"  # beside a frozen tree's executable: an image carries its own
CONFIG_ENV = "IPTABLES_SHIM_CONFIG"  # the environment only: another file instead of /etc's (tests)
MAX_FILE = 65536

MODE = "IPTABLES_SHIM_MODE"
CONTEXT = "IPTABLES_SHIM_CONTEXT"
CACHE = "IPTABLES_SHIM_CACHE"
CACHE_DIR = "IPTABLES_SHIM_CACHE_DIR"
LOG = "IPTABLES_SHIM_LOG"
SYSLOG = "IPTABLES_SHIM_SYSLOG_SOCKET"
DEBUG = "IPTABLES_SHIM_DEBUG"
FAST_ROUTE = "IPTABLES_SHIM_FAST_ROUTE"  # the frozen launcher's C route (docs/configuration.md)

# name: (allowed values or None for a path, what to say when the value is wrong)
SETTINGS = {
    MODE: (BACKENDS, "not a backend: set it to nft or legacy, or unset it"),
    CONTEXT: (CONTEXTS, "not a context: set it to host or container, or unset it"),
    CACHE: (("on", "off"), "not a cache setting: set it to on or off, or unset it"),
    CACHE_DIR: (None, "not an absolute path"),
    LOG: (None, "not an absolute path"),
    SYSLOG: (None, "not an absolute path (the system log socket; `off` disables it)"),
    DEBUG: (("0", "1"), "not 0 or 1"),
    FAST_ROUTE: (("on", "off"), "not a route setting: set it to on or off, or unset it"),
}


def check(name, value):
    """None if `value` is valid for `name`, else what is wrong with it."""
    allowed, wrong = SETTINGS[name]
    if allowed is None:
        ok = value.startswith("/") or (name == SYSLOG and value == "off")
    else:
        ok = value in allowed
    return None if ok else wrong


def read_file(path):
    """{name: value} from one configuration file; {} when it does not exist."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ShimError("cannot read %s: %s; fix or remove it" % (path, e.strerror))
    try:
        st = posix.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ShimError("%s is not a regular file: remove it" % path)
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ShimError(
                "%s is not trusted (it must be owned by root and not writable by group or others: "
                "chown root %s; chmod go-w %s); nothing was run" % (path, path, path)
            )
        data = posix.read(fd, MAX_FILE + 1)
    finally:
        posix.close(fd)
    if len(data) > MAX_FILE:
        raise ShimError("%s is larger than %d bytes: not a configuration file" % (path, MAX_FILE))
    return parse(data, path)


def value(text):
    """The value in `text`, what follows a line's `=`: up to a comment (a `#` after a space or tab,
    outside the quotes that open the value), stripped, without its one pair of quotes. Operators
    write `NAME=VALUE   # why`, as in /etc/default files and docs/configuration.md's example; a
    value never holds " #" unless quoted (the frozen launcher's C route reads it alike: route.c
    cut_comment)."""
    start = len(text) - len(text.lstrip())
    quote = text[start:start + 1]
    if quote in ("'", '"'):
        close = text.find(quote, start + 1)
        if close > 0:
            start = close + 1
    for i in range(max(start, 1), len(text)):
        if text[i] == "#" and text[i - 1] in " \t":
            text = text[:i]
            break
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def parse(data, path):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ShimError("%s is not UTF-8 text" % path)
    values = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, rest = line.partition("=")
        name = name.strip()
        where = "%s line %d" % (path, number)
        if not eq:
            raise ShimError("%s: %r is not NAME=VALUE" % (where, line))
        if name not in SETTINGS:
            raise ShimError("%s: unknown setting %r (known: %s)" % (where, name, ", ".join(sorted(SETTINGS))))
        v = value(rest)
        wrong = check(name, v) if v else None
        if wrong:
            raise ShimError("%s: %s=%r is %s" % (where, name, v, wrong))
        if v:
            values[name] = v
    return values


def load_settings(environ, tree=None):
    """{name: value} of every setting that is set: the environment first, then the configuration
    file (IPTABLES_SHIM_CONFIG or /etc/iptables-shim.conf), then `tree`/iptables-shim.conf. An empty
    environment value counts as unset. Plus PATH, the caller's own (never from a file): what a
    resolution searches."""
    settings = {"PATH": environ.get("PATH")}
    files = [environ.get(CONFIG_ENV) or CONFIG_FILE]
    if tree:  # "/" for a tree at the root: /iptables-shim.conf, as the C route reads it
        files.append(tree.rstrip("/") + "/" + TREE_CONFIG)
    for path in reversed(files):
        settings.update(read_file(path))
    for name in SETTINGS:
        value = environ.get(name)
        if value:
            wrong = check(name, value)
            if wrong:
                raise ShimError("%s=%r is %s" % (name, value, wrong))
            settings[name] = value
    return settings
