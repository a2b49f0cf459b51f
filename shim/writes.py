"""The shim's own writes to files (the log, a cache entry): whole, or failed, never the call's end.

A file-size limit (`ulimit -f`, RLIMIT_FSIZE) makes the kernel send SIGXFSZ to a write past it, and
SIGXFSZ kills by default: the frozen tree's interpreter keeps the caller's dispositions
(packaging/launcher/main.c), so without this a caller's limit would stop the call before anything
ran. For the write SIGXFSZ is ignored; where the caller blocks it instead, the one this write
raised is discarded. Either way the caller's disposition, mask and pending signals are as they
were, for the real binary to inherit (tests/test_frozen_situations.py; the frozen launcher's C
route does the same: route.c route_write_whole).
"""

import posix
import sys


def write_whole(fd, data):
    """True when all of `data` was written to fd by one write(2); False on a short write or any
    error (EFBIG included). The frozen tree's launcher does it in C (route.c route_write_whole):
    importing the signal module reads all 64 dispositions, on a netns's first call."""
    if "_iptables_shim_route" in sys.builtin_module_names:
        import _iptables_shim_route

        return _iptables_shim_route.write_whole(fd, data)
    import _signal  # builtin; not `signal`, which imports enum

    sig = _signal.SIGXFSZ
    blocked = sig in _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
    pending = blocked and sig in _signal.sigpending()
    old = None if blocked else _signal.signal(sig, _signal.SIG_IGN)
    try:
        return posix.write(fd, data) == len(data)
    except OSError:
        return False
    finally:
        if old is not None:
            _signal.signal(sig, old)
        elif blocked and not pending and sig in _signal.sigpending():
            _signal.signal(sig, _signal.signal(sig, _signal.SIG_IGN))  # SIG_IGN discards it
