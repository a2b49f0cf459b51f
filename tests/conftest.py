"""Shared test set-up: the helper modules as pytest plugins, the shim reached through PATH, a private
cache dir.

The helpers, one module per concern:
- namespaces.py: network namespaces (`Netns`, the `netns` and `make_netns` fixtures, Python
  snippets run inside one);
- rootfs.py: stand-in containers without a container engine (`ChrootContainer`, `make_chroot`), and
  `sbin_dir`, a PATH directory standing for an image's /usr/sbin;
- shim_output.py: what the shim says on stderr (its one-line error, its debug line) and in syslog;
- fakes/: the recording fake of a real binary.
Every test that writes rules does so inside a netns made by namespaces.py: never in the machine's own.
"""

import os
import sys

import pytest

# Helpers assert too: their failures show the compared values (imported below before pytest would).
pytest.register_assert_rewrite("namespaces", "rootfs", "shim_output")

from namespaces import REPO, SYSTEM_PATH  # noqa: E402

if REPO not in sys.path:
    sys.path.insert(0, REPO)  # the checkout's shim, whatever the working directory

pytest_plugins = ["namespaces", "rootfs"]

BIN = os.path.join(REPO, "bin")
NOBODY = 65534
_OTHERS_BIN = []


def bin_for_other_users():
    """bin/ as a non-root caller (uid 65534) can run it: the checkout's own where that user can
    read it, else a world-readable copy of bin/ and shim/ under /var/tmp, made once per session
    and removed at exit. A checkout under /root (0700, where root naturally clones) is out of
    other users' reach; the copy is the same code."""
    if _OTHERS_BIN:
        return _OTHERS_BIN[0]
    import atexit
    import shutil
    import subprocess
    import tempfile

    readable = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                               "test", "-r", os.path.join(BIN, "iptables-shim")], check=False).returncode == 0
    if readable:
        _OTHERS_BIN.append(BIN)
        return BIN
    top = tempfile.mkdtemp(prefix="iptables-shim-checkout-", dir="/var/tmp")
    os.chmod(top, 0o755)
    for part in ("bin", "shim"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(top, part), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX,go-w", top], check=True)
    atexit.register(shutil.rmtree, top, True)
    _OTHERS_BIN.append(os.path.join(top, "bin"))
    return _OTHERS_BIN[0]


def shim_env(cache_dir, path=None, **extra):
    """Environment for a call through the shim: bin/ first on PATH, a private cache directory."""
    env = {
        "PATH": path if path is not None else BIN + ":" + SYSTEM_PATH,
        "IPTABLES_SHIM_CACHE_DIR": str(cache_dir),
        "LC_ALL": "C",
    }
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def cache_files(directory):
    """Names in the cache directory ([] if it does not exist)."""
    try:
        return sorted(os.listdir(str(directory)))
    except (FileNotFoundError, NotADirectoryError):
        return []


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "cache"
    return d
