"""shim.writes.write_whole under a file-size limit of 0 (RLIMIT_FSIZE), in a child process whose
SIGXFSZ is the kernel's default (python3 ignores it; a caller of the frozen tree does not): the
write fails, the process lives, and its disposition, mask and pending signals are as before."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = r"""
import posix, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from shim.writes import write_whole
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
if sys.argv[3] == "blocked":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGXFSZ])
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
before = (signal.getsignal(signal.SIGXFSZ), signal.pthread_sigmask(signal.SIG_BLOCK, []), signal.sigpending())
fd = posix.open(sys.argv[2], posix.O_WRONLY | posix.O_CREAT | posix.O_APPEND, 0o600)
ok = write_whole(fd, b"a line\n")
after = (signal.getsignal(signal.SIGXFSZ), signal.pthread_sigmask(signal.SIG_BLOCK, []), signal.sigpending())
print(ok, before == after, sorted(int(s) for s in after[2]))
"""


@pytest.mark.parametrize("mask", ["unblocked", "blocked"])
def test_a_write_past_the_file_size_limit_fails_without_a_signal(tmp_path, mask):
    r = subprocess.run([sys.executable, "-I", "-c", CHILD, REPO, str(tmp_path / "log"), mask],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert (r.returncode, r.stderr) == (0, b""), r  # -25: killed by SIGXFSZ
    assert r.stdout.decode().split(None, 2) == ["False", "True", "[]\n"], r.stdout
    assert (tmp_path / "log").read_bytes() == b""


def test_a_whole_write_is_true(tmp_path):
    from shim.writes import write_whole

    fd = os.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert write_whole(fd, b"abc") is True
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abc"
