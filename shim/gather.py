"""The cold path: every fact of this netns and this caller, for shim.resolve. Imported only when
the override, the caller's own facts and the cache cannot answer (tests/test_hot_path.py)."""

from shim.facts import binaries, netns, rules
from shim.policy import Facts
from shim.tools import BACKENDS, FAMILIES, TOOL_SUFFIXES, variant_name


class Gathered(object):
    """The facts the policy reads, and what explain reports about where they came from."""

    __slots__ = ("facts", "states", "netns_kind", "path_dirs")

    def __init__(self, facts, states, netns_kind, path_dirs):
        self.facts = facts
        self.states = states  # {backend: rules.BackendState}
        self.netns_kind = netns_kind
        self.path_dirs = path_dirs


def save_binaries(backend, found, alias_backend):
    """{family: path or None} of the `*-save` binaries that read `backend`: the variant, else the
    family's plain `*-save` when the default alias runs that backend (an image whose only names are
    the plain ones, on a Python without ctypes)."""
    paths = {}
    for family in FAMILIES:
        paths[family] = found.get(variant_name(family, backend, "-save"))
        if not paths[family] and alias_backend == backend:
            paths[family] = found.get(family + "-save")
    return paths


def gather(caller, found, path_env, proc="/proc"):
    """Gathered for this netns. `caller` is the caller's own facts (shim.resolve.CallerFacts),
    `found` every iptables name on the caller's PATH (shims skipped, recorded aliases added)."""
    states = {}
    for backend in BACKENDS:
        save_paths = save_binaries(backend, found, caller.alias_backend)
        states[backend] = rules.backend_state(backend, save_paths, proc)  # kernel, else *-save
    present = {b: any(variant_name(f, b, s) in found for f in FAMILIES for s in TOOL_SUFFIXES)
               or caller.alias_backend == b for b in BACKENDS}
    facts = Facts(
        context=caller.context,
        alias_backend=caller.alias_backend,
        rules={b: states[b].rules for b in BACKENDS},
        hints={b: states[b].hint for b in BACKENDS},
        binaries=present,
        privileged=caller.privileged,
        support=caller.support,
    )
    return Gathered(facts, states, netns.netns_kind(proc), binaries.search_dirs(path_env))
