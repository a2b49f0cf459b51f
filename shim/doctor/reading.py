"""What the audit reads inside one network namespace (run in the forked child, after setns).

Per backend and family: the xtables tables that exist, whether they hold a rule, whether mangle
holds kubelet's hint chain; the decision a call would get there, from shim.resolve.resolve (the
one resolution: no second route to a decision), for the node's own settings and for a caller in a
container (the caller the cache serves); the cache entry of this netns. Plain data only: it
crosses a pipe as marshal.

Nothing here creates or changes anything: legacy is read only for the tables
/proc/net/ip{,6}_tables_names lists (asking for any other creates it), nf_tables only when it is
already loaded or built in (opening its netlink socket could load the module), no `*-save` binary
is run on a kernel-probe path, and the resolution is asked not to consult the cache (and never
stores: storing is main.run_tool's, after an exec target is found).
"""

from shim.facts import legacy_kernel, netns, nft_kernel
from shim.facts.xtables import Unavailable
from shim.tools import FAMILIES

NAME = "iptables"  # one decision per netns serves every tool of both families


def _family_record(tables=None, rules=None, hint=None, error=None):
    return {"tables": tables, "rules": rules, "hint": hint, "error": error}


# -- per-family kernel records -------------------------------------------------------------------

def _records(probe_families, proc):
    """{family: record} from a kernel probe's per-family states; an Unavailable probe is an error
    for both families (what it says is why)."""
    try:
        states = probe_families(proc)
    except Unavailable as e:
        return {f: _family_record(error=str(e) or type(e).__name__) for f in FAMILIES}
    return {f: _family_record(list(states[f].tables), states[f].rules, states[f].hint) for f in FAMILIES}


def kernel_records(proc="/proc"):
    """{backend: {family: record}}: the same kernel probes a call uses, every fact asked."""
    return {"nft": _records(nft_kernel.probe_families, proc),
            "legacy": _records(legacy_kernel.probe_families, proc)}


# -- the one resolution --------------------------------------------------------------------------

def _resolve(settings, shim_path, proc, gather_all):
    """shim.resolve.resolve for this netns, the cache not consulted (its entry is still read)."""
    from shim.resolve import resolve

    return resolve(NAME, settings, shim_path, consult_cache=False, gather_all=gather_all, proc=proc)


def _decision(r):
    d = r.decision
    if d is None:
        return {"error": r.error or "no decision"}
    return {"backend": d.backend, "step": d.step, "reason": d.reason, "binary": r.binary,
            "error": r.error}


def container_settings(settings):
    """The settings a caller in a container would decide with: the cache serves only steps 3-5,
    which such a caller reaches; an override is never cached (and never consults the cache)."""
    out = dict(settings)
    out["IPTABLES_SHIM_CONTEXT"] = "container"
    out.pop("IPTABLES_SHIM_MODE", None)
    return out


def read_here(settings, shim_path, proc="/proc", node_decision=None):
    """Everything the audit wants from the current network namespace, as plain data.
    node_decision: the node-settings decision already resolved elsewhere, when it came from the
    caller's own facts alone (resolve's source "caller": steps 0 and 2, which read nothing of the
    netns): the same in every namespace, so resolved once (see node_decision_everywhere)."""
    from shim.errors import ShimError

    out = {"cookie": netns.netns_key(), "kind": netns.netns_kind(proc)}
    out["backends"] = kernel_records(proc)
    for label, these in (("decision", settings), ("container_decision", container_settings(settings))):
        if label == "decision" and node_decision is not None:
            out[label] = dict(node_decision)
            continue
        try:
            r = _resolve(these, shim_path, proc, gather_all=label == "container_decision")
        except (ShimError, ImportError) as e:
            out[label] = {"error": str(e)}
            continue
        out[label] = _decision(r)
        if label == "decision":
            out["decision_source"] = r.source
        if label == "container_decision":
            known = r.facts if r.facts is not None else getattr(r, "caller", None)
            out["alias_backend"] = getattr(known, "alias_backend", None)
            entry = r.cached
            out["cache"] = {"dir": r.cache_dir, "key": r.cache_key,
                            "entry": None if not entry else
                            {"backend": entry[0], "step": entry[1], "reason": entry[2]}}
            if r.states:
                out["sources"] = {b: getattr(s, "source", None) for b, s in r.states.items()}
    return out


def node_decision_everywhere(reading):
    """The node-settings decision of a reading (read_here's data) if it holds in every namespace
    (it rests on the caller alone), else None."""
    if reading.get("decision_source") == "caller":
        return reading["decision"]
    return None
