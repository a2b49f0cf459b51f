"""The image's distribution and the fix in its words, as tables: os-release text in, words out.
Pure except the reads of fixture roots under tmp_path; the real refusal: tests/test_errors.py."""

import os

import pytest

from shim.facts.distribution import MAX_BYTES, Distribution, fix_words, from_fields, parse, read
from shim.policy import Decision, MissingVariant, choose_binary, decide
from shim.resolve import in_the_images_words
from tests.unit.test_policy import ABSENT_NFT, NFT_ONLY, facts

DISTROLESS = ('PRETTY_NAME="Distroless"\nNAME="Debian GNU/Linux"\nID="debian"\nVERSION_ID="12"\n'
              'HOME_URL="https://github.com/GoogleContainerTools/distroless"\n')

# (name, os-release text, backend, family, words expected in the fix, or None: the generic words)
WORDS = [
    ("alpine 3.21 legacy", 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.21.2\n', "legacy", "iptables",
     "apk add iptables-legacy"),
    ("alpine 3.21 nft", 'ID=alpine\nVERSION_ID=3.21.2\n', "nft", "iptables", "apk add iptables "),
    ("alpine 3.18 legacy: still the iptables package", 'ID=alpine\nVERSION_ID=3.18.9\n', "legacy", None,
     "apk add iptables (before Alpine 3.19"),
    ("alpine edge", 'ID=alpine\nVERSION_ID=3.22_alpha20250108\n', "legacy", None, "apk add iptables-legacy"),
    ("postmarketOS, like alpine", 'ID=postmarketos\nID_LIKE="alpine"\n', "legacy", None, "apk add iptables-legacy"),
    ("debian", 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nID=debian\n', "legacy",
     "iptables", "apt-get install iptables (Debian GNU/Linux's iptables package holds both variants)"),
    ("ubuntu", 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', "nft", None, "apt-get install iptables (Ubuntu's"),
    ("mint, like ubuntu", 'NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n', "legacy", None,
     "apt-get install iptables"),
    ("fedora legacy", 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=42\n', "legacy", None,
     "dnf install iptables-legacy"),
    ("fedora nft", 'ID=fedora\n', "nft", None, "dnf install iptables-nft"),
    ("rhel 9 legacy: EPEL only", 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n',
     "legacy", None, "Red Hat Enterprise Linux ships no legacy iptables (only EPEL's iptables-legacy: enable EPEL, "
     "then dnf install iptables-legacy), or move the writer to nf_tables"),
    ("rhel 10 nft", 'ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="10.0"\n', "nft", None, "dnf install iptables-nft"),
    ("ubi 9 (rhel)", 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.5"\n'
     'PRETTY_NAME="Red Hat Enterprise Linux 9.5 (Plow)"\n', "legacy", None, "ships no legacy iptables"),
    ("centos stream", 'NAME="CentOS Stream"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n', "legacy", None,
     "CentOS Stream ships no legacy iptables (only EPEL's iptables-legacy: dnf install epel-release && "
     "dnf install iptables-legacy)"),
    ("rocky through its ID", 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n',
     "legacy", None, "Rocky Linux ships no legacy iptables"),
    ("alma", 'NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.5"\n', "nft", None,
     "dnf install iptables-nft"),
    ("oracle linux: ID_LIKE fedora alone, yet RHEL's packaging", 'NAME="Oracle Linux Server"\nID="ol"\n'
     'ID_LIKE="fedora"\nVERSION_ID="9.4"\n', "legacy", None, "ships no legacy iptables"),
    ("an unknown rhel rebuild through ID_LIKE", 'NAME="Some EL"\nID="someel"\nID_LIKE="rhel centos fedora"\n'
     'VERSION_ID="9.2"\n', "legacy", None, "Some EL ships no legacy iptables"),
    ("an unknown fedora remix: ID_LIKE fedora alone is no fedora", 'ID=remix\nID_LIKE=fedora\n', "legacy", None,
     None),
    ("centos 7: another era, generic", 'ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\n', "nft", None, None),
    ("amazon linux: not established, generic", 'ID="amzn"\nID_LIKE="centos rhel fedora"\nVERSION_ID="2023"\n',
     "legacy", None, None),
    ("wolfi iptables", 'ID=wolfi\nNAME="Wolfi"\n', "legacy", "iptables",
     "apk add iptables (Wolfi's iptables package holds both variants"),
    ("wolfi ip6tables", 'ID=wolfi\nNAME="Wolfi"\n', "legacy", "ip6tables", "apk add iptables ip6tables ("),
    ("chainguard", 'ID=chainguard\nNAME="Chainguard"\n', "nft", None, "apk add iptables ip6tables (Chainguard's"),
    ("distroless legacy", DISTROLESS, "legacy", "iptables",
     "Distroless has no package manager: copy the legacy variant in at image build time from a Debian stage "
     "(COPY --from: /usr/sbin/xtables-legacy-multi, its iptables-legacy* links"),
    ("distroless by its HOME_URL alone", 'ID=debian\nHOME_URL="https://github.com/GoogleContainerTools/distroless"\n',
     "nft", "ip6tables", "has no package manager: copy the nft variant in"),
    ("talos legacy: none exists", 'NAME="Talos"\nID=talos\n', "legacy", None,
     "Talos ships no legacy iptables: move the writer to nf_tables"),
    ("talos nft: nothing established, generic", 'ID=talos\n', "nft", None, None),
    ("unknown distribution", 'ID=plan9\nNAME="Plan 9"\n', "legacy", None, None),
    ("no ID at all", 'NAME="Alpine Linux"\n', "legacy", None, None),
    ("empty", "", "nft", None, None),
]


@pytest.mark.parametrize("name,text,backend,family,expected", WORDS, ids=[w[0] for w in WORDS])
def test_fix_words(name, text, backend, family, expected):
    words = fix_words(from_fields(parse(text.encode()), "/etc/os-release"), backend, family)
    if expected is None:
        assert words is None
    else:
        assert words is not None and expected in words, words
        assert "\n" not in words


# (name, os-release bytes, {KEY: value} expected among the fields, keys that must be absent)
PARSES = [
    ("double quotes", b'NAME="Alpine Linux"\n', {"NAME": "Alpine Linux"}, ()),
    ("single quotes, literal", b"NAME='a \\\"b\\\" $c'\n", {"NAME": 'a \\"b\\" $c'}, ()),
    ("escapes in double quotes", b'PRETTY_NAME="say \\"hi\\" \\\\ \\$HOME \\`x\\` \\n"\n',
     {"PRETTY_NAME": 'say "hi" \\ $HOME `x` \\n'}, ()),
    ("unquoted with an escaped blank", b"NAME=Fedora\\ Linux\n", {"NAME": "Fedora Linux"}, ()),
    ("concatenated quoting", b"ID=deb'i'\"an\"\n", {"ID": "debian"}, ()),
    ("empty value", b'VARIANT=""\nID=\n', {"VARIANT": "", "ID": ""}, ()),
    ("comments and blank lines", b"# ID=fake\n\n   \nID=alpine\n", {"ID": "alpine"}, ()),
    ("indented and CRLF", b"  ID=alpine\r\n", {"ID": "alpine"}, ()),
    ("the last assignment wins", b"ID=debian\nID=alpine\n", {"ID": "alpine"}, ()),
    ("unterminated quote skipped", b'NAME="broken\nID=alpine\n', {"ID": "alpine"}, ("NAME",)),
    ("unquoted blank skipped (a shell would run it)", b"NAME=Alpine Linux\nID=alpine\n", {"ID": "alpine"}, ("NAME",)),
    ("no assignment", b"this is not an os-release\nID alpine\n", {}, ("ID",)),
    ("bad keys", b"1ID=x\nI-D=y\n=z\n\xc3\xa9=w\n", {}, ("1ID", "I-D", "")),
    ("undecodable bytes", b'ID=alpine\nNAME="\xff\xfe"\n', {"ID": "alpine", "NAME": "\ufffd\ufffd"}, ()),
    ("NUL bytes", b"ID=al\x00pine\n", {"ID": "al\x00pine"}, ()),
    ("trailing backslash skipped", b"ID=alpine\\\n", {}, ("ID",)),
]


@pytest.mark.parametrize("name,data,expected,absent", PARSES, ids=[p[0] for p in PARSES])
def test_parse(name, data, expected, absent):
    fields = parse(data)
    for key, value in expected.items():
        assert fields.get(key) == value, fields
    for key in absent:
        assert key not in fields, fields


def test_id_and_id_like_are_read_lower_case():
    d = from_fields(parse(b'ID="Rocky"\nID_LIKE="RHEL  centos\tfedora"\n'), "/etc/os-release")
    assert (d.id, d.id_like, d.name) == ("rocky", ("rhel", "centos", "fedora"), "rocky")


def write(root, rel, data):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_read_prefers_etc(tmp_path):
    write(tmp_path, "etc/os-release", b"ID=alpine\n")
    write(tmp_path, "usr/lib/os-release", b"ID=debian\n")
    d = read(str(tmp_path))
    assert d.id == "alpine" and d.why == "read from /etc/os-release"


def test_read_falls_back_to_usr_lib_only_where_etc_is_missing(tmp_path):
    write(tmp_path, "usr/lib/os-release", b"ID=wolfi\n")
    assert read(str(tmp_path)).id == "wolfi"
    os.makedirs(str(tmp_path / "etc"), exist_ok=True)
    os.symlink("../usr/lib/os-release", str(tmp_path / "etc" / "os-release"))  # the usual link
    assert read(str(tmp_path)).id == "wolfi"
    os.unlink(str(tmp_path / "etc" / "os-release"))
    os.symlink("/nonexistent", str(tmp_path / "etc" / "os-release"))  # dangling: missing
    assert read(str(tmp_path)).id == "wolfi"


def test_an_empty_etc_os_release_is_unknown_not_a_fallback(tmp_path):
    write(tmp_path, "etc/os-release", b"")
    write(tmp_path, "usr/lib/os-release", b"ID=alpine\n")
    d = read(str(tmp_path))
    assert d.id is None and "no ID" in d.why


# (name, how to make the root, the reason's words) -- every one is "unknown", none raises
UNREADABLE = [
    ("missing both", lambda root: None, "no /etc/os-release or /usr/lib/os-release"),
    ("oversize", lambda root: write(root, "etc/os-release", b"ID=alpine\n" + b"#" * MAX_BYTES),
     "larger than 65536 bytes"),
    ("a directory", lambda root: os.makedirs(os.path.join(str(root), "etc/os-release")), "not a regular file"),
    ("a FIFO (must not hang)", lambda root: (os.makedirs(os.path.join(str(root), "etc")),
                                             os.mkfifo(os.path.join(str(root), "etc/os-release"))),
     "not a regular file"),
    ("a symlink loop", lambda root: (os.makedirs(os.path.join(str(root), "etc")),
                                     os.symlink("os-release", os.path.join(str(root), "etc/os-release"))),
     "cannot be opened"),
    ("garbage", lambda root: write(root, "etc/os-release", os.urandom(4096).replace(b"=", b"")), "no ID"),
]


@pytest.mark.parametrize("name,make,why", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_is_unknown(tmp_path, name, make, why):
    make(tmp_path)
    d = read(str(tmp_path))
    assert d.id is None and why in d.why, d
    assert fix_words(d, "legacy") is None


def test_exactly_max_bytes_is_read(tmp_path):
    write(tmp_path, "etc/os-release", (b"ID=alpine\n" + b"#" * MAX_BYTES)[:MAX_BYTES])
    assert read(str(tmp_path)).id == "alpine"


# -- the errors that carry the words ---------------------------------------------------------

def chose_legacy_error():
    with pytest.raises(MissingVariant) as err:
        choose_binary(Decision("legacy", 5, "legacy holds rules"), "iptables-legacy", None, "/s/iptables", "nft")
    return err.value


def test_generic_words_are_unchanged_without_a_distribution(tmp_path):
    e = chose_legacy_error()
    generic = ("chose legacy (step 5: legacy holds rules) but iptables-legacy is not on PATH (the default alias "
               "runs nft): install the legacy variant of iptables, or set IPTABLES_SHIM_MODE=nft|legacy if the "
               "choice is wrong")
    assert str(e) == generic
    assert e.worded(None) == generic
    assert in_the_images_words(e, str(tmp_path)) == generic  # no os-release in this root


def test_the_fix_in_alpines_words(tmp_path):
    write(tmp_path, "etc/os-release", b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.21.3\n')
    line = in_the_images_words(chose_legacy_error(), str(tmp_path))
    assert line.startswith("chose legacy (step 5: legacy holds rules) but iptables-legacy is not on PATH")
    assert ": apk add iptables-legacy (" in line and line.endswith("if the choice is wrong")
    assert "variant of iptables" not in line


def test_the_stranded_error_in_fedoras_words(tmp_path):
    write(tmp_path, "etc/os-release", b"ID=fedora\n")
    with pytest.raises(MissingVariant) as err:
        decide(facts(alias="nft", binaries=NFT_ONLY, support=ABSENT_NFT))
    assert err.value.backend == "legacy" and err.value.family is None
    line = in_the_images_words(err.value, str(tmp_path))
    assert "this kernel cannot run nft" in line and ": dnf install iptables-legacy, or load the kernel's nft" in line


def test_ip6tables_names_its_family():
    with pytest.raises(MissingVariant) as err:
        choose_binary(Decision("nft", 4, "nft holds rules"), "ip6tables-nft-save", None, None, None)
    assert (err.value.backend, err.value.family) == ("nft", "ip6tables")


def test_other_errors_pass_through(tmp_path):
    write(tmp_path, "etc/os-release", b"ID=alpine\n")
    from shim.errors import ShimError

    assert in_the_images_words(ShimError("something else"), str(tmp_path)) == "something else"


def test_the_record_is_plain_data():
    d = Distribution("alpine", ["x"], "Alpine", why="test")
    assert not hasattr(d, "__dict__") and d.id_like == ("x",)
