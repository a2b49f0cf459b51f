"""`iptables-shim`: the shim's own command, for people and tools asking why.

Every verb works on Debian's python3-minimal (no `json` module: shim.jsontext) or says in one
`iptables-shim:` line what it lacks. Started by shim.main, which owns the process's environment
and hands it in: this module imports nothing of main (tests/unit/test_imports.py)."""

import sys

from shim.errors import ShimError
from shim.tools import BACKENDS

USAGE = ("usage: iptables-shim explain [--json] [--family iptables|ip6tables] | doctor [--json] "
         "[--prometheus FILE] [--every SECONDS] [--netns PATH]... | install DIR|--alternatives | uninstall DIR|--alternatives")


def explain_report(family, environ, shim_path, tree=None):
    """Every fact, the decision and the step that made it, the cache entry: as plain data. From
    the one resolution a call of `family` makes (shim.resolve), with every fact gathered."""
    from shim.config import MODE, load_settings
    from shim.resolve import resolve

    settings = load_settings(environ, tree)
    r = resolve(family, settings, shim_path, consult_cache=False, gather_all=True)
    c = r.caller
    d = r.decision
    return {
        "family": family,
        "shim": shim_path,
        "path": r.path_dirs or [],
        "binaries": r.found or {},
        "default_alias": {"name": c.alias_name if c else None, "path": c.alias_path if c else None,
                          "backend": c.alias_backend if c else None, "how": c.alias_how if c else None},
        "context": {"value": c.context if c else None, "why": c.context_why if c else None},
        "privilege": {"net_admin": c.privileged if c else None, "why": c.privilege_why if c else None},
        "kernel_support": {b: {"value": (c.support or {}).get(b), "why": (c.support_why or {}).get(b)}
                           for b in BACKENDS} if c else {},
        "netns": {"kind": r.netns_kind, "key": r.cache_key},
        "backends": {b: r.states[b].as_dict() for b in BACKENDS} if r.states else {},
        "mode_override": settings.get(MODE),
        "decision": None if d is None else {"backend": d.backend, "step": d.step, "reason": d.reason,
                                            "cacheable": d.cacheable, "source": r.source},
        "runs": r.binary if r.binary else "error: %s" % r.error,
        "route": answering_route(family),
        "warnings": readability_warnings(d.backend, r, environ) if d else [],
        "cache": {"dir": r.cache_dir, "entry": None if r.cached is None else
                  {"backend": r.cached[0], "step": r.cached[1], "reason": r.cached[2]}},
    }


def answering_route(name):
    """Which route answers a call of `name` here and now: the frozen launcher's C route, before
    Python starts (packaging/launcher/route.c, asked through its builtin module), or Python, and
    why not the C one (docs/decision.md#two-routes)."""
    try:
        import _iptables_shim_route
    except ImportError:
        return {"route": "python", "runs": None,
                "why": "the source shim (bin/) has no launcher: Python answers every call"}
    binary, why = _iptables_shim_route.settle(name)
    if binary is None:
        return {"route": "python", "runs": None, "why": why}
    return {"route": "launcher", "runs": binary, "why": "a settled answer: the C route runs it before Python starts"}


# What a `*-save` binary prints for kernel state it cannot parse: iptables-nft 1.8.7 (bullseye)
# against a table that 1.8.9 wrote with native expressions (`-p tcp --dport 80:90`), or a match
# revision newer than its extensions know.
UNREADABLE = ("is incompatible", "[unsupported revision]")


def readability_warnings(backend, r, environ):
    """Run the chosen backend's save binaries (explain only: never on a call's path) and report
    what they cannot read in this netns. Legacy is read only where its tables already exist, nft
    only where nf_tables is known to be there (a *-save binary loads modules)."""
    import subprocess

    from shim.facts.binaries import REENTRY_MARKER
    from shim.facts.rules import trace
    from shim.gather import save_binaries

    if trace(backend) is not True:
        return []
    warnings = []
    alias_backend = r.caller.alias_backend if r.caller else None
    for family, path in sorted(save_binaries(backend, r.found or {}, alias_backend).items()):
        if not path:
            continue
        run_env = dict(environ)
        run_env[REENTRY_MARKER] = "iptables-shim explain"
        try:
            proc = subprocess.run([path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=run_env, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            warnings.append("%s could not be run to check it can read this netns: %s" % (path, e))
            continue
        bad = [l.strip("# ").strip() for l in proc.stdout.decode("utf-8", "replace").splitlines()
               if any(u in l for u in UNREADABLE)]
        if bad:
            warnings.append(
                "%s cannot read what this netns holds (%s): it was written by a newer iptables or "
                "by nft; listing, saving or restoring through this binary will fail or lose rules. "
                "Use an iptables at least as new as the one that wrote them (often the host's)."
                % (path, "; ".join(sorted(set(bad))[:3]))
            )
    return warnings


def format_text(r):
    d = r["decision"]
    lines = [
        "decision:      %s" % ("%s (step %d: %s)" % (d["backend"], d["step"], d["reason"]) if d else "none"),
        "runs:          %s" % r["runs"],
        "route:         %s (%s)" % (r["route"]["route"], r["route"]["why"]),
        "context:       %s (%s)" % (r["context"]["value"], r["context"]["why"]),
        "privilege:     %s (%s)" % ({True: "yes", False: "no", None: "unknown"}[r["privilege"]["net_admin"]],
                                    r["privilege"]["why"]),
        "netns:         %s (%s)" % (r["netns"]["kind"], r["netns"]["key"]),
    ]
    for b in BACKENDS:
        s = r["backends"].get(b)
        k = r["kernel_support"].get(b) or {}
        if s:
            lines.append("%-14s rules=%s hint=%s (from %s)" % (b + ":", s["rules"], s["hint"], s["source"]))
        lines.append("%-14s kernel support %s (%s)" % ("", k.get("value") or "unknown", k.get("why") or "not read"))
    a = r["default_alias"]
    lines.append("default alias: %s" % ("%s -> %s (by %s)" % (a["path"], a["backend"], a["how"])
                                        if a["path"] else "none on PATH"))
    lines.append("override:      %s" % ("IPTABLES_SHIM_MODE=%s" % r["mode_override"]
                                        if r["mode_override"] else "none"))
    c = r["cache"]
    lines.append("cache:         %s" % ("off" if not c["dir"] else "%s, entry for this netns: %s" % (
        c["dir"], "%(backend)s (step %(step)d: %(reason)s)" % c["entry"] if c["entry"] else "none")))
    lines.append("PATH searched: %s" % ":".join(r["path"]))
    lines[2:2] = ["warning:       %s" % w for w in r["warnings"]]
    for name in sorted(r["binaries"]):
        lines.append("  %-24s %s" % (name, r["binaries"][name]))
    return "\n".join(lines) + "\n"


def run_install(rest, environ, shim_path):
    """install DIR | --alternatives: one line per name or group, saying what was done; a warning
    when calls of iptables on this PATH would not reach DIR."""
    from shim import install

    if rest == ["--alternatives"]:
        for group, path, action in install.install_alternatives(shim_path):
            sys.stdout.write("%s alternative: %s (%s)\n" % (group, path, action))
        return 0
    if len(rest) != 1 or rest[0].startswith("-"):
        raise ShimError("install takes one directory, such as /usr/local/sbin, or --alternatives; %s" % USAGE)
    for name, path, action in install.install(rest[0], shim_path):
        sys.stdout.write("%s: %s\n" % (path, "link created" if action == "create" else "already this shim"))
    warning = install.path_warning(rest[0], shim_path, environ.get("PATH"))
    if warning:
        sys.stderr.write("iptables-shim: warning: %s\n" % warning)
    return 0


def run_uninstall(rest, shim_path):
    """uninstall DIR | --alternatives: undo what the same install did, and nothing else."""
    from shim import install

    if rest == ["--alternatives"]:
        done = install.uninstall_alternatives(shim_path)
        for group, value, action in done:
            sys.stdout.write("%s alternative: %s (%s)\n" % (group, value, action))
        if not done:
            sys.stdout.write("alternatives: the shim is not installed there; nothing to undo\n")
        return 0
    if len(rest) != 1 or rest[0].startswith("-"):
        raise ShimError("uninstall takes the directory given to install, or --alternatives; %s" % USAGE)
    done = install.uninstall(rest[0], shim_path)
    for name, path, action in done:
        if action == "removed":
            sys.stdout.write("%s: link removed\n" % path)
    if not any(action == "removed" for _, _, action in done):
        sys.stdout.write("%s: no link of this shim there; nothing to undo\n" % rest[0])
    return 0


def run_explain(rest, environ, shim_path, tree):
    from shim.jsontext import dumps

    as_json = "--json" in rest
    family = "iptables"
    unknown = [a for a in rest if a != "--json"]
    if unknown[:1] == ["--family"] and len(unknown) == 2 and unknown[1] in ("iptables", "ip6tables"):
        family, unknown = unknown[1], []
    if unknown:
        raise ShimError("unexpected argument %r; %s" % (unknown[0], USAGE))
    report = explain_report(family, environ, shim_path, tree)
    sys.stdout.write(dumps(report) + "\n" if as_json else format_text(report))
    return 0


def run_doctor(rest, environ, shim_path, tree):
    try:
        from shim import doctor
    except ImportError as e:
        raise ShimError("doctor cannot run here: %s" % e)
    return doctor.run(rest, shim_path, tree)


VERBS = {
    "explain": run_explain,
    "doctor": run_doctor,
    "install": lambda rest, environ, shim_path, tree: run_install(rest, environ, shim_path),
    "uninstall": lambda rest, environ, shim_path, tree: run_uninstall(rest, shim_path),
}


def run(args, environ, shim_path, tree=None):
    """`iptables-shim ARGS`; `environ`: the caller's environment as str (shim.main.environment)."""
    if not args:
        raise ShimError("a command is needed; %s" % USAGE)
    if args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\n")
        return 0
    verb = VERBS.get(args[0])
    if verb is None:
        raise ShimError("unknown command %r; %s" % (args[0], USAGE))
    try:
        return verb(args[1:], environ, shim_path, tree)
    except ImportError as e:  # python3-minimal: a module this verb needs is not installed
        raise ShimError("%s needs the Python module %r, which this Python lacks (Debian: install "
                        "python3, not only python3-minimal)" % (args[0], e.name))
