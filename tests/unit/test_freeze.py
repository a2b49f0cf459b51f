"""packaging/freeze.py: which modules go into the one executable (docs/images.md#one-file).

On a small made-up checkout and standard library, so each rule shows: the shim's own imports are
followed everywhere (function-level too), the standard library's only where its import runs them,
what the interpreter freezes or builds in is left out, and a module the shim imports that exists
nowhere fails the build."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "packaging"))
import freeze  # noqa: E402


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    repo, stdlib = tmp_path / "repo", tmp_path / "Lib"
    write(repo, "packaging/entry.py", "import sys\nfrom shim.main import main\n")
    write(repo, "shim/__init__.py", "")
    write(repo, "shim/main.py", "import posix\n\ndef main():\n    from shim import cli\n")
    write(repo, "shim/cli.py", "import json\n")
    write(stdlib, "json/__init__.py", "from .decoder import x\n\ndef f():\n    import unused_inside\n")
    write(stdlib, "json/decoder.py", "import re\ntry:\n    from _json import s\nexcept ImportError:\n    s = None\n")
    write(stdlib, "re.py", "import enum\n")
    write(stdlib, "enum.py", "")
    write(stdlib, "unused_inside.py", "")
    write(stdlib, "encodings/__init__.py", "import codecs\n")
    write(stdlib, "encodings/aliases.py", "")
    write(stdlib, "encodings/utf_8.py", "import codecs\n")
    monkeypatch.setattr(freeze, "ROOTS", [freeze.ENTRY, "encodings", "encodings.aliases", "encodings.utf_8"])
    return str(repo), str(stdlib)


def test_the_modules_a_call_can_import(checkout):
    modules, missing = freeze.collect(*checkout, frozen_already={"codecs"}, builtins={"posix", "sys", "_json"})
    assert missing == []
    assert sorted(modules) == ["encodings", "encodings.aliases", "encodings.utf_8", "enum", "iptables_shim_entry",
                               "json", "json.decoder", "re", "shim", "shim.cli", "shim.main"]
    # compressed: what no call of the six names imports (shim.cli, the verbs')
    assert sorted(set(modules) - freeze.call_modules(modules)) == ["enum", "json", "json.decoder", "re", "shim.cli"]


def test_a_module_the_shim_imports_that_exists_nowhere_fails_the_build(checkout, tmp_path):
    repo, stdlib = checkout
    write(tmp_path / "repo", "shim/cli.py", "import json\nimport _not_built_in\n")
    modules, missing = freeze.collect(repo, stdlib, frozen_already={"codecs"}, builtins={"posix", "sys", "_json"})
    assert missing == ["_not_built_in"]
    (tmp_path / "frozen").write_text("codecs\n")
    (tmp_path / "builtins").write_text("posix\nsys\n_json\n")
    with pytest.raises(SystemExit) as e:
        freeze.main(repo, stdlib, str(tmp_path / "frozen"), str(tmp_path / "builtins"), str(tmp_path / "f.c"),
                    str(tmp_path / "f.list"))
    assert "_not_built_in" in str(e.value) and "BUILTIN_MODULES" in str(e.value)


def test_a_call_s_modules_load_after_what_their_import_needs(checkout, tmp_path):
    repo, stdlib = checkout
    write(tmp_path / "repo", "shim/main.py", "from shim.facts import rules\nimport shim.tools\n")
    write(tmp_path / "repo", "shim/tools.py", "")
    write(tmp_path / "repo", "shim/facts/__init__.py", "")
    write(tmp_path / "repo", "shim/facts/rules.py", "from shim import tools\n\ndef f():\n    from shim import main\n")
    modules, _ = freeze.collect(repo, stdlib, frozen_already={"codecs"}, builtins={"posix", "sys", "_json"})
    names = freeze.call_modules(modules) - {freeze.ENTRY}
    order = freeze.load_order(modules, names)
    assert sorted(order) == sorted(names)
    assert order.index("shim") < order.index("shim.facts") < order.index("shim.facts.rules") < order.index("shim.main")
    assert order.index("shim.tools") < order.index("shim.facts.rules")  # a module-level import: before


def test_a_package_that_imports_its_own_module_loads_first(checkout, tmp_path):
    """As the upgraded shim of tests/test_upgrades.py does: shim/__init__.py imports shim.tools. A
    module loaded before its package would find no package to join (the entry's KeyError)."""
    repo, stdlib = checkout
    write(tmp_path / "repo", "shim/__init__.py", "from shim.tools import MARK\n")
    write(tmp_path / "repo", "shim/tools.py", "MARK = 2\n")
    write(tmp_path / "repo", "shim/main.py", "import shim.tools\n")
    modules, _ = freeze.collect(repo, stdlib, frozen_already={"codecs"}, builtins={"posix", "sys", "_json"})
    order = freeze.load_order(modules, freeze.call_modules(modules) - {freeze.ENTRY})
    assert order.index("shim") < order.index("shim.tools") < order.index("shim.main")
