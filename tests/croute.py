"""The launcher's C route (packaging/launcher/route.c) built on its own, for the tests: the probe
(tests/croute/probe.c: settle a call and print the answer, or exec it) and the fuzz harness
(tests/croute/fuzz.c), each with AddressSanitizer and UndefinedBehaviorSanitizer against glibc
(Debian's gcc; clang's libFuzzer where Debian's clang is installed). The frozen tree links the same
route.c with musl (packaging/build.sh); here it is the same source and the same generated header.

Builds go to one directory per test process, keyed by what they are made from, and take a second.
A `mutation` (text -> replacement in route.c) builds a deliberately broken route: the suites must
catch it (tests/test_fast_route_generated.py::test_the_suite_catches_a_broken_route).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "packaging", "launcher")
HERE = os.path.join(REPO, "tests", "croute")
CORPUS = os.path.join(HERE, "corpus")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
WARN = ["-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-std=gnu11"]
CLANG = "/usr/bin/clang-14"

_DIR = []


def build_dir():
    if not _DIR:
        import atexit

        d = tempfile.mkdtemp(prefix="iptables-shim-croute-", dir="/var/tmp")
        os.chmod(d, 0o755)  # the probe runs as other users too
        atexit.register(shutil.rmtree, d, True)
        _DIR.append(d)
    return _DIR[0]


def _sources(mutation):
    """(directory holding route.c, route.h and settled.h, a key) for this mutation."""
    with open(os.path.join(LAUNCHER, "route.c")) as f:
        route = f.read()
    if mutation:
        old, new = mutation
        assert route.count(old) == 1, "the mutation's text is not once in route.c: %r" % old
        route = route.replace(old, new)
    header = subprocess.run(["/usr/bin/python3", "-I", os.path.join(LAUNCHER, "settled_h.py"), REPO],
                            check=True, stdout=subprocess.PIPE).stdout
    key = hashlib.sha256(route.encode() + header + open(os.path.join(LAUNCHER, "route.h"), "rb").read()
                         + open(os.path.join(HERE, "probe.c"), "rb").read()
                         + open(os.path.join(HERE, "fuzz.c"), "rb").read()).hexdigest()[:12]
    src = os.path.join(build_dir(), "src-" + key)
    if not os.path.isdir(src):
        os.makedirs(src)
        with open(os.path.join(src, "route.c"), "w") as f:
            f.write(route)
        with open(os.path.join(src, "settled.h"), "wb") as f:
            f.write(header)
        shutil.copy(os.path.join(LAUNCHER, "route.h"), src)
    return src, key


def _compile(cc, flags, sources, out):
    r = subprocess.run([cc] + WARN + flags + sources + ["-o", out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout.decode("utf-8", "replace")
    return out


def probe(mutation=None, sanitize=True):
    """The probe's path, built once per mutation."""
    src, key = _sources(mutation)
    out = os.path.join(build_dir(), "probe-%s%s" % (key, "-asan" if sanitize else ""))
    if not os.path.exists(out):
        _compile("gcc", (SANITIZE if sanitize else ["-O2"]) + ["-I" + src],
                 [os.path.join(src, "route.c"), os.path.join(HERE, "probe.c")], out)
    return out


def fuzz_standalone():
    """The fuzz harness over the fixed, mutated corpus (gcc, sanitised)."""
    src, key = _sources(None)
    out = os.path.join(build_dir(), "fuzz-standalone-" + key)
    if not os.path.exists(out):
        _compile("gcc", SANITIZE + ["-DSTANDALONE", "-I" + src],
                 [os.path.join(src, "route.c"), os.path.join(HERE, "fuzz.c")], out)
    return out


def libfuzzer():
    """The fuzz harness as a libFuzzer target (Debian's clang-14), or None without clang."""
    if not os.path.exists(CLANG):
        return None
    src, key = _sources(None)
    out = os.path.join(build_dir(), "fuzz-libfuzzer-" + key)
    if not os.path.exists(out):
        _compile(CLANG, ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-g", "-O1",
                         "-I" + src], [os.path.join(src, "route.c"), os.path.join(HERE, "fuzz.c")], out)
    return out


def fifo_as_file():
    """tests/croute/fifo_as_file.c as an LD_PRELOAD library: stat() calls a FIFO a regular file."""
    out = os.path.join(build_dir(), "fifo_as_file.so")
    if not os.path.exists(out):
        _compile("gcc", ["-shared", "-fPIC", "-O2"], [os.path.join(HERE, "fifo_as_file.c")], out)
    return out


def compare_script():
    """tests/croute/compare.py and this module, copied where every caller can read them."""
    out = os.path.join(build_dir(), "compare.py")
    if not os.path.exists(out):
        shutil.copy(os.path.join(HERE, "compare.py"), out)
        shutil.copy(os.path.abspath(__file__).replace(".pyc", ".py"), os.path.join(build_dir(), "croute.py"))
    return out


def parse_probe(stdout):
    """The probe's answer: {"handover": WHY} or {"binary", "mark", "log", "line"}."""
    fields = {}
    for line in stdout.decode("utf-8", "surrogateescape").splitlines():
        key, _, value = line.partition("\t")
        fields[key] = value
    if "mark" in fields:
        fields["mark"] = fields["mark"] == "1"
    return fields
