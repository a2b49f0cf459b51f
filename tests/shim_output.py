"""What the shim says, read back: its own one-line failure, its debug line (IPTABLES_SHIM_DEBUG=1,
parsed by shim.log.parse_line, which sits next to the formatter that writes it), and a private
syslog socket standing for /dev/log."""

import socket

from shim.log import parse_line
from shim.tools import CLI_NAME

ERROR_PREFIX = CLI_NAME + ": "
SHIM_FAILED = 127  # docs/decision.md: the shim's own failures exit 127 and execute nothing


def is_shim_error(proc, returncode=SHIM_FAILED):
    """The shim's own failure: `returncode` (None: any but 0), nothing on stdout, exactly one
    stderr line starting `iptables-shim: `."""
    err = proc.stderr.decode("utf-8", "replace")
    exited = proc.returncode != 0 if returncode is None else proc.returncode == returncode
    return (exited and proc.stdout == b"" and err.endswith("\n")
            and err.count("\n") == 1 and err.startswith(ERROR_PREFIX))


def shim_error_line(proc, returncode=SHIM_FAILED):
    """Assert the shim's own failure (see is_shim_error) and return that one line."""
    err = proc.stderr.decode("utf-8", "replace")
    assert is_shim_error(proc, returncode), (proc.returncode, proc.stdout, err)
    return err.rstrip("\n")


def debug_lines(stderr):
    """The shim's debug lines in stderr (bytes or text), each as shim.log.parse_line's fields."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    found = (parse_line(line) for line in stderr.splitlines() if line.startswith(ERROR_PREFIX))
    return [fields for fields in found if fields is not None]


def debug_line(proc):
    """The one debug line of a call run with IPTABLES_SHIM_DEBUG=1 (must be there)."""
    found = debug_lines(proc.stderr)
    assert found, proc.stderr
    return found[0]


class SyslogSink(object):
    """A private datagram socket standing for /dev/log (IPTABLES_SHIM_SYSLOG_SOCKET=its path)."""

    def __init__(self, path, timeout=0.5):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(timeout)

    def messages(self):
        """What arrived until `timeout` passes without a message."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except socket.timeout:
                return out

    def close(self):
        self.sock.close()
