"""shim.config: the NAME=VALUE file format and the order environment > file (no root needed: the
ownership check is exercised by tests/test_config.py on real root-owned files)."""

import pytest

from shim.config import MODE, parse, load_settings
from shim.errors import ShimError


def test_lines_comments_quotes_and_blank_values():
    data = b"# a comment\n\n  IPTABLES_SHIM_MODE = legacy  \nIPTABLES_SHIM_LOG='/var/log/shim.log'\nIPTABLES_SHIM_CONTEXT=\n"
    assert parse(data, "f") == {"IPTABLES_SHIM_MODE": "legacy", "IPTABLES_SHIM_LOG": "/var/log/shim.log"}


@pytest.mark.parametrize("data,says", [
    (b"IPTABLES_SHIM_MODE=auto\n", "f line 1: IPTABLES_SHIM_MODE='auto' is not a backend"),
    (b"# ok\nIPTABLES_SHIM_MOD=nft\n", "f line 2: unknown setting 'IPTABLES_SHIM_MOD'"),
    (b"just words\n", "f line 1: 'just words' is not NAME=VALUE"),
    (b"IPTABLES_SHIM_LOG=relative.log\n", "f line 1: IPTABLES_SHIM_LOG='relative.log' is not an absolute path"),
    (b"IPTABLES_SHIM_CACHE=OFF\n", "f line 1: IPTABLES_SHIM_CACHE='OFF' is not a cache setting"),
    (b"\xff\xfe\n", "f is not UTF-8 text"),
])
def test_bad_content_is_one_line_naming_file_and_line(data, says):
    with pytest.raises(ShimError) as err:
        parse(data, "f")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_environment_wins_and_empty_environment_values_count_as_unset(tmp_path):
    missing = str(tmp_path / "none.conf")
    assert load_settings({"IPTABLES_SHIM_CONFIG": missing, MODE: "nft", "PATH": "/p"}) == {MODE: "nft", "PATH": "/p"}
    assert load_settings({"IPTABLES_SHIM_CONFIG": missing, MODE: ""}) == {"PATH": None}


def test_invalid_environment_value_names_the_variable():
    with pytest.raises(ShimError, match=r"IPTABLES_SHIM_CONTEXT='pod' is not a context"):
        load_settings({"IPTABLES_SHIM_CONFIG": "/nonexistent", "IPTABLES_SHIM_CONTEXT": "pod"})


@pytest.mark.parametrize("line,want", [
    ("IPTABLES_SHIM_MODE=legacy          # this node writes legacy, whoever calls", "legacy"),
    ("IPTABLES_SHIM_MODE=nft\t# a tab before the comment", "nft"),
    ("IPTABLES_SHIM_MODE= # unset, with a comment", None),
    ("IPTABLES_SHIM_LOG=\"/var/log/a #1.log\"  # the quotes keep their #", "/var/log/a #1.log"),
    ("IPTABLES_SHIM_LOG='/var/log/b # 2.log'", "/var/log/b # 2.log"),
    ("IPTABLES_SHIM_LOG=/var/log/c#3.log", "/var/log/c#3.log"),  # no space before it: part of the value
])
def test_a_comment_after_a_value(line, want):
    """`NAME=VALUE  # why`, as in /etc/default files and docs/configuration.md's example: the
    comment starts at a `#` after a space or tab, outside the value's quotes."""
    name = line.partition("=")[0]
    assert parse(line.encode() + b"\n", "f").get(name) == want


@pytest.mark.parametrize("line,says", [
    ("IPTABLES_SHIM_MODE=legacy# no space", "IPTABLES_SHIM_MODE='legacy# no space' is not a backend"),
    ("IPTABLES_SHIM_MODE=\"nft # unclosed", "IPTABLES_SHIM_MODE='\"nft' is not a backend"),
])
def test_a_hash_that_starts_no_comment_is_part_of_the_value(line, says):
    with pytest.raises(ShimError) as err:
        parse(line.encode() + b"\n", "f")
    assert says in str(err.value)


def documented_configurations():
    """The configuration files shown in README.md and docs/ (fenced blocks whose first line names
    the file: `# /etc/iptables-shim.conf` or `# .../iptables-shim.conf`)."""
    import glob
    import os

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    blocks = []
    for path in [os.path.join(repo, "README.md")] + sorted(glob.glob(os.path.join(repo, "docs", "*.md"))):
        parts = open(path, encoding="utf-8").read().split("```")
        for block in parts[1::2]:
            body = block.partition("\n")[2]
            if body.startswith("# ") and body.partition("\n")[0].endswith("iptables-shim.conf"):
                blocks.append((os.path.relpath(path, repo), body))
    return blocks


def test_the_documented_configuration_files_parse():
    """An operator copies them as they are: each parses, and sets what its lines say."""
    blocks = documented_configurations()
    assert blocks, "no configuration file in the docs"
    for where, body in blocks:
        values = parse(body.encode(), where)
        named = [l.partition("=")[0].strip() for l in body.splitlines() if l.strip() and not l.startswith("#")]
        assert sorted(values) == sorted(named), (where, body, values)
