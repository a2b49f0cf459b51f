"""Entry of the frozen iptables-shim: one executable, dispatched on argv[0] like bin/iptables-shim.

PyInstaller's Linux bootloader re-executes itself once with LD_LIBRARY_PATH pointing into the
bundle and a few _PYI_* variables set. None of that may reach what the shim runs (the real
iptables, its save probes, a second copy of the shim), so it is undone here, before anything else.
The shim's own identity, for loop protection and `install`, is the executable itself
(sys.executable), whatever link name it was called by.
"""

import os
import sys

_PYI_VARS = ("_PYI_ARCHIVE_FILE", "_PYI_APPLICATION_HOME_DIR", "_PYI_PARENT_PROCESS_LEVEL",
             "_PYI_SPLASH_IPC", "_PYI_LINUX_PROCESS_NAME", "_MEIPASS2")


def restore_environment(environ):
    """Give back the caller's environment: LD_LIBRARY_PATH as it was, no bootloader markers."""
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        environ["LD_LIBRARY_PATH"] = original
    else:
        environ.pop("LD_LIBRARY_PATH", None)
    for name in _PYI_VARS:
        environ.pop(name, None)


if getattr(sys, "frozen", False):
    restore_environment(os.environ)

from shim.main import main  # noqa: E402

if getattr(sys, "frozen", False):
    # The tree's own iptables-shim.conf (README "Configuration"): an image carries its settings.
    sys.exit(main(sys.argv, sys.executable, tree=os.path.dirname(os.path.realpath(sys.executable))))
sys.exit(main(sys.argv, __file__))
