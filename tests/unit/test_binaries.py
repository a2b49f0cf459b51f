"""shim.facts.binaries, the parts that run nothing: the backend named by `--version` output and by
a symlink chain, and which PATH entries are searched. Trees of symlinks and empty files under
tmp_path stand in for /usr/sbin; no root. The PATH search with real binaries and shims:
tests/test_loops.py, tests/test_hostile.py."""

import os

import pytest

from shim.facts import binaries

# (what `iptables --version` printed, the backend it names)
VERSIONS = [
    ("iptables v1.8.9 (nf_tables)", "nft"),
    ("iptables v1.8.7 (legacy)", "legacy"),
    ("ip6tables-restore v1.8.11 (nf_tables)", "nft"),
    ("iptables v1.8.4 (legacy): unknown option", "legacy"),
    ("iptables v1.6.1", "legacy"),  # Ubuntu 18.04: before 1.8 there was no nf_tables variant
    ("iptables v1.4.21", "legacy"),  # CentOS 7
    ("iptables v1.6.1-rc1", "legacy"),
    ("iptables v1.8.0", None),  # 1.8 without a backend in brackets: cannot tell
    ("iptables v2.0.0", None),
    ("iptables v1.x", None),
    ("", None),
    ("Segmentation fault", None),
]


@pytest.mark.parametrize("text,backend", VERSIONS, ids=[v[0] or "empty" for v in VERSIONS])
def test_parse_version(text, backend):
    assert binaries.parse_version(text + "\n") == backend


def tree(tmp_path, links, files=()):
    """Regular files and symlinks {path: target} under tmp_path; paths relative to it."""
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    for name, target in links.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, str(path))
    return tmp_path


# (case, symlinks, regular files, the link whose backend is asked, expected backend)
LINKS = [
    ("Debian alternatives to nft", {"sbin/iptables": "/ALT/iptables", "alt/iptables": "/SBIN/iptables-nft",
                                    "sbin/iptables-nft": "xtables-nft-multi"},
     ["sbin/xtables-nft-multi"], "sbin/iptables", "nft"),
    ("Debian alternatives to legacy", {"sbin/iptables": "/ALT/iptables", "alt/iptables": "/SBIN/iptables-legacy",
                                       "sbin/iptables-legacy": "xtables-legacy-multi"},
     ["sbin/xtables-legacy-multi"], "sbin/iptables", "legacy"),
    ("straight to the multi binary", {"sbin/iptables-save": "xtables-nft-multi"},
     ["sbin/xtables-nft-multi"], "sbin/iptables-save", "nft"),
    ("pre-1.8 xtables-multi", {"sbin/iptables": "xtables-multi"}, ["sbin/xtables-multi"], "sbin/iptables", "legacy"),
    ("relative link through ..", {"sbin/iptables": "../lib/xtables-legacy-multi"},
     ["lib/xtables-legacy-multi"], "sbin/iptables", "legacy"),
    ("dangling link still names it", {"sbin/iptables": "xtables-nft-multi"}, [], "sbin/iptables", "nft"),
    ("a regular file says nothing", {}, ["sbin/iptables"], "sbin/iptables", None),
    ("a link to an unnamed binary", {"sbin/iptables": "iptables.real"}, ["sbin/iptables.real"], "sbin/iptables", None),
    ("a loop ends", {"sbin/iptables": "iptables2", "sbin/iptables2": "iptables"}, [], "sbin/iptables", None),
]


@pytest.mark.parametrize("case,links,files,asked,backend", LINKS, ids=[c[0] for c in LINKS])
def test_backend_from_links(tmp_path, case, links, files, asked, backend):
    # Absolute targets are written with placeholders for this test's directories.
    links = {name: target.replace("/ALT", str(tmp_path / "alt")).replace("/SBIN", str(tmp_path / "sbin"))
             for name, target in links.items()}
    root = tree(tmp_path, links, files)
    assert binaries.backend_from_links(str(root / asked)) == backend


def test_link_chain_stops_at_the_kernels_limit(tmp_path):
    tree(tmp_path, {"a": "b", "b": "a"})
    assert len(binaries.link_chain(str(tmp_path / "a"))) == 41


@pytest.mark.parametrize("path,name,expected", [
    ("/usr/sbin/iptables", "iptables-nft", "/usr/sbin/iptables-nft"),
    ("/usr/sbin/iptables", "/etc/alternatives/iptables", "/etc/alternatives/iptables"),
    ("/usr/sbin/iptables", "../lib/x", "/usr/sbin/../lib/x"),
    ("iptables", "iptables-nft", "iptables-nft"),
])
def test_beside(path, name, expected):
    assert binaries.beside(path, name) == expected


def test_search_dirs(tmp_path):
    """Relative and empty entries (the working directory) are never searched, nor world-writable
    directories, sticky or not; missing and unreadable ones stay, in order."""
    good, other = tmp_path / "good", tmp_path / "other"
    open_dir, sticky = tmp_path / "open", tmp_path / "sticky"
    for d in (good, other, open_dir, sticky):
        d.mkdir()
    open_dir.chmod(0o777)
    sticky.chmod(0o1777)
    missing = tmp_path / "missing"
    path_env = ":".join(["", ".", "bin", str(good), str(open_dir), str(missing), str(sticky), str(other) + "/"])
    assert binaries.search_dirs(path_env) == [str(good), str(missing), str(other) + "/"]


@pytest.mark.parametrize("path_env", [None, "", ":", "relative:also/relative"])
def test_search_dirs_with_nothing_searchable(path_env):
    assert binaries.search_dirs(path_env) == []


def test_find_on_path_skips_shims_and_non_executables(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
    for d, names in ((first, ["iptables", "iptables-save"]), (second, ["iptables", "iptables-save", "ip6tables"])):
        for name in names:
            (d / name).write_text("#!/bin/sh\n")
            (d / name).chmod(0o755)
    (first / "iptables-save").chmod(0o644)  # not executable: the next one is found
    shim = os.stat(str(first / "iptables"))
    (second / "ip6tables").write_text("#!/usr/bin/python3\nfrom shim.main import main\n")  # a copy of the shim
    found = binaries.find_on_path(["iptables", "iptables-save", "ip6tables", "iptables-nft"],
                                  "%s:%s" % (first, second), {(shim.st_dev, shim.st_ino)})
    assert found == {"iptables": str(second / "iptables"), "iptables-save": str(second / "iptables-save")}
