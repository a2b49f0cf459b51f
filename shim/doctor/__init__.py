"""`iptables-shim doctor`: audit every network namespace of the node for rules split between the
backends, and for what else makes the next iptables call go wrong (docs/doctor.md).

namespaces -> enter each (a forked child, setns) -> read there (reading.read_here: kernel records
and shim.resolve.resolve) -> problems (pure) -> table, JSON, Prometheus textfile. Touches nothing.
"""

import os
import sys
import time

from shim.errors import ShimError

USAGE = "usage: iptables-shim doctor [--json] [--prometheus FILE] [--every SECONDS] [--netns PATH]..."
MAX_PARALLEL = 4


class DoctorError(ShimError):
    """The audit itself could not run: one `iptables-shim:` line, exit 2."""

    exit_code = 2


class Options(object):
    __slots__ = ("as_json", "prometheus", "netns", "every")

    def __init__(self):
        self.as_json = False
        self.prometheus = None
        self.netns = []
        self.every = None  # seconds between audits, for a container with no shell (deploy/kubernetes)


def parse(args):
    opts = Options()
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            opts.as_json = True
        elif arg in ("--prometheus", "--netns"):
            if not rest or not rest[0]:
                raise DoctorError("%s needs a path; %s" % (arg, USAGE))
            value = rest.pop(0)
            if arg == "--netns":
                opts.netns.append(value)
            else:
                opts.prometheus = value
        elif arg.startswith("--prometheus="):
            opts.prometheus = arg.split("=", 1)[1]
        elif arg.startswith("--netns="):
            opts.netns.append(arg.split("=", 1)[1])
        elif arg == "--every" or arg.startswith("--every="):
            value = arg.split("=", 1)[1] if "=" in arg else (rest.pop(0) if rest else "")
            if not value.isdigit() or int(value) < 1:
                raise DoctorError("--every takes a whole number of seconds, such as 300; %s" % USAGE)
            opts.every = int(value)
        else:
            raise DoctorError("unexpected argument %r; %s" % (arg, USAGE))
    return opts


def load_settings(tree=None):
    """The node's own settings (environment, /etc/iptables-shim.conf, the frozen tree's file), as a
    call started from here would read them."""
    from shim.config import load_settings as load

    try:
        settings = load(os.environ, tree)
    except ShimError as e:
        raise DoctorError(str(e))
    return settings


def parallelism():
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_PARALLEL, cpus))


def describe(ns, proc):
    """The `who` part of a namespace's report."""
    from shim.doctor.namespaces import process_info

    return {
        "inode": ns.ident[1],
        "initial": ns.initial,
        "names": list(ns.names),
        "paths": list(ns.explicit),
        "processes": [process_info(p, proc) for p in ns.pids],
    }


def audit(opts, settings, shim_path, proc="/proc"):
    """The report as plain data."""
    from shim.doctor import enter, namespaces, problems, reading

    started = time.monotonic()
    if opts.netns:
        try:
            found = namespaces.given(opts.netns, proc)
        except namespaces.NotANamespace as e:
            raise DoctorError(str(e))
        stale, hidden = [], {}
    else:
        found, stale, hidden = namespaces.enumerate_all(proc)
    try:
        own = os.stat(proc + "/self/ns/net")
        own = (own.st_dev, own.st_ino)
    except OSError:
        own = None

    entries = [describe(ns, proc) for ns in found]
    # This process's own netns is read here first, without a child: every module and lazily built
    # state the reading needs is then loaded once, and every worker inherits it (a worker importing
    # the cold path itself cost ~30 ms). Needs no CAP_SYS_ADMIN either.
    try:
        here = {"ok": reading.read_here(settings, shim_path, proc)}
    except Exception as e:  # as a child would report it
        here = {"error": "%s: %s" % (type(e).__name__, e)}
    node_decision = reading.node_decision_everywhere(here["ok"]) if "ok" in here else None

    setns = enter.setns_function()

    def read_in(key):
        """In a worker: join namespace `key` through a path that still leads to it, and read."""
        fd, why = namespaces.open_namespace(found[key], proc)
        if fd is None:
            return {"gone": why}
        try:
            enter.join(setns, fd)
        except OSError as e:
            return {"enter_error": e.strerror or str(e), "errno": e.errno or 0}
        finally:
            os.close(fd)
        return {"ok": reading.read_here(settings, shim_path, proc, node_decision)}

    results = enter.run_all([i for i, ns in enumerate(found) if ns.ident != own], read_in,
                            parallel=parallelism())
    for i, ns in enumerate(found):
        if ns.ident == own:
            results[i] = here
    for i, entry in enumerate(entries):
        result = results.get(i) or {"error": "no result"}
        if "gone" in result:
            entry.update(state="gone", why=result["gone"], problems=[])
        elif "ok" in result:
            data = result["ok"]
            data.pop("decision_source", None)
            entry.update(data)
            entry["state"] = "audited"
            entry["summary"] = problems.summary(data["backends"])
            entry["problems"] = [{"kind": k, "detail": d}
                                 for k, d in problems.find(data, entry["initial"])]
        else:
            why = result.get("enter_error") or result.get("error")
            if result.get("errno") == 1:
                why = "cannot enter it: %s (needs root: CAP_SYS_ADMIN)" % why
            elif result.get("errno") == 22:
                why = "cannot enter it: not a network namespace"
            elif "enter_error" in result:
                why = "cannot enter it: %s" % why
            entry.update(state="unreadable", why=why,
                         problems=[{"kind": problems.UNREADABLE, "detail": why}])
    entries = merge_by_cookie(entries)
    for path in stale:
        entries.append({"inode": 0, "initial": False, "names": [path], "paths": [], "processes": [],
                        "state": "gone", "why": "a name left without a namespace", "problems": []})
    for why, pids in sorted(hidden.items()):
        if os.geteuid() == 0:
            continue  # hidden even from root (a security module): listed apart, not a problem
        detail = ("the network namespace of %d processes could not be read (%s): run as root"
                  % (len(pids), why))
        entries.append({"inode": 0, "initial": False, "names": [], "paths": [],
                        "processes": [{"pid": p} for p in pids], "state": "unreadable", "why": detail,
                        "problems": [{"kind": problems.UNREADABLE, "detail": detail}]})
    counts = {"audited": sum(1 for e in entries if e["state"] != "gone" and e["inode"]),
              "gone": sum(1 for e in entries if e["state"] == "gone"),
              "with_problems": sum(1 for e in entries if e["problems"]),
              "problems": {k: sum(1 for e in entries if any(p["kind"] == k for p in e["problems"]))
                           for k in problems.KINDS}}
    return {"namespaces": entries, "counts": counts,
            "hidden_processes": [{"why": why, "pids": pids} for why, pids in sorted(hidden.items())],
            "duration_seconds": round(time.monotonic() - started, 6), "finished": int(time.time())}


def merge_by_cookie(entries):
    """Two nsfs files with one cookie are one namespace (the inode identifies a namespace only at
    one instant; the cookie for the whole boot)."""
    seen = {}
    out = []
    for e in entries:
        cookie = e.get("cookie")
        if cookie and cookie in seen:
            first = seen[cookie]
            first["names"] += [n for n in e["names"] if n not in first["names"]]
            first["paths"] += [p for p in e["paths"] if p not in first["paths"]]
            first["processes"] += e["processes"]
            continue
        if cookie:
            seen[cookie] = e
        out.append(e)
    return out


def run(args, shim_path, tree=None):
    """`iptables-shim doctor ...`: 0 no problem, 1 problems found, 2 the audit could not run."""
    from shim.doctor import output

    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE + "\n")
        return 0
    opts = parse(args)
    settings = load_settings(tree)
    while True:
        report = audit(opts, settings, shim_path)
        if opts.prometheus:
            try:
                output.write_atomically(opts.prometheus, output.prometheus(report))
            except OSError as e:
                raise DoctorError("cannot write %s: %s" % (opts.prometheus, e.strerror or e))
        sys.stdout.write(output.to_json(report) + "\n" if opts.as_json else output.table(report))
        sys.stdout.flush()
        if opts.every is None:
            return 1 if report["counts"]["with_problems"] else 0
        time.sleep(opts.every)
