"""name -> facts -> decision -> exec, for one call of a shimmed name.

The hot path (a cache hit, or an answer from the caller's own facts) imports only this module,
config, resolve, cache, netns, binaries, context, privilege, policy and execute (and log where a
log file is set), all on the
builtin posix module rather than os (about a millisecond a call: tests/test_hot_path.py). The
fact gathering in shim.gather is imported on the cold path only.

This module owns the process: its environment (environment()) and the entry (main()). shim.cli,
the `iptables-shim` verbs, is handed the environment and imports nothing from here, so the
imports run one way (tests/unit/test_imports.py).
"""

import posix
import sys

from shim import cache
from shim.config import DEBUG, LOG, SYSLOG, load_settings
from shim.errors import ShimError
from shim.execute import exec_real
from shim.facts.binaries import REENTRY_MARKER, is_multicall_binary
from shim.resolve import resolve
from shim.tools import CLI_NAME, SHIM_NAMES


def answer(name, environ, shim_path, tree=None):
    """(Resolution, settings) of a call of `name`, before anything is stored, logged or run;
    ShimError when nothing can run. The frozen launcher's C route must give this same answer
    where it answers (tests/test_fast_route_generated.py compares them)."""
    started_by = environ.get(REENTRY_MARKER)
    if started_by:
        raise ShimError(
            "%s was started again by the shim at %s, through a copy of the shim or an iptables alias "
            "that calls iptables via PATH: keep one shim directory on PATH, and real binaries after it"
            % (shim_path, started_by)
        )
    settings = load_settings(environ, tree)
    r = resolve(name, settings, shim_path)
    if r.error:
        raise ShimError(r.error)
    return r, settings


def reentry_mark(r, shim_path):
    """The re-entry mark's value for the exec of r.binary, or None. The default alias could be a
    script calling iptables through PATH, back into the shim: marked, unless it is iptables' own
    binary (then the caller's environment passes as is)."""
    alias = r.binary == r.found.get(r.name) and not is_multicall_binary(r.binary)
    return shim_path if alias else None


def run_tool(name, argv, environ, shim_path, tree=None):
    r, settings = answer(name, environ, shim_path, tree)
    if r.store:  # only now: a call that cannot run (a broken PATH) must not decide for later ones
        if cache.store(r.store[0], r.store[1], r.decision.backend, r.decision.step, r.decision.reason):
            r.how = "cached in %s/%s" % r.store
        else:
            r.how = "cache %s unusable, not cached" % r.store[0]
    report(r, settings)
    try:
        exec_real(r.binary, argv, mark_reentry=reentry_mark(r, shim_path))
    except OSError as e:
        raise ShimError("cannot execute %s: %s" % (r.binary, e.strerror))


def call_line(r):
    """The call's line (shim.log.format_line), with the netns's key asked only now where the
    answer did not need it (step 0, 2, override)."""
    from shim import log

    if r.cache_key is None and r.cache_dir:
        from shim.facts.netns import netns_key

        r.cache_key = netns_key()
    return log.format_line(r.name, r.binary, r.decision, r.how, r.cache_key)


def launcher_logged(log_path, line):
    """Whether the frozen launcher's C route already wrote this very line to this log file for this
    call: it logs before its execv, and an execv that fails (ENOEXEC, a binary removed) hands the
    call to Python in the same process, which decides again. One call, one line
    (docs/decision.md#two-routes)."""
    if "_iptables_shim_route" not in sys.builtin_module_names:
        return False  # the source shim: no launcher
    import _iptables_shim_route

    return _iptables_shim_route.logged() == (log_path, line)


def report(r, settings):
    """The call in the log file, a new decision in the system log; stderr only on request
    (IPTABLES_SHIM_DEBUG=1, interactive use: it breaks callers that parse stderr)."""
    log_path, debug = settings.get(LOG), settings.get(DEBUG) == "1"
    new = r.source in ("facts", "memory") and r.decision.step not in (0, 2)
    if not (log_path or debug or new):
        return  # a cache hit without a log file: shim.log is not even imported
    from shim import log

    line = call_line(r)
    if log_path and not launcher_logged(log_path, line):
        log.append(log_path, line)
    if new:
        log.syslog("%s; caller: %s" % (line, log.caller_command()), settings.get(SYSLOG) or log.SYSLOG_SOCKET)
    if debug:
        sys.stderr.write("iptables-shim: %s\n" % line)
        sys.stderr.flush()


def environment():
    """The environment as str, decoded as os.environ decodes it (which would import os). A copy:
    what the shim's children must see is set with posix.putenv (exec_real)."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape")
            for k, v in posix.environ.items()}


def main(argv, shim_path, tree=None):
    """Entry point of every name; returns an exit code only when nothing was executed. `tree`: the
    directory of a frozen build, whose iptables-shim.conf applies too."""
    name = argv[0].rpartition("/")[2]
    try:
        if name == CLI_NAME:
            from shim.cli import run

            return run(argv[1:], environment(), shim_path, tree)
        if name not in SHIM_NAMES:
            raise ShimError(
                "called as %r, which is not a name the shim serves (%s)"
                % (name, ", ".join(sorted(SHIM_NAMES)))
            )
        return run_tool(name, argv, environment(), shim_path, tree)
    except ShimError as e:
        sys.stderr.write("iptables-shim: %s\n" % e)
        return e.exit_code
