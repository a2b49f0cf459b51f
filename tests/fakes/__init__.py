"""The recording fake of a real iptables binary (tests/fakes/recording-fake), for the tests where
recording argv, PIDs or probes is the point: a directory of links to it named like real binaries, and
what it recorded."""

import os

RECORDING_FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recording-fake")


def recording_fakes(directory, names):
    """A directory of symlinks named like real binaries, each to the recording fake; its path."""
    os.makedirs(str(directory), exist_ok=True)
    for name in names:
        os.symlink(RECORDING_FAKE, os.path.join(str(directory), name))
    return str(directory)


def fake_runs(path):
    """The fake's log ($FAKE_LOG): one {pid, name, argc} per run; [] if none ran."""
    try:
        with open(str(path)) as f:
            return [dict(w.split("=", 1) for w in line.split()) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def fake_argv(path):
    """argv[1:] the fake saw ($FAKE_ARGV), as bytes, exactly."""
    with open(str(path), "rb") as f:
        data = f.read()
    return data.split(b"\0")[:-1] if data else []
