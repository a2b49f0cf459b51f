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

import os

from shim.facts import legacy_kernel, netns, nft_kernel
from shim.facts.xtables import HINT_CHAINS, HINT_TABLE, XTABLES, Unavailable
from shim.tools import BACKENDS, FAMILIES

NAME = "iptables"  # one decision per netns serves every tool of both families
NFT_FAMILY = {"iptables": 2, "ip6tables": 10}  # NFPROTO_IPV4, NFPROTO_IPV6


def _family_record(tables=None, rules=None, hint=None, error=None):
    return {"tables": tables, "rules": rules, "hint": hint, "error": error}


# -- per-family kernel records -------------------------------------------------------------------
# A thin adapter over the probes' building blocks, until the probes themselves return per-family
# records. Kept to these two functions so that switching to theirs touches nothing else.

def legacy_records(proc="/proc"):
    """{family: record} for x_tables."""
    if hasattr(legacy_kernel, "probe_families"):
        try:
            states = legacy_kernel.probe_families(proc)
        except Unavailable as e:
            return {f: _family_record(error=str(e)) for f in FAMILIES}
        return {f: _family_record(list(states[f].tables), states[f].rules, states[f].hint) for f in FAMILIES}
    out = {}
    opt = None
    for family, (af, level, names_file, entry_len, target_offset_at) in legacy_kernel.FAMILIES.items():
        try:
            with open(os.path.join(proc, names_file)) as f:
                listed = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            out[family] = _family_record([], False, False)  # ip_tables not loaded: no table can exist
            continue
        except OSError as e:
            out[family] = _family_record(error="%s: %s" % (names_file, e.strerror))
            continue
        tables = [t for t in listed if t in XTABLES]
        if not tables:
            out[family] = _family_record(listed, False, False)
            continue
        import _socket

        try:
            opt = opt or legacy_kernel.Sockopt()
            sock = _socket.socket(af, legacy_kernel.SOCK_RAW, legacy_kernel.IPPROTO_RAW)
        except (OSError, Unavailable) as e:
            out[family] = _family_record(listed, error="raw socket refused: %s" % (getattr(e, "strerror", None) or e))
            continue
        rules = hint = False
        try:
            for name in tables:
                info = legacy_kernel.read_info(opt, sock.fileno(), level, name)
                if info is None:
                    continue  # gone since it was listed
                table_rules = info.builtin_rules() or (
                    info.user_chains_possible() and info.sizes_say_rules(entry_len))
                need_hint = name == HINT_TABLE and info.user_chains_possible()
                if need_hint or (not table_rules and not rules and info.user_chains_possible()):
                    read = legacy_kernel.read_entries(opt, sock.fileno(), level, name, info)
                    if read is not None:
                        walked_rules, chains = legacy_kernel.walk(read[1], read[0], target_offset_at,
                                                                  all_chains=need_hint)
                        table_rules = table_rules or walked_rules
                        if need_hint:
                            hint = hint or any(c in HINT_CHAINS for c in chains)
                rules = rules or table_rules
            out[family] = _family_record(listed, rules, hint)
        except Unavailable as e:
            out[family] = _family_record(listed, error=str(e))
        finally:
            sock.close()
    return out


def nft_records(proc="/proc"):
    """{family: record} for nf_tables (families ip and ip6; tables named like iptables')."""
    try:
        states = nft_kernel.probe_families(proc)
    except Unavailable as e:
        return {f: _family_record(error=str(e)) for f in FAMILIES}
    return {f: _family_record(list(states[f].tables), states[f].rules, states[f].hint) for f in FAMILIES}


KERNEL_RECORDS = {"nft": nft_records, "legacy": legacy_records}


# -- the one resolution --------------------------------------------------------------------------

def _resolve(settings, shim_path, proc, gather_all):
    """shim.resolve.resolve for this netns, the cache not consulted (its entry is still read)."""
    from shim.resolve import resolve

    if "gather_all" in resolve.__code__.co_varnames:
        return resolve(NAME, settings, shim_path, consult_cache=False, gather_all=gather_all, proc=proc)
    return resolve(NAME, settings, shim_path, consult_cache=False, proc=proc)


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


def read_here(settings, shim_path, proc="/proc"):
    """Everything the audit wants from the current network namespace, as plain data."""
    from shim.errors import ShimError

    out = {"cookie": netns.netns_key(), "kind": netns.netns_kind(proc)}
    out["backends"] = {b: KERNEL_RECORDS[b](proc) for b in BACKENDS}
    for label, these in (("decision", settings), ("container_decision", container_settings(settings))):
        try:
            r = _resolve(these, shim_path, proc, gather_all=label == "container_decision")
        except (ShimError, ImportError) as e:
            out[label] = {"error": str(e)}
            continue
        out[label] = _decision(r)
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
