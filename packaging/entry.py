"""Entry of the frozen iptables-shim: imported by the tree's executable (packaging/launcher/main.c),
dispatched on argv[0] like bin/iptables-shim.

The launcher puts nothing into the environment (no LD_LIBRARY_PATH, no PYTHON* variables: it
finds tree/lib from its own executable), so what the shim runs inherits the caller's environment
exactly. The shim's own identity, for loop protection and `install`, is the executable itself
(sys.executable), whatever link name it was called by.
"""

import gc
import posix
import sys

# A call of one of the six names ends in execv within milliseconds: the cyclic collector would only
# walk the objects the imports just made. The iptables-shim verbs (doctor audits a node) keep it.
if sys.argv[0].rpartition("/")[2] != "iptables-shim":
    gc.disable()


class NotFrozenIn(object):
    """Last on sys.meta_path, after the builtin and frozen importers (sys.path is empty): reached
    only by an import that the executable cannot answer. With IPTABLES_SHIM_DEBUG=1 it says so on
    stderr, which tests/test_frozen_imports.py::test_every_import_is_frozen_in watches on every verb;
    the import then fails as it would have anyway."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if posix.environ.get(b"IPTABLES_SHIM_DEBUG") == b"1":
            sys.stderr.write("iptables-shim: import of %s: not in the executable\n" % name)
        return None


sys.meta_path.append(NotFrozenIn)

from shim.main import main  # noqa: E402 (after the watch, which sees its imports too)

# The tree's own iptables-shim.conf (docs/configuration.md): an image carries its settings. Its
# directory is "/" for a tree at the root (/iptables-shim), whose file the C route reads too.
sys.exit(main(sys.argv, sys.executable, tree=sys.executable.rpartition("/")[0] or "/"))
