"""Entry of the frozen iptables-shim: imported by the tree's executable (packaging/launcher/main.c)
once its Python has started, dispatched on argv[0] like bin/iptables-shim.

The launcher puts nothing into the environment (no LD_LIBRARY_PATH, no PYTHON* variables), so
what the shim runs inherits the caller's environment exactly. The shim's own identity, for loop
protection and `install`, is the executable itself (sys.executable), whatever link name it was
called by.

Guarded: an executable that is damaged (a frozen module that does not inflate or unmarshal) gives
one `iptables-shim:` line and 127, never a traceback on the caller's stderr (SPEC "Errors";
tests/test_damaged_tree.py); the traceback only with IPTABLES_SHIM_DEBUG=1, for whoever debugs
it. Out of memory is said as such, not as damage
(tests/test_frozen_situations.py::test_an_address_space_limit_is_named).
"""

import posix
import sys


class NotFrozenIn(object):
    """Last on sys.meta_path, after the builtin and frozen importers (the only ones: the executable
    has no module search path): reached only by an import that the executable cannot answer. With
    IPTABLES_SHIM_DEBUG=1 it says so on stderr, which
    tests/test_frozen_imports.py::test_every_import_is_frozen_in watches on every verb; the import
    then fails as it would have anyway."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if posix.environ.get(b"IPTABLES_SHIM_DEBUG") == b"1":
            sys.stderr.write("iptables-shim: import of %s: not in the executable\n" % name)
        return None


def load_call_modules():
    """Load the modules a call of the six names imports, before it imports them: the call Python
    answers is nearly always a netns's first (the C route answers the rest), which imports all of
    them. One C call each (the frozen importer's own, _imp.init_frozen) in an order where a module's
    imports find theirs loaded, instead of the import system's Python: 4% of a first call's
    instructions (docs/images.md#one-file)."""
    import _imp

    from _iptables_shim_route import CALL_MODULES

    modules = sys.modules
    for name in CALL_MODULES:
        if name not in modules:
            _imp.init_frozen(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(modules[parent], child, modules[name])


def start():
    sys.meta_path.append(NotFrozenIn)  # first: the watch sees every import after it
    # main.c starts Python with the cyclic collector off, for a call of the six names ends in
    # execv within milliseconds; the iptables-shim verbs (doctor audits a node) turn it on.
    if sys.argv[0].rpartition("/")[2] == "iptables-shim":
        import gc

        gc.enable()
    else:
        load_call_modules()
    from shim.main import main

    # The tree's own iptables-shim.conf (docs/configuration.md): an image carries its settings.
    # Its directory is "/" for a tree at the root (/iptables-shim), whose file the C route reads too.
    sys.exit(main(sys.argv, sys.executable, tree=sys.executable.rpartition("/")[0] or "/"))


try:
    start()
except SystemExit:
    raise
except MemoryError:
    sys.stderr.write("iptables-shim: out of memory (an address-space limit, ulimit -v?); nothing was run\n")
    sys.exit(127)
except BaseException as e:
    if posix.environ.get(b"IPTABLES_SHIM_DEBUG") == b"1":
        sys.excepthook(type(e), e, e.__traceback__)
    what = " ".join(("%s: %s" % (type(e).__name__, e)).split())[:300]
    sys.stderr.write(
        "iptables-shim: the shim at %s is damaged or half-replaced (%s); nothing was run: reinstall it "
        "(apt-get install --reinstall iptables-shim, or copy the tree again)\n"
        % (sys.executable.rpartition("/")[0] or "/", what)
    )
    sys.exit(127)
