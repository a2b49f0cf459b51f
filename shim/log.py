"""What the shim says about a call, never on the caller's streams (docs/configuration.md#logging).

Callers parse stdout and stderr (dockerd takes any output of `iptables -N` as a failure), so a call
is recorded in a log file (IPTABLES_SHIM_LOG: one line per call, one write(2) on an O_APPEND
descriptor, so concurrent calls never interleave), and each new decision for a netns in the system
log (/dev/log: `journalctl -t iptables-shim`), silently skipped where there is none.
"""

import posix

SYSLOG_SOCKET = "/dev/log"
TAG = "iptables-shim"
SYSLOG_PRIORITY = 3 * 8 + 5  # facility daemon, severity notice
MAX_LINE = 4000  # below PIPE_BUF-sized records and syslog's 8 KiB datagrams alike
# A call's line, and its record in the log file (the frozen launcher's C route writes the same).
LINE_FORMAT = "%s -> %s: %s (step %d: %s; %s; netns %s)"
RECORD_FORMAT = "%s pid=%d %s\n"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


# A control character (a newline in a directory's name) as \xNN: one line per call, and no path
# can forge another call's line (tests/test_fast_route_situations.py, placement "newline").
CONTROL = {c: "\\x%02x" % c for c in list(range(0x20)) + [0x7f]}


def format_line(name, binary, decision, how, netns_key):
    """The one line describing a call: `NAME -> BINARY: BACKEND (step N: REASON; HOW; netns KEY)`."""
    line = LINE_FORMAT % (name, binary, decision.backend, decision.step, decision.reason, how, netns_key)
    return line.translate(CONTROL)


def parse_line(line):
    """The fields of a line made by format_line (after any prefix up to `iptables-shim: ` or a
    timestamp): {name, binary, backend, step, reason, how, netns}; None if it is not one."""
    head, sep, rest = line.partition(" -> ")
    if not sep:
        return None
    name = head.rsplit(" ", 1)[-1]
    binary, sep, rest = rest.partition(": ")
    backend, sep2, rest = rest.partition(" (step ")
    if not sep or not sep2 or not rest.endswith(")"):
        return None
    step, _, rest = rest[:-1].partition(": ")
    reason_how, _, netns = rest.rpartition("; netns ")
    reason, _, how = reason_how.rpartition("; ")
    if not step.isdigit():
        return None
    return {"name": name, "binary": binary, "backend": backend, "step": int(step), "reason": reason,
            "how": how, "netns": netns}


def _clip(text):
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "..."


def append(path, text):
    """One line at the end of the log file; False when it cannot be written (never an error, nor
    a signal, the call goes on: shim.writes)."""
    import time

    from shim.writes import write_whole

    line = RECORD_FORMAT % (time.strftime(TIME_FORMAT), posix.getpid(), _clip(text))
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_NOFOLLOW
                        | posix.O_CLOEXEC | posix.O_NONBLOCK, 0o640)
    except OSError:
        return False
    try:
        return write_whole(fd, line.encode("utf-8", "surrogateescape"))
    finally:
        posix.close(fd)


def syslog(text, socket_path=SYSLOG_SOCKET):
    """One message to the system log socket; False where there is none (or it refuses)."""
    if socket_path == "off":
        return False
    try:
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    except (ImportError, OSError):
        return False
    try:
        sock.setblocking(False)  # a stuck log daemon must not hold up an iptables call
        message = "<%d>%s[%d]: %s" % (SYSLOG_PRIORITY, TAG, posix.getpid(), _clip(text))
        # MSG_NOSIGNAL: a write of the shim's own never raises SIGPIPE (shim.writes).
        sock.sendto(message.encode("utf-8", "surrogateescape"), _socket.MSG_NOSIGNAL, socket_path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def caller_command(proc="/proc"):
    """The command line of the process that called the shim (its parent), for the system log."""
    try:
        fd = posix.open("%s/%d/cmdline" % (proc, posix.getppid()), posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        data = posix.read(fd, 1024)
    except OSError:
        data = b""
    finally:
        posix.close(fd)
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") or "?"
