"""`iptables-shim`: the shim's own command, for people and tools asking why."""

import json
import os
import sys

from shim import cache
from shim.errors import ShimError
from shim.facts import netns
from shim.facts.binaries import identity
from shim.policy import choose_binary
from shim.resolve import decide_here
from shim.tools import BACKENDS, variant_name

USAGE = "usage: iptables-shim explain [--json] [--family iptables|ip6tables] | install DIR"


def explain_report(family, env, shim_path):
    """Every fact, the decision and the step that made it, the cache entry: as plain data."""
    own = identity(shim_path)
    decision, g = decide_here(env, {own} if own else set(), shim_path)
    directory = cache.cache_dir(env)
    key = netns.netns_key()
    entry = cache.load(directory, key) if directory and key else None
    wanted = variant_name(family, decision.backend, "")
    try:
        binary = choose_binary(decision, wanted, g.found.get(wanted), g.found.get(family),
                               g.facts.alias_backend if g.alias_name == family else None)
    except ShimError as e:
        binary = "error: %s" % e
    return {
        "family": family,
        "shim": shim_path,
        "path": g.path_dirs,
        "binaries": g.found,
        "default_alias": {"name": g.alias_name, "path": g.alias_path,
                          "backend": g.facts.alias_backend, "how": g.alias_how},
        "context": {"value": g.facts.context, "why": g.context_why},
        "netns": {"kind": g.netns_kind, "key": key},
        "backends": {b: g.states[b].as_dict() for b in BACKENDS},
        "mode_override": g.facts.mode,
        "decision": {"backend": decision.backend, "step": decision.step, "reason": decision.reason,
                     "cacheable": decision.grounded},
        "runs": binary,
        "warnings": readability_warnings(decision.backend, g, env),
        "cache": {"dir": directory, "entry": None if entry is None else
                  {"backend": entry[0], "step": entry[1], "reason": entry[2]}},
    }


# What a `*-save` binary prints for kernel state it cannot parse: iptables-nft 1.8.7 (bullseye)
# against a table that 1.8.9 wrote with native expressions (`-p tcp --dport 80:90`), or a match
# revision newer than its extensions know.
UNREADABLE = ("is incompatible", "[unsupported revision]")


def readability_warnings(backend, g, env):
    """Run the chosen backend's save binaries (explain only: never on a call's path) and report
    what they cannot read in this netns. Legacy is read only where its tables already exist."""
    import subprocess

    from shim.facts.binaries import REENTRY_MARKER
    from shim.facts.legacy_kernel import legacy_tables

    warnings = []
    for family in ("iptables", "ip6tables"):
        if backend == "legacy" and not legacy_tables(family):
            continue
        name = variant_name(family, backend, "-save")
        path = g.found.get(name)
        if not path and g.alias_name and g.facts.alias_backend == backend:
            path, name = g.found.get(family + "-save"), family + "-save"
        if not path:
            continue
        run_env = dict(env)
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
    lines = [
        "decision:      %s (step %d: %s)" % (r["decision"]["backend"], r["decision"]["step"],
                                             r["decision"]["reason"]),
        "runs:          %s" % r["runs"],
        "context:       %s (%s)" % (r["context"]["value"], r["context"]["why"]),
        "netns:         %s (%s)" % (r["netns"]["kind"], r["netns"]["key"]),
    ]
    for b in BACKENDS:
        s = r["backends"][b]
        lines.append("%-14s rules=%s hint=%s (from %s)" % (b + ":", s["rules"], s["hint"], s["source"]))
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


def run_install(rest, shim_path):
    from shim.install import install

    if len(rest) != 1 or rest[0].startswith("-"):
        raise ShimError("install takes one directory, such as /usr/local/sbin; %s" % USAGE)
    for name, path, action in install(rest[0], shim_path):
        sys.stdout.write("%s: %s\n" % (path, "link created" if action == "create" else "already this shim"))
    return 0


def run(args, shim_path):
    if not args:
        raise ShimError("a command is needed; %s" % USAGE)
    if args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE + "\n")
        return 0
    verb, rest = args[0], args[1:]
    if verb == "install":
        return run_install(rest, shim_path)
    if verb != "explain":
        raise ShimError("unknown command %r; %s" % (verb, USAGE))
    as_json = "--json" in rest
    family = "iptables"
    unknown = [a for a in rest if a != "--json"]
    if unknown[:1] == ["--family"] and len(unknown) == 2 and unknown[1] in ("iptables", "ip6tables"):
        family, unknown = unknown[1], []
    if unknown:
        raise ShimError("unexpected argument %r; %s" % (unknown[0], USAGE))
    report = explain_report(family, os.environ, shim_path)
    sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n" if as_json else format_text(report))
    return 0
