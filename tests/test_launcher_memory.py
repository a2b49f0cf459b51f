"""The frozen launcher's memory for a call of the six names (packaging/launcher/memory.c), built on
its own with AddressSanitizer and UndefinedBehaviorSanitizer against glibc: the raw allocator's
region (blocks apart, aligned, zeroed where asked, realloc copying), its fallback to libc once used
up or for a large block, and the populated arenas. The tree links the same memory.c with musl; the
calls through it are every frozen suite's."""

import os
import subprocess

import croute


def test_the_region_allocator_under_sanitizers():
    out = os.path.join(croute.build_dir(), "memory_test")
    croute._compile("gcc", croute.SANITIZE + ["-I" + croute.LAUNCHER],
                    [os.path.join(croute.LAUNCHER, "memory.c"), os.path.join(croute.HERE, "memory_test.c")], out)
    r = subprocess.run([out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0 and r.stdout == b"ok\n", r.stdout.decode("utf-8", "replace")
