"""The shim's modules import one way (docs/layout.md): no cycle, counting the imports inside
functions too, which Python resolves late and so lets a cycle run until the day its order changes."""

import ast
import os

SHIM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shim")


def module_names(root=SHIM):
    """{dotted name: file} of every module of the package at `root`."""
    top = os.path.dirname(root)
    names = {}
    for directory, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(directory, f)
                parts = os.path.relpath(path, top)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                names[".".join(parts)] = path
    return names


def imported(name, path, modules):
    """The package's modules that `name` (in `path`) imports, at any depth of its body."""
    is_package = path.endswith("__init__.py")
    found = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from shim import cache` names a module; `from shim.config import LOG` a name in one.
            targets = [base + "." + a.name if base + "." + a.name in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import shim.facts.x.y`-style names: the module part
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root=SHIM):
    modules = module_names(root)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle as a list of names (first == last), or None."""
    state = {}
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = "done"
            elif state.get(child) == "open":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_shim_package_has_no_import_cycle():
    graph = import_graph()
    assert {"shim.resolve", "shim.execute"} <= graph["shim.main"]  # the parser sees imports at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_and_relative_imports_count(tmp_path):
    """The checker itself: a cycle closed only by an import inside a function, or by a relative
    import, is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("import pkg.sub.c\n")
    graph = import_graph(str(pkg))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.c"] == {"pkg.sub.d"} and graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": set(), "z": {"x"}}) is None
