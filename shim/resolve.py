"""The cold path: gather every fact for this netns and ask the policy. Used by calls on a cache
miss and by `iptables-shim explain`, so both see the same facts."""

from shim.errors import ShimError
from shim.facts import binaries, context, netns, rules
from shim.policy import Facts, decide
from shim.tools import BACKENDS, CONTEXTS, FAMILIES, SHIM_NAMES, TOOL_SUFFIXES, all_variant_names, variant_name


class Gathered(object):
    """The facts the policy reads, plus what explain reports about where they came from."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def default_alias(found):
    """(name, path) of the default alias: `iptables`, else its -save, else its -restore, else the
    same for ip6tables. One order for every tool of both families (whichever family calls), so
    iptables and ip6tables agree in an empty netns even where an image's alternatives disagree
    between families: one decision per netns, as the cache (keyed by netns alone) assumes."""
    for fam in FAMILIES:
        for suffix in TOOL_SUFFIXES:
            name = fam + suffix
            if name in found:
                return name, found[name]
    return None, None


def context_fact(env, proc):
    forced = env.get("IPTABLES_SHIM_CONTEXT")
    if forced:
        if forced not in CONTEXTS:
            raise ShimError(
                "IPTABLES_SHIM_CONTEXT=%r is not a context: set it to host or container, or unset it"
                % forced
            )
        return forced, "IPTABLES_SHIM_CONTEXT=%s" % forced
    return context.detect_context(proc)


def gather(env, shim_ids, caller, proc="/proc"):
    found = binaries.find_on_path(all_variant_names() + sorted(SHIM_NAMES), env.get("PATH"), shim_ids)
    alias_name, alias_path = default_alias(found)
    if alias_path:
        alias_backend, alias_how = binaries.alias_backend(alias_path, caller)
    else:
        alias_backend, alias_how = None, "absent"
    ctx, ctx_why = context_fact(env, proc)
    states = {}
    for backend in BACKENDS:
        save_paths = {f: found.get(variant_name(f, backend, "-save")) for f in FAMILIES}
        states[backend] = rules.backend_state(backend, save_paths, proc)  # kernel, else *-save
    present = {
        b: any(variant_name(f, b, s) in found for f in FAMILIES for s in TOOL_SUFFIXES) for b in BACKENDS
    }
    facts = Facts(
        context=ctx,
        alias_backend=alias_backend,
        rules={b: states[b].rules for b in BACKENDS},
        hints={b: states[b].hint for b in BACKENDS},
        binaries=present,
        mode=env.get("IPTABLES_SHIM_MODE") or None,
    )
    return Gathered(
        facts=facts, found=found, alias_name=alias_name, alias_path=alias_path, alias_how=alias_how,
        context_why=ctx_why, states=states, netns_kind=netns.netns_kind(proc),
        path_dirs=binaries.search_dirs(env.get("PATH")),
    )


def decide_here(env, shim_ids, caller, proc="/proc"):
    """The decision for this netns (one for both families and every tool), and the facts behind it."""
    gathered = gather(env, shim_ids, caller, proc)
    return decide(gathered.facts), gathered
