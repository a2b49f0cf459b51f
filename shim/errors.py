"""The one exception the shim raises for its own failures."""


class ShimError(Exception):
    """A failure of the shim itself: the caller sees one `iptables-shim:` line and nothing runs."""

    exit_code = 127  # "nothing could be executed", as a shell reports a missing command
