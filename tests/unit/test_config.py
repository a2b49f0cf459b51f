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
