"""The audit's three outputs: a table with a summary, JSON, and a node_exporter textfile."""

import os

from shim.doctor.problems import KINDS
from shim.tools import BACKENDS

METRIC = "iptables_shim_doctor"


def to_json(value):
    """JSON also on python3-minimal, which has no json module (shim.jsontext)."""
    from shim.jsontext import dumps

    return dumps(value)


# -- the table -------------------------------------------------------------------------------------

def who_text(ns):
    if ns.get("initial"):
        head = "initial"
    elif ns.get("names"):
        head = ns["names"][0]
    elif ns.get("paths"):
        head = ns["paths"][0]
    elif ns["inode"]:
        head = "netns:[%d]" % ns["inode"]
    else:
        head = "processes"
    procs = ns.get("processes") or []
    containers = sorted(set(p["container"][:12] for p in procs if p.get("container")))
    pods = sorted(set(p["pod"] for p in procs if p.get("pod")))
    extra = []
    if pods:
        extra.append("pod " + ",".join(pods))
    if containers:
        extra.append("ctr " + ",".join(containers))
    if procs and (ns.get("initial") or len(procs) > 3):
        extra.append("%d processes" % len(procs))
    elif procs:
        extra.append(" ".join("%d(%s)" % (p["pid"], p.get("comm", "?")) for p in procs))
    return head + (" " + " ".join(extra) if extra else "")


def _backend_text(summary):
    if summary is None:
        return "-"
    def v(x):
        return {True: "y", False: "n", None: "?"}[x]
    return "rules=%s hint=%s" % (v(summary["rules"]), v(summary["hint"]))


def _decision_text(ns):
    d = ns.get("decision") or {}
    c = ns.get("container_decision") or {}
    if not d and not c:
        return "-"
    here = "%s/%s" % (d["backend"], d["step"]) if d.get("backend") else "error"
    there = "%s/%s" % (c["backend"], c["step"]) if c.get("backend") else "error"
    return here if here == there else "%s ctr:%s" % (here, there)


def table(report):
    rows = [("WHO", "NFT", "LEGACY", "DECISION", "PROBLEMS")]
    for ns in report["namespaces"]:
        s = ns.get("summary") or {}
        if ns["state"] == "gone":
            problems = "gone: " + ns.get("why", "")
        else:
            kinds = []
            for p in ns["problems"]:
                if p["kind"] not in kinds:
                    kinds.append(p["kind"])
            problems = ",".join(kinds) or "ok"
        rows.append((who_text(ns), _backend_text(s.get("nft")), _backend_text(s.get("legacy")),
                     _decision_text(ns), problems))
    widths = [min(48, max(len(r[i]) for r in rows)) for i in range(4)]
    lines = []
    for r in rows:
        cells = [r[i][:widths[i]].ljust(widths[i]) for i in range(4)] + [r[4]]
        lines.append("  ".join(cells).rstrip())
    details = [(ns, p) for ns in report["namespaces"] for p in ns.get("problems", ())]
    if details:
        lines.append("")
    for ns, p in details:
        lines.append("%s: %s: %s" % (who_text(ns).split(" ", 1)[0], p["kind"], p["detail"]))
    lines.append("")
    lines.append(summary_line(report["counts"], report["duration_seconds"]))
    for hidden in report.get("hidden_processes", ()):
        lines.append("not audited: the network namespace of PID %s (%s; their namespaces are audited "
                     "where a name or another process leads to them)"
                     % (",".join(str(p) for p in hidden["pids"][:10]) + (",..." if len(hidden["pids"]) > 10
                                                                          else ""), hidden["why"]))
    lines.append("decision: backend/step the node's own iptables would use there (ctr: a caller in "
                 "a container, which the cache serves); docs/doctor.md")
    return "\n".join(lines) + "\n"


def summary_line(c, duration):
    """The table's last word: `c` is the report's counts."""
    found = ", ".join("%s %d" % (k, c["problems"][k]) for k in KINDS if c["problems"][k])
    return "%d namespace%s audited, %d gone during the audit, %d with problems in %.2f s%s" % (
        c["audited"], "" if c["audited"] == 1 else "s", c["gone"], c["with_problems"], duration,
        ": " + found if c["with_problems"] else "")


# -- node_exporter textfile collector ------------------------------------------------------------

def prometheus(report):
    c = report["counts"]
    lines = [
        "# HELP %s_namespaces_with_problem Network namespaces having this problem at the last audit." % METRIC,
        "# TYPE %s_namespaces_with_problem gauge" % METRIC,
    ]
    for kind in KINDS:
        lines.append('%s_namespaces_with_problem{problem="%s"} %d' % (METRIC, kind, c["problems"][kind]))
    for name, help_text, value in (
        ("namespaces_audited", "Network namespaces audited.", c["audited"]),
        ("namespaces_gone", "Network namespaces that disappeared during the audit.", c["gone"]),
        ("duration_seconds", "How long the audit took.", report["duration_seconds"]),
        ("last_run_timestamp_seconds", "When the audit finished (Unix time).", report["finished"]),
    ):
        lines.append("# HELP %s_%s %s" % (METRIC, name, help_text))
        lines.append("# TYPE %s_%s gauge" % (METRIC, name))
        lines.append("%s_%s %s" % (METRIC, name, _number(value)))
    return "\n".join(lines) + "\n"


def _number(value):
    return "%d" % value if isinstance(value, int) else "%.6f" % value


def write_atomically(path, text):
    """Replace `path` whole: a temporary file in the same directory, then rename, so that a
    collector never reads half a file. The temporary name starts with a dot and does not end in
    .prom, so node_exporter's textfile collector never picks it up."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%d.tmp" % (base, os.getpid()))
    data = text.encode("utf-8")
    try:
        os.unlink(tmp)  # left by a run that died with the same PID
    except OSError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
