"""A shim damaged or half-replaced (an upgrade caught between two files, a disk error, a copy cut
short) never prints a Python traceback on the caller's stderr, which callers parse (SPEC "Errors"),
and never runs a real iptables binary.

The source shim (bin/iptables-shim and shim/): each damage of a module on a call that Python
answers (the first of a netns) gives one `iptables-shim:` line and 127, running nothing; the rule the
call would have added is in neither backend.

The frozen tree is one executable that carries its Python (docs/images.md "A damaged executable"):
after execve nothing of it is read but what the kernel maps, so a damaged executable never starts
the shim at all, and what the call does is the kernel's and the caller's doing. Each damage below
(cut at offsets taken from the executable's own ELF headers; the arm64 build in place of the amd64
one; bytes that are no ELF file) is called the four ways callers start iptables, in a netns of its
own, with recording fakes of the real binaries on PATH: nothing of them runs, no rule is in either
backend, no cache entry is written, no traceback is printed, and the outcome is the documented one
(ENOEXEC from execve, a shell's own message, SIGSEGV from the kernel). A cut that leaves every loaded
byte in place runs as the whole file does. One thing a caller may do on its own: dash, given a
binary it cannot execute, goes on along PATH and runs the next `iptables` there
(test_dash_runs_the_next_iptables_on_path).
"""

import os
import py_compile
import shutil
import signal
import struct
import tempfile

import pytest

from fakes import fake_runs, recording_fakes
from namespaces import SYSTEM_PATH

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_other_version(source_text, out):
    """Bytecode of another version of a module, as packaging/build.sh compiles it."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "module.py")
        with open(src, "w") as f:
            f.write(source_text)
        py_compile.compile(src, cfile=out, doraise=True, optimize=2,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def garbage(path):
    with open(path, "wb") as f:
        f.write(os.urandom(3000))


# Each damage: (what, function(module path)), applied to one module of the tree or checkout.
TOOLS_WITHOUT_VARIANT_NAME = open(os.path.join(REPO, "shim", "tools.py")).read().replace(
    "def variant_name(", "def renamed_variant_name(")
DAMAGES = {
    "truncated": ("shim/resolve", truncate),
    "missing": ("shim/gather", os.unlink),
    "from another version": ("shim/tools", lambda p: compile_other_version(TOOLS_WITHOUT_VARIANT_NAME, p)
                             if p.endswith(".pyc") else open(p, "w").write(TOOLS_WITHOUT_VARIANT_NAME)),
    "garbage": ("shim/main", garbage),
}


def assert_one_line_and_nothing_run(netns, r):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 127, (r.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("iptables-shim: the shim at "), err
    assert "damaged or half-replaced" in err, err
    assert r.stdout == b""
    assert netns.rules("nft") == [] and netns.rules("legacy") == []


def call(netns, shim_dir, cache, argv=("iptables", "-A", "INPUT", "-s", "192.0.2.44", "-j", "ACCEPT")):
    env = {"PATH": shim_dir + ":" + SYSTEM_PATH, "IPTABLES_SHIM_CACHE_DIR": cache,
           "IPTABLES_SHIM_CONTEXT": "container", "LC_ALL": "C"}
    return netns.run([os.path.join(shim_dir, argv[0])] + list(argv[1:]), env=env)


@pytest.fixture
def checkout_copy():
    top = tempfile.mkdtemp(prefix="damaged-checkout-", dir="/var/tmp")
    for part in ("bin", "shim"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(top, part), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkout_says_so_in_one_line(netns, checkout_copy, tmp_path, damage):
    module, spoil = DAMAGES[damage]
    spoil(os.path.join(checkout_copy, module + ".py"))
    r = call(netns, os.path.join(checkout_copy, "bin"), str(tmp_path / "cache"))
    assert_one_line_and_nothing_run(netns, r)


# -- the frozen tree: one executable ---------------------------------------------------------------

# The real binaries the shim would exec, as recording fakes that exec them (tests/fakes): if any ran,
# its name is in the log and its rule in the kernel. No `iptables` among them: the shim's names are
# the only ones on PATH, as with `install --alternatives` (test_dash_runs_the_next_iptables_on_path
# puts one there).
REAL = ["iptables-nft", "iptables-legacy", "iptables-nft-save", "iptables-legacy-save", "iptables-nft-restore",
        "iptables-legacy-restore", "xtables-nft-multi", "xtables-legacy-multi"]
RULE = ["-A", "INPUT", "-s", "192.0.2.45", "-j", "ACCEPT"]
# The callers: a direct execve (kubelet, kube-proxy and Go's os/exec, Python's subprocess), glibc's
# execvp (env, nsenter, xargs, find -exec), dash (/bin/sh, shell scripts) and bash.
DIRECT = ("import errno, os, sys\n"
          "try:\n    os.execv(sys.argv[1], sys.argv[1:])\n"
          "except OSError as e:\n    sys.stderr.write('execve: %s\\n' % errno.errorcode[e.errno])\n    sys.exit(100)\n")
CALLERS = {
    "execve": lambda tree: ["/usr/bin/python3", "-I", "-c", DIRECT, os.path.join(tree, "iptables")] + RULE,
    "execvp": lambda tree: ["/usr/bin/env", "iptables"] + RULE,
    "dash": lambda tree: ["/bin/sh", "-c", 'iptables "$@"', "sh"] + RULE,
    "bash": lambda tree: ["/bin/bash", "-c", 'iptables "$@"', "bash"] + RULE,
}
EXEC_FORMAT = {  # the kernel says ENOEXEC: the caller decides what follows
    "execve": (100, "execve: ENOEXEC\n"),
    "execvp": ("sh", None),  # glibc runs it as a shell script: `/bin/sh FILE ARGS`
    "dash": (126, "iptables: Exec format error"),  # a binary: not a script; nothing further on PATH
    "bash": (126, "cannot execute binary file: Exec format error"),
}
KILLED = {c: (-signal.SIGSEGV, "") for c in CALLERS}  # the kernel kills it before its first instruction
KILLED["dash"] = (128 + signal.SIGSEGV, "Segmentation fault")  # dash forks for a -c command with "$@"
EMPTY = {"execve": (100, "execve: ENOEXEC\n"), "execvp": (0, ""), "dash": (0, ""), "bash": (0, "")}  # an empty script


def elf_layout(data):
    """(end of the program headers, [(offset, size) of each PT_LOAD's bytes in the file]): 64-bit
    little-endian ELF, as the build makes for amd64 and arm64."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads = []
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_filesz:
            loads.append((p_offset, p_filesz))
    return phoff + phentsize * phnum, loads


def damages(data):
    """{what: (bytes in place of the executable, outcome per caller)}."""
    headers_end, loads = elf_layout(data)
    loaded_end = max(o + n for o, n in loads)
    assert loaded_end < len(data)  # the section headers come after: never loaded
    out = {
        "empty": (b"", EMPTY),
        "cut in the ELF header": (data[:32], EXEC_FORMAT),
        "cut in the program headers": (data[:headers_end - 1], EXEC_FORMAT),
        "not an ELF file": (bytes(range(256)) * 12, EXEC_FORMAT),
        "cut after the program headers": (data[:headers_end], KILLED),
        "cut after what is loaded": (data[:loaded_end], None),  # None: as the whole file
    }
    for i, (offset, size) in enumerate(loads):
        out["cut in loaded segment %d" % i] = (data[:offset + size // 2], KILLED)
    return out


def built_executable():
    from test_frozen_roots import workspace

    _, built = workspace()
    with open(os.path.join(built, "iptables-shim"), "rb") as f:
        return built, f.read()


def binfmt_runs_aarch64():
    """Whether the kernel hands an aarch64 ELF to a registered interpreter (qemu-user)."""
    d = "/proc/sys/fs/binfmt_misc"
    for name in os.listdir(d) if os.path.isdir(d) else ():
        try:
            text = open(os.path.join(d, name)).read()
        except OSError:
            continue
        if text.startswith("enabled") and "7f454c460201010000000000000000000200b700" in text:
            return True
    return False


def tree_with(built, data, top):
    tree = os.path.join(top, "iptables-shim")
    shutil.copytree(built, tree, symlinks=True)
    with open(os.path.join(tree, "iptables-shim"), "wb") as f:  # the same mode, other bytes
        f.write(data)
    return tree


def call_each_way(netns, tree, work, later=()):
    """{caller: (rc, stdout, stderr, the fakes' runs, nft rules, legacy rules, cache entries, {file
    made in the caller's directory: size})}. The netns holds kubelet's hint in nft: a shim that ran
    would put the rule there and cache it."""
    netns.sh("iptables-nft -t mangle -N KUBE-IPTABLES-HINT")  # once per netns (a second -N fails)
    results = {}
    for caller, argv in CALLERS.items():
        d = os.path.join(work, caller)
        fakes = recording_fakes(os.path.join(d, "real"), REAL)
        path = ":".join([tree, fakes] + list(later) + ["/usr/bin", "/bin"])  # no /usr/sbin: no other iptables
        env = {"PATH": path, "IPTABLES_SHIM_CONTEXT": "container", "IPTABLES_SHIM_CACHE_DIR": os.path.join(d, "cache"),
               "FAKE_LOG": os.path.join(d, "ran"), "LC_ALL": "C"}
        cwd = os.path.join(d, "cwd")
        os.makedirs(cwd)
        r = netns.run(argv(tree), env=env, cwd=cwd)
        cache = os.listdir(os.path.join(d, "cache")) if os.path.isdir(os.path.join(d, "cache")) else []
        made = {n: os.lstat(os.path.join(cwd, n)).st_size for n in os.listdir(cwd)}
        results[caller] = (r.returncode, r.stdout, r.stderr.decode("utf-8", "replace"),
                           [run["name"] for run in fake_runs(os.path.join(d, "ran"))],
                           netns.rules("nft"), netns.rules("legacy"), cache, made)
        for backend in ("nft", "legacy"):  # the whole file's rule, taken away for the next caller
            if RULE[3] in "".join(results[caller][4 if backend == "nft" else 5]):
                netns.ok("iptables-%s -D %s" % (backend, " ".join(RULE[1:])))
    return results


def assert_outcome(what, results, expected):
    for caller, (rc, out, err, ran, nft, legacy, cache, made) in results.items():
        where = (what, caller, rc, err[:300])
        assert ran == [] and nft == [] and legacy == [] and cache == [], where + (ran, nft, legacy, cache)
        assert "Traceback" not in err and "iptables-shim:" not in err and out == b"", where
        want_rc, want_err = expected[caller]
        if want_rc == "sh":  # glibc's execvp ran it with /bin/sh: its first line is no command
            assert rc in (2, 127) and ("not found" in err or "Syntax error" in err), where
            # ... and x86-64's e_machine (62) is `>`: sh may make an empty file in the caller's
            # directory, named by the bytes after it.
            assert set(made.values()) <= {0}, where + (made,)
            continue
        assert made == {} and rc == want_rc and want_err in err, where + (made,)


@pytest.fixture(scope="module")
def executable():
    return built_executable()


@pytest.mark.images
@pytest.mark.parametrize("damage", ["empty", "cut in the ELF header", "cut in the program headers", "not an ELF file",
                                    "cut after the program headers", "cut in loaded segment 0",
                                    "cut in loaded segment 1", "cut in loaded segment 2", "cut in loaded segment 3"])
def test_a_damaged_executable_runs_nothing_and_prints_no_traceback(netns, executable, tmp_path, damage):
    built, data = executable
    cases = damages(data)
    if damage not in cases:
        pytest.skip("the executable has fewer loaded segments")
    bad, expected = cases[damage]
    tree = tree_with(built, bad, str(tmp_path / "tree"))
    assert_outcome(damage, call_each_way(netns, tree, str(tmp_path / "work")), expected)


@pytest.mark.images
def test_an_executable_cut_after_what_is_loaded_runs_as_the_whole_file(netns, executable, tmp_path):
    """The section headers at the end are never loaded: without them the process is the same."""
    built, data = executable
    bad, _ = damages(data)["cut after what is loaded"]
    assert len(bad) < len(data)
    whole = call_each_way(netns, tree_with(built, data, str(tmp_path / "whole")), str(tmp_path / "w1"))
    cut = call_each_way(netns, tree_with(built, bad, str(tmp_path / "cut")), str(tmp_path / "w2"))
    for caller in CALLERS:
        rc, out, err, ran, nft, legacy, cache, made = cut[caller]
        assert rc == 0 and ran == ["iptables-nft"] and nft and not legacy and cache, (caller, cut[caller])
        assert cut[caller][:6] == whole[caller][:6], caller


@pytest.mark.images
@pytest.mark.skipif(os.environ.get("IPTABLES_SHIM_TEST_ARM64") == "0", reason="IPTABLES_SHIM_TEST_ARM64=0")
def test_an_executable_of_another_architecture_runs_nothing(netns, executable, tmp_path):
    """The arm64 tree's executable copied over the amd64 one (a multi-arch image built wrong): the
    kernel refuses it (ENOEXEC) unless a binfmt_misc interpreter takes aarch64 (then it is the shim,
    emulated, which this test does not judge)."""
    from images import Workspace

    if binfmt_runs_aarch64() == (os.uname().machine == "x86_64"):
        pytest.skip("binfmt_misc hands aarch64 executables to qemu-user here: it would run, emulated")
    built, data = executable
    arch = "arm64" if os.uname().machine == "x86_64" else "amd64"
    dist, _ = Workspace.open().frozen(arch)
    with open(os.path.join(dist, "iptables-shim", "iptables-shim"), "rb") as f:
        foreign = f.read()
    assert foreign[18:20] != data[18:20]  # e_machine
    tree = tree_with(built, foreign, str(tmp_path / "tree"))
    assert_outcome("another architecture", call_each_way(netns, tree, str(tmp_path / "work")), EXEC_FORMAT)


@pytest.mark.images
def test_dash_runs_the_next_iptables_on_path(netns, executable, tmp_path):
    """What dash (Debian's /bin/sh) does on its own: a binary it cannot execute is skipped and the
    search goes on along PATH. With another `iptables` after the shim's directory (the image's own,
    where the shim's names only come first on PATH), a damaged or foreign executable lets a shell
    script's call run that one: docs/images.md "A damaged executable" says to install with
    --alternatives, where the shim's names are the only ones. bash and glibc's execvp do not."""
    built, data = executable
    bad, _ = damages(data)["cut in the program headers"]
    tree = tree_with(built, bad, str(tmp_path / "tree"))
    other = recording_fakes(str(tmp_path / "image-sbin"), ["iptables"])
    results = call_each_way(netns, tree, str(tmp_path / "work"), later=[other])
    # The image's own `iptables` (a recording fake that execs the real /usr/sbin/iptables).
    assert results["dash"][0] == 0 and results["dash"][3] == ["iptables"], results["dash"]
    for caller in ("execve", "execvp", "bash"):
        assert results[caller][3] == [] and results[caller][0] != 0, (caller, results[caller])
