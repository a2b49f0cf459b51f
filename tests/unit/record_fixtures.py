#!/usr/bin/python3
"""Record what the kernel answers the probes, once, for the unit tests (tests/unit/fixtures/).

    sudo /usr/bin/python3 tests/unit/record_fixtures.py          # every scenario
    sudo /usr/bin/python3 tests/unit/record_fixtures.py hints    # one

Each scenario runs in its own fresh network namespace (`unshare -n`: the machine's own rules are
never touched), is set up with the real iptables/nft binaries, and then every question a probe may
ask is put to the kernel, with the shim's own transports, and the raw replies are written down:

- nf_tables: the table dump, a GETCHAIN for each hint chain in `mangle` of ip and ip6, and a rule
  dump of each xtables table of ip and ip6 (present or not), each with every datagram of its reply;
- x_tables: /proc/net/ip{,6}_tables_names, and for each table listed there (and only those: asking
  for another would create it) IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES.

What the probes must conclude from them is written in the tests, not recorded. Re-record after a
change to what the probes ask (a request with no recording fails the unit tests and says so).
"""

import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(HERE, "fixtures")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# name: shell set-up with the real binaries (in a fresh netns).
SCENARIOS = {
    "empty": "true",
    "builtin-rules": (
        "iptables-nft -A INPUT -s 192.0.2.1 -j DROP; "
        "ip6tables-legacy -t raw -A PREROUTING -s 2001:db8::1 -j DROP"),
    "hints": (
        "ip6tables-nft -t mangle -N KUBE-IPTABLES-HINT; iptables-nft -t mangle -N OTHER; "
        "iptables-legacy -t mangle -N KUBE-KUBELET-CANARY; ip6tables-legacy -t mangle -N KUBE-IPTABLES-HINT; "
        "ip6tables-legacy -t mangle -N OTHER"),
    "empty-user-chains": (
        "iptables-nft -N U; ip6tables-nft -t nat -N V; "
        "iptables-legacy -N U; iptables-legacy -N U2; ip6tables-legacy -t nat -N V; iptables-legacy -t mangle -N OTHER"),
    "user-chain-rules": (
        # nft: a rule in a user chain only. legacy IPv4: three 152-byte rules and a 200-byte one
        # average a head plus a tail, so the table's figures fit "no rules" and its entries must be
        # read; legacy IPv6: one rule in a user chain, which the figures alone show.
        "iptables-nft -N U; iptables-nft -A U -j ACCEPT; "
        "iptables-legacy -N U; for i in 1 2 3; do iptables-legacy -A U -j ACCEPT; done; "
        "iptables-legacy -A U -p tcp --dport 80 -j ACCEPT; "
        "ip6tables-legacy -t raw -N W; ip6tables-legacy -t raw -A W -j ACCEPT"),
    # More rules in one table than one dump batch holds (8 KiB): a probe that stops at the first
    # rule leaves that dump running, and the kernel refuses the next dump on the socket (EBUSY).
    "long-dump": (
        "{ echo '*filter'; i=0; while [ $i -lt 60 ]; do echo \"-A INPUT -s 10.0.0.$i -j ACCEPT\"; i=$((i+1)); done; "
        "echo COMMIT; } | iptables-nft-restore; ip6tables-nft -t raw -A PREROUTING -j ACCEPT"),
    "not-iptables": (
        # nft tables iptables does not write, empty xtables tables, a hint chain outside mangle;
        # legacy: tables that exist with nothing in them.
        "nft add table inet firewalld; nft add chain inet firewalld c; nft add rule inet firewalld c counter accept; "
        "nft add table ip kube-proxy; nft add chain ip kube-proxy c; nft add rule ip kube-proxy c counter accept; "
        "nft add table inet mangle; nft add chain inet mangle KUBE-IPTABLES-HINT; "
        "nft add table ip filter; nft add chain ip filter KUBE-IPTABLES-HINT; "
        "nft add table ip6 raw; nft add table ip6 mangle; "
        "iptables-legacy -t raw -S; ip6tables-legacy -t security -S; ip6tables-legacy -t filter -S"),
}


def record_nft():
    """[{request, replies}] for every request the nft probe may send."""
    from shim.facts import nft_kernel as nk
    from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES

    nl = nk.Netlink()
    exchanges = []

    def exchange(req, done):
        nl.send(req)
        replies = []
        while True:
            data, _, _, _ = nl.sock.recvmsg(nk.RECV_SIZE)
            replies.append(data.hex())
            if any(done(kind) for kind, _, _ in nk.messages(data)):
                break
        exchanges.append({"request": req.hex(), "replies": replies})

    def end_of_dump(kind):
        return kind in (nk.NLMSG_DONE, nk.NLMSG_ERROR)

    def end_of_get(kind):
        return kind in (nk.NLMSG_ERROR, nk.NEWCHAIN)

    try:
        exchange(nk.request(nk.NFT_MSG_GETTABLE, nk.NLM_F_DUMP, 1, nk.NFPROTO_UNSPEC), end_of_dump)
        for nfproto in (nk.NFPROTO_IPV4, nk.NFPROTO_IPV6):
            for chain in HINT_CHAINS:
                attrs = nk.attr_str(nk.NFTA_CHAIN_TABLE, HINT_TABLE) + nk.attr_str(nk.NFTA_CHAIN_NAME, chain)
                exchange(nk.request(nk.NFT_MSG_GETCHAIN, 0, 1, nfproto, attrs), end_of_get)
            for table in XTABLES:
                exchange(nk.request(nk.NFT_MSG_GETRULE, nk.NLM_F_DUMP, 1, nfproto,
                                    nk.attr_str(nk.NFTA_RULE_TABLE, table)), end_of_dump)
    finally:
        nl.close()
    return exchanges


def record_legacy():
    """{family: {tables_names, sockopts}}: the /proc list and both socket options per listed table."""
    import _socket

    from shim.facts import legacy_kernel as lk

    opt = lk.Sockopt()
    out = {}
    for family, layout in lk.LAYOUTS.items():
        path = os.path.join("/proc", layout.names_file)
        try:
            with open(path) as f:
                names_text = f.read()
        except FileNotFoundError:
            out[family] = {"tables_names": None, "sockopts": []}
            continue
        sockopts = []
        sock = _socket.socket(layout.af, lk.SOCK_RAW, lk.IPPROTO_RAW)
        try:
            for table in names_text.split():
                request = table.encode("ascii").ljust(lk.IPT_GETINFO.size, b"\0")
                err, raw = opt.get(sock.fileno(), layout.level, lk.SO_GET_INFO, request)
                sockopts.append({"option": lk.SO_GET_INFO, "table": table, "request_len": len(request),
                                 "errno": err, "reply": raw.hex() if raw is not None else None})
                if err:
                    continue
                size = lk.Info(raw).size
                request = lk.IPT_GET_ENTRIES.pack(table.encode("ascii"), size) + bytes(size)
                err, raw = opt.get(sock.fileno(), layout.level, lk.SO_GET_ENTRIES, request)
                sockopts.append({"option": lk.SO_GET_ENTRIES, "table": table, "request_len": len(request),
                                 "errno": err, "reply": raw.hex() if raw is not None else None})
        finally:
            sock.close()
        out[family] = {"tables_names": names_text, "sockopts": sockopts}
    return out


def version(argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, env={"PATH": SYSTEM_PATH}).stdout.decode().strip()


def record(name):
    """In the private netns: set up, record, write fixtures/NAME.json."""
    setup = SCENARIOS[name]
    r = subprocess.run(["/bin/sh", "-ec", setup], env={"PATH": SYSTEM_PATH, "LC_ALL": "C"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode:
        raise SystemExit("%s: set-up failed: %s" % (name, r.stderr.decode()))
    fixture = {
        "scenario": name,
        "setup": setup,
        "recorded_with": {"kernel": platform.release(), "machine": platform.machine(),
                          "iptables": version(["iptables-nft", "--version"]), "nft": version(["nft", "--version"])},
        "nft": record_nft(),
        "legacy": record_legacy(),
    }
    with open(os.path.join(FIXTURES, name + ".json"), "w") as f:
        json.dump(fixture, f, indent=1, sort_keys=True)
        f.write("\n")


def main(args):
    if args[:1] == ["--in-netns"]:
        sys.path.insert(0, REPO)
        return record(args[1])
    if os.geteuid() != 0:
        raise SystemExit("run as root: each scenario is set up in its own network namespace")
    os.makedirs(FIXTURES, exist_ok=True)
    for name in args or sorted(SCENARIOS):
        if name not in SCENARIOS:
            raise SystemExit("no scenario %r (known: %s)" % (name, ", ".join(sorted(SCENARIOS))))
        subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), "--in-netns", name], check=True)
        print("recorded fixtures/%s.json" % name)


if __name__ == "__main__":
    main(sys.argv[1:])
