"""The one place the shim hands over to a real binary."""

import posix  # not os: its import costs about a millisecond of every call (tests/test_hot_path.py)
import sys

from shim.facts.binaries import REENTRY_MARKER


def exec_real(path, argv, mark_reentry=None):
    """Replace this process with `path`: same PID, so exit codes and signals are the real binary's.

    argv[0] becomes the name of the resolved file (`iptables-nft-save`), which multi-call binaries
    dispatch on; argv[1:] and stdin pass untouched. `mark_reentry` (the shim's path) marks the
    environment when `path` could itself be a copy of the shim (a default alias), so that copy
    stops instead of looping."""
    if mark_reentry:
        posix.putenv(REENTRY_MARKER, mark_reentry)  # the C environment, which execv passes on
    if "_iptables_shim_route" not in sys.builtin_module_names:
        # The source shim: python3 ignored SIGPIPE and SIGXFSZ before the shim ran, keeping no
        # record of the caller's, and an ignored signal stays ignored across execv (`iptables-save
        # | head -1` would exit 0, not die of SIGPIPE). Back to the default, which nearly every
        # caller has (docs/decision.md#exec). The frozen tree's interpreter changed neither
        # (packaging/launcher/main.c): the caller's dispositions and mask pass as they are.
        import _signal  # not `signal`: that one imports enum, milliseconds on every call

        for name in ("SIGPIPE", "SIGXFSZ"):
            if hasattr(_signal, name):
                _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    # str arguments are encoded as Python decoded them (filesystem encoding, surrogateescape):
    # argv reaches the real binary byte for byte.
    posix.execv(path, [path.rpartition("/")[2]] + list(argv[1:]))
