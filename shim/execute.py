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
    os.execv(path, [os.path.basename(path)] + list(argv[1:]))
