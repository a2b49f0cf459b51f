"""Entry of the frozen iptables-shim: imported by the tree's executable (packaging/launcher/main.c),
dispatched on argv[0] like bin/iptables-shim.

The launcher puts nothing into the environment (no LD_LIBRARY_PATH, no PYTHON* variables: it
finds tree/lib from its own executable), so what the shim runs inherits the caller's environment
exactly. The shim's own identity, for loop protection and `install`, is the executable itself
(sys.executable), whatever link name it was called by.
"""

import sys

from shim.main import main

# The tree's own iptables-shim.conf (docs/configuration.md): an image carries its settings. Its
# directory is "/" for a tree at the root (/iptables-shim), whose file the C route reads too.
sys.exit(main(sys.argv, sys.executable, tree=sys.executable.rpartition("/")[0] or "/"))
