"""The Python the frozen executable carries: the shim, its entry and exactly the standard library
modules they import, as marshalled bytecode in a C table for PyImport_FrozenModules (main.c).

    freeze.py REPO STDLIB INTERPRETER_FROZEN BUILTINS OUT.c OUT.modules

REPO: the checkout. STDLIB: the interpreter's Lib/. INTERPRETER_FROZEN: the names the interpreter
freezes already (Python/frozen.c's stdlib table: os, io, codecs, ... are not frozen twice).
BUILTINS: the C modules built into the executable (Modules/config.c). Writes the table's C source
and the list of what went in, one name a line (BUILDINFO and the SBOM name them).

Which modules (docs/images.md#one-file): every import in the shim's own code (function-level ones
too), and, in each standard library module so reached, the imports its import runs (module level,
in top-level try/if bodies; not those inside functions or classes, which modulefinder follows and
which put 456 modules into the old lib/). What a verb really imports is held by
tests/test_frozen_imports.py::test_every_import_is_frozen_in, which watches the executable's imports.
The build fails when the shim imports a module that is neither frozen in nor built in.

Reproducible: modules in sorted order, compiled by the build's python3.11 with a fixed hash seed
(build.sh sets PYTHONHASHSEED=0), file names relative to the checkout or Lib/, no time inside.
"""

import ast
import functools
import marshal
import os
import sys
import zlib

# The source shim's fallbacks where the frozen tree's builtin _iptables_shim is missing (a plain
# python3): never reached in the executable, which has that module.
SOURCE_ONLY = {"ctypes", "_ctypes"}
LAUNCHER_MODULES = {"_iptables_shim_route"}  # main.c's own builtin (PyImport_AppendInittab)
ENTRY = "iptables_shim_entry"  # packaging/entry.py, as main.c imports it
ROOTS = [ENTRY, "shim.cli", "shim.doctor", "shim.install", "shim.gather", "encodings", "encodings.aliases",
         "encodings.utf_8"]  # encodings: imported by the interpreter's start itself (utf-8 mode)
# What a call of the six names imports (the start, a cache hit, a netns's first call: the shim's own
# modules it reaches, function-level imports too, and the module-level imports of everything so
# reached; tests/test_hot_path.py) is stored as it is. Every other module (the verbs', and the
# standard library a *-save probe or a compressed /proc/config.gz needs) is stored compressed and
# inflated when imported: a third of its size, for about a millisecond where imported
# (docs/images.md#one-file).
CALL_ROOTS = [ENTRY, "shim.main", "shim.gather", "encodings", "encodings.aliases", "encodings.utf_8"]
VERBS = {"shim.cli", "shim.doctor", "shim.install"}  # `iptables-shim explain | doctor | install`


def imports_of(tree, package, own):
    """Absolute names an import of this module may run: all of them in the shim's own code, the
    module-level ones elsewhere."""
    names = []

    def absolute(node):
        if not node.level:
            return node.module or ""
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = absolute(node)
                names.append(base)
                names.extend(base + "." + a.name for a in node.names if a.name != "*")
            if own:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt) or isinstance(child, ast.excepthandler):
                        visit([child] if isinstance(child, ast.stmt) else child.body)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return names


@functools.lru_cache(maxsize=None)
def syntax_of(path):
    """A module's source parsed, once per build: collect, call_modules and load_order all read it."""
    with open(path, "rb") as f:
        return ast.parse(f.read(), path)


def source_of(name, repo, stdlib):
    """(path, is_package, file name inside the executable) of a module's source, else None."""
    if name == ENTRY:
        return os.path.join(repo, "packaging", "entry.py"), False, "iptables_shim_entry.py"
    rel = name.replace(".", "/")
    base = repo if name == "shim" or name.startswith("shim.") else stdlib
    for path, package in ((os.path.join(base, rel, "__init__.py"), True), (os.path.join(base, rel + ".py"), False)):
        if os.path.isfile(path):
            return path, package, os.path.relpath(path, base)
    return None


def is_own(name):
    return name == ENTRY or name == "shim" or name.startswith("shim.")


def collect(repo, stdlib, frozen_already, builtins):
    """({name: (path, is_package, file name)} to freeze, [what the shim imports that exists nowhere])."""
    modules, builtins = {}, set(builtins) | LAUNCHER_MODULES
    todo, missing = [(name, True) for name in ROOTS], set()  # (name, imported by the shim's own code)
    while todo:
        name, by_shim = todo.pop()
        if name in modules or name in frozen_already or name in builtins or name in SOURCE_ONLY:
            continue
        found = source_of(name, repo, stdlib)
        if not found:
            if by_shim:
                missing.add(name)
            continue
        modules[name] = found
        path, package = found[0], found[1]
        if "." in name:
            todo.append((name.rpartition(".")[0], by_shim))
        tree = syntax_of(path)
        own = is_own(name)
        todo.extend((imported, own) for imported in imports_of(tree, name if package else name.rpartition(".")[0], own)
                    if imported)
    # `from package import name` names attributes too: only a missing module counts.
    known = set(modules) | builtins | set(frozen_already)
    return modules, sorted(m for m in missing if m.rpartition(".")[0] not in known)


def call_modules(modules):
    """The modules a call of the six names may import (CALL_ROOTS and what they reach)."""
    seen, todo = set(), list(CALL_ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules or name in VERBS:
            continue
        seen.add(name)
        path, package = modules[name][:2]
        tree = syntax_of(path)
        package = name if package else name.rpartition(".")[0]
        todo.extend(imports_of(tree, package, False))
        todo.extend(n for n in imports_of(tree, package, True) if n == "shim" or n.startswith("shim."))
        if "." in name:
            todo.append(name.rpartition(".")[0])
    return seen


# Where a module is stored compressed, its get_code inflates it (zlib, built in) and unmarshals it.
INFLATE = """#include <zlib.h>

static PyObject *inflated(const unsigned char *data, size_t size, size_t raw_size)
{
    unsigned char *raw = PyMem_Malloc(raw_size);
    if (!raw)
        return PyErr_NoMemory();
    uLongf len = (uLongf)raw_size;
    PyObject *code = NULL;
    if (uncompress(raw, &len, data, (uLong)size) == Z_OK && len == raw_size)
        code = PyMarshal_ReadObjectFromString((const char *)raw, (Py_ssize_t)len);
    else
        PyErr_SetString(PyExc_ImportError, "a frozen module does not inflate: the executable is damaged");
    PyMem_Free(raw);
    return code;
}
"""


def load_order(modules, names):
    """`names` in an order in which each comes after its package and after the modules its import
    runs (at module level): the executable loads a call's modules in this order before the call
    imports any, each with one C call instead of the import system's Python (packaging/entry.py)."""
    order, seen = {}, set()  # order: the loaded ones, in order (a dict keeps insertion order)

    def visit(name):
        if name in seen or name not in names:
            return
        parent = name.rpartition(".")[0]
        if parent:
            visit(parent)
            if parent in names and parent not in order:
                return  # its package's own import imports it (a package that imports its module)
        seen.add(name)
        path, package = modules[name][:2]
        for imported in imports_of(syntax_of(path), name if package else parent, False):
            visit(imported)
        order[name] = None

    for name in sorted(names):
        visit(name)
    return list(order)


def c_array(data):
    rows = []
    for i in range(0, len(data), 24):
        rows.append("    " + "".join("%d," % b for b in data[i:i + 24]))
    return "\n".join(rows)


def main(repo, stdlib, frozen_file, builtins_file, out_c, out_list):
    frozen_already = set(open(frozen_file).read().split())
    builtins = set(open(builtins_file).read().split())
    modules, missing = collect(repo, stdlib, frozen_already, builtins)
    if missing:
        sys.exit("freeze.py: the shim imports %s, which is neither in the standard library nor built into "
                 "the executable: add the C module to BUILTIN_MODULES in packaging/build.sh"
                 % ", ".join(sorted(set(missing))))
    parts = ['#include "Python.h"', '#include "marshal.h"', INFLATE]
    table = []
    hot = call_modules(modules)
    for i, name in enumerate(sorted(modules)):
        path, package, filename = modules[name]
        with open(path, "rb") as f:
            code = compile(f.read(), filename, "exec", dont_inherit=True, optimize=2)
        data = marshal.dumps(code)
        get_code = "NULL"
        if name not in hot:
            raw, data = len(data), zlib.compress(data, 9)
            get_code = "get_code_%d" % i
        parts.append("static const unsigned char module_%d[%d] = { /* %s */\n%s\n};" % (i, len(data), name, c_array(data)))
        if get_code != "NULL":
            parts.append("static PyObject *%s(void) { return inflated(module_%d, %d, %d); }" % (get_code, i, len(data), raw))
        table.append('    {"%s", module_%d, %d, %d, %s},' % (name, i, len(data), int(package), get_code))
    parts.append("")
    parts.append("const char *const iptables_shim_call_modules[] = {")
    parts.extend('    "%s",' % name for name in load_order(modules, hot - {ENTRY}))
    parts.append("    NULL,")
    parts.append("};")
    parts.append("const struct _frozen iptables_shim_frozen_modules[] = {")
    parts.extend(table)
    parts.append("    {NULL, NULL, 0, 0, NULL},")
    parts.append("};")
    with open(out_c, "w") as f:
        f.write("\n".join(parts) + "\n")
    with open(out_list, "w") as f:
        f.write("".join(name + "\n" for name in sorted(modules)))
    print(len(modules))


if __name__ == "__main__":
    main(*sys.argv[1:])
