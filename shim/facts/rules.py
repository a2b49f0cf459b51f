"""Does a backend hold iptables rules, or kubelet's hint chain, in this netns?

Two probes per backend with one signature, tried in order: the kernel probe (nft_kernel: netlink;
legacy_kernel: /proc/net/ip{,6}_tables_names and the x_tables socket options), which sees every
backend whatever binaries this filesystem has and costs the same at any ruleset size; and where
the kernel probe is refused (seccomp, a missing capability, no protocol support), the reference
probe that runs the `*-save` binaries and reads their output. `BackendState.source` says which one
answered, for `explain`.

Nothing here may create a table or load a module: legacy is only read where
/proc/net/ip{,6}_tables_names already lists tables, since `iptables-legacy-save` of a table that
does not exist yet would create it and flip the next detection.
"""

from shim.facts import legacy_kernel, nft_kernel
from shim.facts.legacy_kernel import legacy_tables
from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, Unavailable, WouldLoadModule

INCOMPATIBLE = ("# Table `", "' is incompatible")  # iptables-nft-save's line for an unreadable table
HIDDEN_BASE_CHAINS = "' contains incompatible base-chains"  # 1.8.9+: base chains it does not list
KERNEL_PROBES = {"nft": (nft_kernel.probe, nft_kernel.SOURCE),
                 "legacy": (legacy_kernel.probe, legacy_kernel.SOURCE)}


class BackendState(object):
    """What one backend holds. `rules` and `hint` are True, False or None (could not be read)."""

    __slots__ = ("rules", "hint", "source")

    def __init__(self, rules, hint, source):
        self.rules = rules
        self.hint = hint
        self.source = source

    def as_dict(self):
        return {"rules": self.rules, "hint": self.hint, "source": self.source}


def parse_save(lines):
    """(has_rules, has_hint) from `*-save` output lines. Only `-A` counts as a rule; chain
    declarations, policies and empty tables do not. has_rules is None (cannot be told from this
    output) where an xtables table holds base chains iptables-nft-save does not list and no `-A`
    was seen: their rules are in the kernel, and out of sight (docs/decision.md#native-nf_tables-tables)."""
    table = None
    has_rules = has_hint = False
    hidden = False
    for line in lines:
        if line.startswith(INCOMPATIBLE[0]) and INCOMPATIBLE[1] in line:
            # An older iptables-nft-save (1.8.7) cannot parse what a newer one wrote (e.g. a
            # `--dport 80:90` from 1.8.9) and prints this instead of the table: the rules are
            # there all the same, and must count, or a bullseye image would pick the other backend.
            if _quoted_table(line) in XTABLES:
                has_rules = True
        elif line.startswith(INCOMPATIBLE[0]) and HIDDEN_BASE_CHAINS in line:
            # iptables-nft-save 1.8.9+: the table also holds base chains not named like iptables'
            # (`nft add chain ip filter input { type filter hook input ... }`, written by nft, not
            # by iptables-nft). It lists the rest of the table and hides those chains: whether they
            # hold a rule, this output cannot say. The kernel probe sees them (a rule there counts).
            if _quoted_table(line) in XTABLES:
                hidden = True
        elif line.startswith("*"):
            table = line[1:].strip()
        elif table not in XTABLES:
            continue
        elif line.startswith("-A "):
            has_rules = True
        elif line.startswith(":") and table == HINT_TABLE:
            if line[1:].split(" ", 1)[0] in HINT_CHAINS:
                has_hint = True
    return (has_rules or (None if hidden else False)), has_hint


def _quoted_table(line):
    """The table name of iptables-nft-save's "# Table `NAME' ..." comment."""
    return line[len(INCOMPATIBLE[0]):].split("'", 1)[0]


def any_of(values):
    """True if any value is True; else None if any is None (unknown); else False."""
    if True in values:
        return True
    return None if None in values else False


def run_save(path):
    """Lines a `*-save` binary prints on stdout, or None if it could not run or failed."""
    import subprocess

    try:
        proc = subprocess.run(
            [path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            timeout=120, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", "replace").splitlines()


def save_probe(backend, save_paths, proc="/proc"):
    """BackendState for `backend` from its save binaries, {family: path or None}."""
    rules, hint = [], []  # per family read: True, False or None
    unread, hidden = [], []
    for family in ("iptables", "ip6tables"):
        if backend == "legacy":
            tables = _listed(family, proc)
            if tables is None:  # cannot be read (EACCES: 0440): running *-save could create tables
                unread.append("/proc/net/%s_tables_names" % ("ip" if family == "iptables" else "ip6"))
                continue
            if not tables:
                continue
        path = save_paths.get(family)
        lines = run_save(path) if path else None
        if lines is None:
            unread.append("%s-%s-save" % (family, backend))
            continue
        family_rules, family_hint = parse_save(lines)
        rules.append(family_rules)
        hint.append(family_hint)
        if family_rules is None:
            hidden.append("%s-%s-save" % (family, backend))
    notes = []
    if unread:
        # What could be read may already answer; what could not leaves the fact open.
        rules.append(None)
        hint.append(None)
        notes.append("unread: %s" % ", ".join(unread))
    if hidden:
        notes.append("base chains not listed by %s" % ", ".join(hidden))
    return BackendState(any_of(rules), any_of(hint), "save (%s)" % "; ".join(notes) if notes else "save")


def backend_state(backend, save_paths, proc="/proc", kernel_probe=None):
    """BackendState for `backend`: the kernel probe, or the save probe where it is unavailable.
    `kernel_probe` is a (probe(proc) -> (rules, hint), source) pair; by default the backend's own."""
    probe, source = kernel_probe or KERNEL_PROBES[backend]
    try:
        rules, hint = probe(proc)
        return BackendState(rules, hint, source)
    except WouldLoadModule as e:
        return BackendState(None, None, "unknown: %s" % e)  # the *-save binaries would load it too
    except Unavailable as e:
        state = save_probe(backend, save_paths, proc)
        state.source = "%s; kernel probe unavailable: %s" % (state.source, e)
        return state


def _listed(family, proc):
    """The legacy tables listed for a family, or None where the list cannot be read."""
    try:
        return legacy_tables(family, proc)
    except Unavailable:
        return None


def trace(backend, proc="/proc"):
    """Do the backend's xtables tables exist in this netns, with or without rules (True, False,
    None)? What a flushed ruleset leaves behind, and a new netns never has from the shim."""
    if backend == "legacy":
        listed = [_listed(family, proc) for family in ("iptables", "ip6tables")]
        if any(listed):
            return True
        return None if None in listed else False
    try:
        return any(state.tables for state in nft_kernel.probe_families(proc).values())
    except Unavailable:
        return None
