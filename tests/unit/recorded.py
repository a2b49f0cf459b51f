"""Kernel replies recorded once (tests/unit/record_fixtures.py), replayed with no kernel.

`NetlinkReplay` stands in for nft_kernel.Netlink, `SockoptReplay` for a family's getsockopt in
legacy_kernel; `proc_tree` writes the recorded /proc/net/ip{,6}_tables_names. Both replays answer
a request only with what the kernel answered the same request when recorded, and fail the test,
naming the request, for any other: a probe that asks something new needs a new recording.
Requests are decoded here with struct and the kernel's layouts, independently of the shim's own.
"""

import json
import os
import struct

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SCENARIOS = sorted(name[:-5] for name in os.listdir(FIXTURES) if name.endswith(".json"))
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NFGENMSG_LEN = 4
RERECORD = "not in the recording: re-record with tests/unit/record_fixtures.py"


def load(name):
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return json.load(f)


def with_seq(message, seq):
    length, kind, flags, _, pid = NLMSGHDR.unpack_from(message)
    return NLMSGHDR.pack(length, kind, flags, seq, pid) + message[NLMSGHDR.size:]


def split_messages(data):
    """The netlink messages of a datagram, as bytes."""
    out, offset = [], 0
    while offset + NLMSGHDR.size <= len(data):
        length = NLMSGHDR.unpack_from(data, offset)[0]
        out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


def describe(message):
    """A readable name for a request: message type, nf family and its attributes, in hex."""
    _, kind, flags, _, _ = NLMSGHDR.unpack_from(message)
    return "type %#x flags %#x family %d attrs %s" % (kind, flags, message[NLMSGHDR.size],
                                                      message[NLMSGHDR.size + NFGENMSG_LEN:].hex())


NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
EBUSY = 16


class NetlinkReplay(object):
    """nft_kernel.Netlink's methods over a fixture's recorded exchanges. Requests are matched with
    their sequence number left out; each reply message gets the new request's number. The replies
    of every request sent queue up in order, as the kernel's do on one socket (a dump the probe
    stops reading stays queued, and the probe must skip it). As in the kernel, a dump is produced
    one batch per read: one whose last batch has not been produced yet is still running, and a
    second dump request on the socket is refused with EBUSY (netlink_dump_start)."""

    def __init__(self, fixture):
        self.answers = {}
        for exchange in fixture["nft"]:
            request = with_seq(bytes.fromhex(exchange["request"]), 0)
            self.answers[request] = [bytes.fromhex(d) for d in exchange["replies"]]
        self.seq = 0
        self.sent = []  # describe() of each request, in order ("reopen" where the socket was)
        self.closed = False
        self.reopen()
        self.sent = []

    def reopen(self):
        """A new socket: nothing queued, no dump running."""
        self.queue = []  # (dump number or None, datagram)
        self.dumps = []  # per dump: [datagrams, datagrams read]
        self.dumping = False  # the probe's own flag (nft_kernel.Netlink)
        self.sent.append("reopen")

    def kernel_dump_running(self):
        """Is the last batch of a dump still to be made (one per read, the first at the request)?"""
        return any(read < total - 1 for total, read in self.dumps)

    def next_seq(self):
        self.seq += 1
        return self.seq

    def send(self, *requests):
        for message in split_messages(b"".join(requests)):
            seq = NLMSGHDR.unpack_from(message)[3]
            key = with_seq(message, 0)
            self.sent.append(describe(message))
            assert key in self.answers, "request %s %s" % (describe(message), RERECORD)
            dump = None
            if NLMSGHDR.unpack_from(message)[2] & NLM_F_DUMP == NLM_F_DUMP:
                if self.kernel_dump_running():
                    error = struct.pack("=i", -EBUSY) + message[:NLMSGHDR.size]
                    self.queue.append((None, with_seq(NLMSGHDR.pack(NLMSGHDR.size + len(error), NLMSG_ERROR, 0, 0, 0)
                                                      + error, seq)))
                    continue
                dump = len(self.dumps)
                self.dumps.append([len(self.answers[key]), 0])
            for datagram in self.answers[key]:
                self.queue.append((dump, b"".join(with_seq(m, seq) for m in split_messages(datagram))))

    def replies(self):
        from shim.facts.nft_kernel import messages

        while True:
            assert self.queue, "the probe waits for a reply the kernel would never send"
            dump, datagram = self.queue.pop(0)
            if dump is not None:
                self.dumps[dump][1] += 1
            for message in messages(datagram):
                yield message

    def close(self):
        self.closed = True


class SockoptReplay(object):
    """`ask(option, data) -> (errno, bytes)` for one family, as legacy_kernel.family_state takes
    it, over a fixture's recorded socket options. `errors` overrides the answer per (option,
    table): a list of errnos handed out first, one per call. `asked` lists (option, table)."""

    def __init__(self, fixture, family, errors=None):
        self.answers = {}
        for s in fixture["legacy"][family]["sockopts"]:
            reply = bytes.fromhex(s["reply"]) if s["reply"] is not None else None
            self.answers[(s["option"], s["table"])] = (s["request_len"], s["errno"], reply)
        self.errors = {key: list(errnos) for key, errnos in (errors or {}).items()}
        self.asked = []

    def __call__(self, option, data):
        table = data[:32].split(b"\0", 1)[0].decode("ascii")
        key = (option, table)
        self.asked.append(key)
        if self.errors.get(key):
            return self.errors[key].pop(0), None
        assert key in self.answers, "getsockopt %d of table %r %s" % (option, table, RERECORD)
        request_len, err, reply = self.answers[key]
        assert len(data) == request_len, "getsockopt %d of %r with %d bytes, recorded with %d: %s" % (
            option, table, len(data), request_len, RERECORD)
        return err, reply


def proc_tree(tmp_path, fixture):
    """A directory standing in for /proc with the recorded /proc/net/ip{,6}_tables_names."""
    from shim.facts.legacy_kernel import LAYOUTS

    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    for family, recorded in fixture["legacy"].items():
        if recorded["tables_names"] is not None:
            (proc / LAYOUTS[family].names_file).write_text(recorded["tables_names"])
    return str(proc)


class FamilyReplay(object):
    """legacy_kernel's `ask_family` over the recording: family_state() with a SockoptReplay per
    family. `replays` keeps them, to see what was asked."""

    def __init__(self, fixture, errors=None):
        self.fixture = fixture
        self.errors = errors
        self.replays = {}
        self.wants = []

    def __call__(self, layout, names, want_rules=True, want_hint=True):
        from shim.facts.legacy_kernel import LAYOUTS, family_state

        family = [f for f, known in LAYOUTS.items() if known is layout][0]
        replay = self.replays.setdefault(family, SockoptReplay(self.fixture, family, self.errors))
        self.wants.append((family, want_rules, want_hint))
        return family_state(layout, names, replay, want_rules, want_hint)
