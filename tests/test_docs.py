"""What the documentation cites exists: every test (`tests/test_x.py::test_name`, `test_x.py::...`,
with or without `[param]`), every file path (shim/..., tests/..., packaging/..., docs/...), every
link to a section (`docs/x.md#anchor`) and every `README "Section"` mention, in README.md and
docs/*.md, and the same kinds of citation in the code's comments. No root, no kernel: a second.

A doc that names a test proves nothing once the test is renamed; these checks make the rename
fail here instead (test_a_stale_reference_of_each_kind_is_reported shows each kind failing).
"""

import ast
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))

ROOTS = ("shim", "tests", "packaging", "bench", ".ci", "deploy", "docs", "bin")
_NOT_PART = r"(?<![\w/.$~-])"  # `/opt/iptables-shim/...`, `$PWD/bin`: not a path of the checkout
TEST_REF = re.compile(_NOT_PART + r"((?:[\w.-]+/)*test_\w+\.py)::(test_\w+)(?:\[([^\]\n]*)\])?")
PATH_REF = re.compile(_NOT_PART + r"((?:%s)/[\w./*{},-]*)" % "|".join(re.escape(r) for r in ROOTS))
BARE_TEST_FILE = re.compile(_NOT_PART + r"(test_\w+\.py)(?!::)")
BARE_TEST_NAME = re.compile(r"`(test_\w+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOC_ANCHOR = re.compile(_NOT_PART + r"((?:docs/)?[\w-]+\.md)#([\w-]+)")
README_SECTION = re.compile(r"README\s+\"([^\"]+)\"")


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


# -- what exists -------------------------------------------------------------------------------

def collect_tests():
    """{relative path of a test module: its test function names} and {basename: [paths]}."""
    tests, by_name = {}, {}
    for path in glob.glob(os.path.join(REPO, "tests", "**", "test_*.py"), recursive=True):
        rel = os.path.relpath(path, REPO)
        tree = ast.parse(read(rel), rel)
        names = {n.name for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")}
        tests[rel] = names
        by_name.setdefault(os.path.basename(rel), []).append(rel)
    return tests, by_name


TESTS, TESTS_BY_NAME = collect_tests()


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def headings(text):
    """The headings of a Markdown text, outside fenced code (a `# comment` in a shell block is none)."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchors(text):
    seen, out = {}, set()
    for h in headings(text):
        s = slug(h)
        out.add(s if s not in seen else "%s-%d" % (s, seen[s]))
        seen[s] = seen.get(s, 0) + 1
    return out


def exists(rel):
    if any(c in rel for c in "*{"):
        return bool(glob.glob(os.path.join(REPO, re.sub(r"\{[^}]*\}", "*", rel))))
    return os.path.exists(os.path.join(REPO, rel))


# -- what is cited --------------------------------------------------------------------------------

def stale(text, source):
    """Every citation in `text` (the contents of `source`, a path relative to the checkout) that
    names nothing: [(citation, why)]."""
    problems = []
    here = os.path.dirname(source)

    for m in TEST_REF.finditer(text):
        file_part, name, params = m.groups()
        candidates = [file_part] if file_part in TESTS else TESTS_BY_NAME.get(os.path.basename(file_part), [])
        if "/" in file_part and file_part not in TESTS:
            candidates = []
        if not candidates:
            problems.append((m.group(0), "no test module %s" % file_part))
            continue
        defining = [c for c in candidates if name in TESTS[c]]
        if not defining:
            problems.append((m.group(0), "no %s in %s" % (name, ", ".join(candidates))))
            continue
        # pytest names a parametrized case test_name[id]: each id named must be written in the module
        # (its parametrize list or ids, or a fixture's params), `...` standing for any.
        for param in re.split(r"\\?\|", params or ""):
            param = param.strip()
            if param and param != "...":
                sources = "".join(read(c) for c in defining) + read("tests/conftest.py")
                if not any(part in sources for part in (param, repr(param), param.replace("-", "_"))):
                    problems.append((m.group(0), "no parameter %r in %s" % (param, defining[0])))

    for m in PATH_REF.finditer(text):
        rel = m.group(1).rstrip(".,:;")
        if text.startswith("::", m.end(1)):
            continue  # a test: checked above
        if not exists(rel):
            problems.append((rel, "no such file or directory in the checkout"))

    for m in BARE_TEST_FILE.finditer(text):
        if m.group(1) not in TESTS_BY_NAME and not exists(os.path.join(here, m.group(1))):
            problems.append((m.group(1), "no such test module"))

    all_tests = set().union(*TESTS.values())
    modules = {os.path.basename(p)[:-3] for p in TESTS}
    for m in BARE_TEST_NAME.finditer(text):
        if m.group(1) not in all_tests and m.group(1) not in modules:
            problems.append((m.group(1), "no test of that name"))

    targets = [(t, "link") for t in LINK.findall(text)]
    targets += [("%s#%s" % m.groups(), "section") for m in DOC_ANCHOR.finditer(text)]
    for target, kind in targets:
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        if kind == "link":
            rel = os.path.normpath(os.path.join(here, path)) if path else source
        else:
            rel = path if "/" in path else os.path.normpath(os.path.join(here, path))
            if not os.path.exists(os.path.join(REPO, rel)) and os.path.exists(os.path.join(REPO, "docs", path)):
                rel = os.path.join("docs", path)
        if not exists(rel):
            problems.append((target, "no such file"))
        elif anchor and rel.endswith(".md") and os.path.exists(os.path.join(REPO, rel)) \
                and anchor not in anchors(read(rel)):
            problems.append((target, "no section #%s in %s" % (anchor, rel)))

    readme = anchors(read("README.md"))
    for m in README_SECTION.finditer(text):
        if slug(re.sub(r"\s+", " ", m.group(1))) not in readme:
            problems.append((m.group(0), "no such section in README.md"))
    once = {}
    for citation, why in problems:  # a path cited in a link is matched twice
        once.setdefault(citation, why)
    return list(once.items())


@pytest.mark.parametrize("doc", DOCS)
def test_every_citation_in_the_docs_exists(doc):
    assert stale(read(doc), doc) == []


def code_files():
    out = []
    for root in ("shim", "tests", "packaging", "bench", "bin", ".ci", "deploy"):
        for directory, _, files in os.walk(os.path.join(REPO, root)):
            if "__pycache__" in directory or "fixtures" in directory:
                continue
            for f in files:
                rel = os.path.relpath(os.path.join(directory, f), REPO)
                if rel != "tests/test_docs.py" and (f.endswith((".py", ".sh", ".md")) or "." not in f):
                    out.append(rel)
    return sorted(out)


def test_the_codes_citations_of_the_docs_exist():
    """Comments and docstrings cite docs sections (`docs/kernels.md`, `README "..."`) too."""
    problems = []
    for rel in code_files():
        try:
            text = read(rel)
        except (UnicodeDecodeError, OSError):
            continue
        cited = [(c, why) for c, why in stale(text, rel)
                 if c.startswith(("docs/", "README")) or "no section" in why]
        problems += ["%s: %s (%s)" % (rel, c, why) for c, why in cited]
    assert problems == []


# -- the checker itself ------------------------------------------------------------------------------

def test_a_stale_reference_of_each_kind_is_reported():
    text = """
`tests/test_cache.py::test_first_call_writes_one_entry_and_the_second_reuses_it_without_probing` is right;
`tests/test_cache.py::test_renamed_long_ago`, `test_nowhere.py::test_x`, `tests/unit/test_gone.py::test_y`,
`test_load.py::test_n_concurrent_appends_lose_nothing[nft\\|iptables-9]`, `shim/facts/gone.py`,
`test_timing_was_never_written`, [the cache](docs/decision.md#kache), [gone](docs/nothing.md),
docs/kernels.md#vm-figure, README "How it decides", `test_vanished.py`.
"""
    cited = [c for c, _ in stale(text, "README.md")]
    assert cited == [
        "tests/test_cache.py::test_renamed_long_ago",
        "test_nowhere.py::test_x",
        "tests/unit/test_gone.py::test_y",
        "test_load.py::test_n_concurrent_appends_lose_nothing[nft\\|iptables-9]",
        "shim/facts/gone.py",
        "docs/nothing.md",
        "test_vanished.py",
        "test_timing_was_never_written",
        "docs/decision.md#kache",
        "docs/kernels.md#vm-figure",
        'README "How it decides"',
    ]
    right = """`test_load.py::test_n_concurrent_appends_lose_nothing[nft\\|legacy]`, `tests/unit/`,
[x](docs/decision.md#kernels-without-a-netns-cookie), `test_timing_is_reported`, `/opt/iptables-shim/bin/x`,
`$PWD/bin/iptables`, [the docs](#documentation), `tests/test_faults.py::test_refused_probe_answers_right_or_stops[...]`,
docs/kernels.md#vm-figures"""
    assert stale(right, "README.md") == []
    assert stale("[up](../README.md#documentation), [there](kernels.md#vm-figures)", "docs/x.md") == []


def test_anchors_are_githubs():
    assert slug("Kernels without a netns cookie") == "kernels-without-a-netns-cookie"
    assert slug("Auditing a node: doctor") == "auditing-a-node-doctor"
    assert slug("Images and the frozen tree (no Python needed)") == "images-and-the-frozen-tree-no-python-needed"
    assert slug("`install` and [uninstall](x.md)") == "install-and-uninstall"
    assert anchors("# A\n```sh\n# not a heading\n```\n## A\n") == {"a", "a-1"}
