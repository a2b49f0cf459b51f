"""Every example in README.md and docs/*.md is executed here, or says in the text why not.

A fenced block is one of (docs/layout.md#examples-in-the-docs):
- a configuration block (its lines `NAME=VALUE` of IPTABLES_SHIM_* settings and `#` comments):
  parsed by the shim's own parser, shim.config.parse, which must accept it, or refuse it where the
  line before the block is `<!-- example: refused -->`;
- a shell block (```sh): run as root in a private network, mount and PID namespace (the machine's
  /run, /tmp and /usr/local/sbin hidden behind tmpfs: what it writes there is gone with it), from a
  copy of the checkout, with the checkout's bin/ first on PATH as the README says; it must exit 0
  without a traceback. A block marked `<!-- example: output of the block above -->` must be what
  the shell block before it printed (times, PIDs and netns cookies aside);
- any block marked `<!-- example: not run: WHY -->`, WHY saying what it would change or need.
Anything else fails test_every_example_is_run_or_says_why. The parse needs no root; the runs do.
"""

import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from namespaces import REPO, SYSTEM_PATH
from shim.config import parse
from shim.errors import ShimError

DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
FENCE = re.compile(r"^(\s*)```(.*)$")
MARKER = re.compile(r"^\s*<!-- example: (refused|output of the block above|not run: (.+?)) -->\s*$")
SETTING_LINE = re.compile(r"^\s*IPTABLES_SHIM_[A-Z_]+\s*=")
# What a run of a shell block may see of the checkout (a copy: nothing it writes lands in it).
CHECKOUT_PARTS = ("bin", "shim", "deploy", "packaging")


class Block(object):
    """One fenced block: where it is, its info string, its text, and its marker (or None)."""

    __slots__ = ("doc", "line", "info", "text", "marker", "why")

    def __init__(self, doc, line, info, text, marker, why):
        self.doc, self.line, self.info, self.text, self.marker, self.why = doc, line, info, text, marker, why

    @property
    def id(self):
        return "%s:%d" % (self.doc, self.line)

    @property
    def kind(self):
        if self.marker and self.marker.startswith("not run"):
            return "not run"
        if self.marker == "output of the block above":
            return "output"
        if self.info == "" and is_configuration(self.text):
            return "configuration"
        if self.info == "sh":
            return "shell"
        return None


def is_configuration(text):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return any(SETTING_LINE.match(l) for l in lines) and all(
        l.startswith("#") or SETTING_LINE.match(l) for l in lines)


def blocks_of(doc, text):
    """The fenced blocks of a Markdown text, indented ones (in a list item) too."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info, start = m.group(1), m.group(2).strip(), i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].startswith(indent + "```") and lines[i].strip() == "```"):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before]) if before >= 0 else None
        out.append(Block(doc, start + 1, info, "\n".join(body) + "\n", marker.group(1) if marker else None,
                         marker.group(2) if marker else None))
    return out


def all_blocks():
    out = []
    for doc in DOCS:
        with open(os.path.join(REPO, doc), encoding="utf-8") as f:
            out += blocks_of(doc, f.read())
    return out


BLOCKS = all_blocks()
CONFIGURATION = [b for b in BLOCKS if b.kind == "configuration"]
SHELL = [b for b in BLOCKS if b.kind == "shell"]


# -- every block: run, or why not (no root) -------------------------------------------------------------

def test_every_example_is_run_or_says_why():
    unmarked = ["%s (```%s)" % (b.id, b.info) for b in BLOCKS if b.kind is None]
    assert not unmarked, ("blocks neither run nor marked `<!-- example: not run: WHY -->` on the line "
                          "before (docs/layout.md#examples-in-the-docs): %s" % ", ".join(unmarked))
    # A comment holding "--" is not an HTML comment (CommonMark): the marker could show on the page.
    dashes = [b.id for b in BLOCKS if b.why and "--" in b.why]
    assert not dashes, "a marker's WHY without `--` (write the option without its dashes): %s" % dashes
    refused_elsewhere = [b.id for b in BLOCKS if b.marker == "refused" and b.kind != "configuration"]
    assert not refused_elsewhere, "`refused` marks a configuration block only: %s" % refused_elsewhere
    outputs = [b for b in BLOCKS if b.kind == "output"]
    for b in outputs:
        before = [x for x in BLOCKS if x.doc == b.doc and x.line < b.line]
        assert before and before[-1].kind == "shell", "%s: no shell block right before its output" % b.id
    assert CONFIGURATION and SHELL  # the parser below finds what it must


def test_the_parser_of_the_blocks_sees_each_kind():
    text = ("<!-- example: not run: it needs a node -->\n```sh\nrm -rf /\n```\n\n```\n# c\nIPTABLES_SHIM_MODE=nft\n"
            "```\n\n<!-- example: refused -->\n\n```\nIPTABLES_SHIM_MODE=x\n```\n\n```sh\ntrue\n```\n"
            "<!-- example: output of the block above -->\n```\n\n```\n\n  ```\n  indented\n  ```\n")
    got = [(b.line, b.kind, b.why) for b in blocks_of("t.md", text)]
    assert got == [(2, "not run", "it needs a node"), (6, "configuration", None), (13, "configuration", None),
                   (17, "shell", None), (21, "output", None), (25, None, None)], got
    assert blocks_of("t.md", text)[2].marker == "refused"
    assert blocks_of("t.md", text)[5].text == "indented\n"


# -- configuration blocks: the shim's own parser (no root) --------------------------------------------

@pytest.mark.parametrize("block", CONFIGURATION, ids=[b.id for b in CONFIGURATION])
def test_configuration_examples_are_what_the_parser_says(block):
    data = block.text.encode("utf-8")
    if block.marker == "refused":
        with pytest.raises(ShimError):
            parse(data, block.id)
        return
    try:
        parse(data, block.id)
    except ShimError as e:
        pytest.fail("the example is refused by shim.config.parse (a copy of it stops every call): %s; mark "
                    "it `<!-- example: refused -->` if that is its point" % e)


# -- shell blocks: run in private namespaces (root) ----------------------------------------------------

@pytest.fixture(scope="module")
def checkout():
    """A copy of the parts of the checkout the blocks use, readable by every user."""
    top = tempfile.mkdtemp(prefix="doc-examples-", dir="/var/tmp")
    os.chmod(top, 0o755)
    for part in CHECKOUT_PARTS:
        shutil.copytree(os.path.join(REPO, part), os.path.join(top, part), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


# Run as PID 1 of the new PID namespace, in the new network and mount namespaces: /run (the shim's
# cache, named netns, the system log socket), /tmp and /usr/local/sbin (install DIR's example) are
# private tmpfs, so nothing of the machine's is read or written there.
PRIVATE = """
set -e
for d in /run /tmp /usr/local/sbin; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
chmod 1777 /tmp
cd "$0"
exec /bin/sh -e -c "$1"
"""


def run_block(block, checkout):
    env = {"PATH": os.path.join(checkout, "bin") + ":" + SYSTEM_PATH, "HOME": "/tmp", "LC_ALL": "C"}
    return subprocess.run(["/usr/bin/unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork",
                           "--mount-proc", "/bin/sh", "-c", PRIVATE, checkout, block.text], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)


def same(text):
    """Output as the docs show it: the time, the PID and the netns cookie of a log line aside."""
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", "TIME", text)
    text = re.sub(r"pid=\d+", "pid=N", text)
    return re.sub(r"(cookie|netns-ino)-\d+", r"\1-N", text)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network, mount and PID namespaces")
@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_examples_run(block, checkout):
    r = run_block(block, checkout)
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, "%s exited %d:\n%s\n%s" % (block.id, r.returncode, out[-3000:], err[-3000:])
    assert "Traceback" not in out + err, err
    following = [b for b in BLOCKS if b.doc == block.doc and b.line > block.line]
    if following and following[0].kind == "output":
        assert same(out) == same(following[0].text), "%s printed:\n%s" % (block.id, out)
