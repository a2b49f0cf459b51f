"""The one place the shim hands over to a real binary."""

import posix  # not os: its import costs about a millisecond of every call (tests/test_hot_path.py)

from shim.facts.binaries import REENTRY_MARKER


def exec_real(path, argv, mark_reentry=None):
    """Replace this process with `path`: same PID, so exit codes and signals are the real binary's.

    argv[0] becomes the name of the resolved file (`iptables-nft-save`), which multi-call binaries
    dispatch on; argv[1:] and stdin pass untouched. `mark_reentry` (the shim's path) marks the
    environment when `path` could itself be a copy of the shim (a default alias), so that copy
    stops instead of looping."""
    if mark_reentry:
        posix.putenv(REENTRY_MARKER, mark_reentry)  # the C environment, which execv passes on
    # Python ignores SIGPIPE and SIGXFSZ at startup, and an ignored signal stays ignored across
    # execv: `iptables-save | head -1` would exit 0 instead of dying of SIGPIPE (141) as it does
    # when called directly. Restore the defaults, as subprocess does for its children.
    import _signal  # not `signal`: that one imports enum, milliseconds on every call

    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    # str arguments are encoded as Python decoded them (filesystem encoding, surrogateescape):
    # argv reaches the real binary byte for byte.
    posix.execv(path, [path.rpartition("/")[2]] + list(argv[1:]))
