"""The one place the shim hands over to a real binary."""

import os

from shim.facts.binaries import REENTRY_MARKER


def exec_real(path, argv, caller=None):
    """Replace this process with `path`: same PID, so exit codes and signals are the real binary's.

    argv[0] becomes the name of the resolved file (`iptables-nft-save`), which multi-call binaries
    dispatch on; argv[1:] and stdin pass untouched. `caller` marks the environment when `path` could
    itself be a copy of the shim (a default alias), so that copy stops instead of looping."""
    if caller:
        os.environ[REENTRY_MARKER] = caller
    # Python ignores SIGPIPE and SIGXFSZ at startup, and an ignored signal stays ignored across
    # execv: `iptables-save | head -1` would exit 0 instead of dying of SIGPIPE (141) as it does
    # when called directly. Restore the defaults, as subprocess does for its children.
    import _signal  # not `signal`: that one imports enum, milliseconds on every call

    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    os.execv(path, [os.path.basename(path)] + list(argv[1:]))
