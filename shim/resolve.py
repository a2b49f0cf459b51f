"""One resolution of a call: the facts, the decision, the binary to run and what to cache.

Every shimmed name, `iptables-shim explain` and `iptables-shim doctor` resolve through resolve();
there is no second route to an answer. In the order that costs least:

1. the override (IPTABLES_SHIM_MODE, from the environment or the configuration file);
2. the caller's own facts, read on every call in a few system calls: its context, its privilege,
   the default alias on its PATH and the kernel's support for the alias's backend. They answer
   alone where the policy needs nothing else (no privilege: step 0; host context: step 2), which is
   why those answers are never cached: they belong to the caller, not the netns
   (docs/decision.md#cache);
3. the per-netns cache, which holds only the answers of steps 3-5 (the netns's own rules and hints);
4. the cold path (shim.gather): every fact, kernel probes included, then the policy.

On a cache hit this module and what it imports use the builtin posix module only
(tests/test_hot_path.py).
"""

import posix

from shim import cache
from shim.config import CACHE, CACHE_DIR, CONTEXT, MODE
from shim.errors import ShimError
from shim.facts import netns
from shim.facts.binaries import alias_backend, find_on_path, identity
from shim.policy import (CACHEABLE_STEPS, NO_PRIVILEGE_STEP, Decision, Facts, MissingVariant, Undecided, choose_binary,
                         decide, override)
from shim.tools import BACKENDS, FAMILIES, SHIM_NAMES, TOOL_SUFFIXES, all_variant_names, split_name, variant_name

# How an answer was reached, in the log line (the frozen launcher's C route spells these too).
HOW_OVERRIDE = "override, not cached"
HOW_CALLER = "answered by the caller's own facts, not cached"
HOW_CACHE_HIT = "cache hit %s/%s"
ALIAS_ORDER = tuple(family + suffix for family in FAMILIES for suffix in TOOL_SUFFIXES)
UNREAD = {"nft": None, "legacy": None}


class CallerFacts(object):
    """The facts that belong to the caller rather than the netns."""

    __slots__ = ("context", "context_why", "privileged", "privilege_why", "alias_name", "alias_path",
                 "alias_backend", "alias_how", "support", "support_why")

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name))


class Resolution(object):
    """The answer to one call, and how it was reached."""

    __slots__ = ("name", "decision", "binary", "error", "source", "caller", "facts", "states",
                 "found", "netns_kind", "path_dirs", "cache_dir", "cache_key", "cached", "store", "how")

    def __init__(self, name):
        for field in self.__slots__:
            setattr(self, field, None)
        self.name = name


def default_alias(found):
    """(name, path) of the default alias: `iptables`, else its -save, else its -restore, else the
    same for ip6tables. One order for every tool of both families (whichever family calls), so
    iptables and ip6tables agree in an empty netns even where an image's alternatives disagree
    between families: one decision per netns, as the cache (keyed by netns alone) assumes."""
    for name in ALIAS_ORDER:
        if name in found:
            return name, found[name]
    return None, None


def kernel_support(proc):
    """({backend: "loaded"|"loadable"|"absent"|None}, {backend: why}) without loading anything."""
    from shim.facts import kernel_support as ks

    support, why = {}, {}
    for backend in BACKENDS:
        fact = ks.support(backend, proc=proc)
        support[backend], why[backend] = fact.value, fact.why
    return support, why


def caller_facts(settings, proc):
    """The caller's context and privilege: a few system calls, read on every call."""
    from shim.facts import context, privilege

    forced = settings.get(CONTEXT)
    if forced:
        ctx, ctx_why = forced, "%s=%s" % (CONTEXT, forced)
    else:
        ctx, ctx_why = context.detect_context(proc)
    privileged, privilege_why = privilege.net_admin(proc)
    return CallerFacts(context=ctx, context_why=ctx_why, privileged=privileged, privilege_why=privilege_why,
                       alias_how="not read", support={}, support_why={})


def add_alias_facts(caller, found, shim_path, proc):
    """The default alias on the caller's PATH, its backend (from its symlink chain, else from
    `--version`, a process) and the kernel's support for the backends."""
    caller.alias_name, caller.alias_path = default_alias(found)
    caller.alias_backend, caller.alias_how = None, "absent"
    if caller.alias_path:
        caller.alias_backend, caller.alias_how = alias_backend(caller.alias_path, shim_path)
        caller.support, caller.support_why = kernel_support(proc)
    return caller


def caller_alone_could_answer(caller):
    return caller.context == "host" or caller.privileged is False


def answers_alone(caller):
    """The decision the caller's own facts give whatever the netns holds (step 0 or 2), or None."""
    if caller.alias_backend is None or not caller_alone_could_answer(caller):
        return None
    facts = Facts(caller.context, caller.alias_backend, dict(UNREAD), dict(UNREAD),
                  {b: caller.alias_backend == b for b in BACKENDS}, privileged=caller.privileged,
                  support=caller.support)
    try:
        return decide(facts)
    except Undecided:  # the netns's facts are needed
        return None


def resolve(name, settings, shim_path, consult_cache=True, gather_all=False, proc="/proc"):
    """The Resolution of `name` (one of the six shimmed names) for this caller in this netns.
    `settings`: shim.config.load_settings() (PATH included). consult_cache=False: decide afresh (the
    entry is still read, into .cached). gather_all: every fact, even where fewer would answer
    (explain, doctor); the decision is the same."""
    r = Resolution(name)
    own = identity(shim_path)
    shim_ids = {own} if own else set()
    r.cache_dir = cache.cache_dir(settings.get(CACHE), settings.get(CACHE_DIR))
    mode = settings.get(MODE)
    try:
        if mode and not gather_all:  # an override never reads the cache
            r.decision, r.source, r.how = override(mode), "override", HOW_OVERRIDE
        else:
            r.caller = caller_facts(settings, proc)
            if gather_all or not _by_caller(r, settings, shim_ids, shim_path, proc):
                # Only now the netns's key and entry: a caller its own facts answer (steps 0, 2:
                # host context, no privilege) needs neither (tests/test_hot_path.py).
                r.cache_key = netns.netns_key() if r.cache_dir else None
                if r.cache_key:
                    r.cached = cache.load(r.cache_dir, r.cache_key)
                if gather_all or not (consult_cache and _by_cache(r)):
                    _by_facts(r, settings, shim_ids, shim_path, proc)
        if r.found is None:  # only the names this answer can run
            family, suffix = split_name(name)
            wanted = variant_name(family, r.decision.backend, suffix)
            r.found = find_on_path([wanted, name], settings.get("PATH"), shim_ids)
            if wanted not in r.found and name not in r.found:
                r.found = with_recorded_aliases(r.found, shim_ids)
        _choose(r, shim_path)
        r.store = _what_to_store(r)
    except ShimError as e:
        r.error = in_the_images_words(e)
        r.binary = None
    return r


def in_the_images_words(error, root="/"):
    """The error's one line; where the fix is to get a variant's binaries (MissingVariant), in the
    words of the distribution whose os-release the caller's root holds. The os-release is read
    here only, on the way to a refusal: never on a call that runs something."""
    if not isinstance(error, MissingVariant):
        return str(error)
    from shim.facts import distribution

    return error.worded(distribution.fix_words(distribution.read(root), error.backend, error.family))


def with_recorded_aliases(found, shim_ids):
    """`found` plus, for the plain names PATH gave nothing for, the choice `install
    --alternatives` recorded before it made the shim the alternative (PATH's /usr/sbin/iptables
    then leads to the shim and is skipped): that choice is the default alias (docs/install.md).
    One stat where nothing was installed that way."""
    if all(name in found for name in ALIAS_ORDER):
        return found
    from shim.install import STATE_FILE, recorded_aliases

    try:
        posix.stat(STATE_FILE)
    except OSError:
        return found
    for name, path in recorded_aliases(shim_ids).items():
        found.setdefault(name, path)
    return found


def _search(r, settings, shim_ids, shim_path, proc):
    """Every name the policy may need on PATH, and the default alias's facts."""
    family, suffix = split_name(r.name)
    variants = [variant_name(family, b, suffix) for b in BACKENDS]
    r.found = with_recorded_aliases(find_on_path(list(ALIAS_ORDER) + variants, settings.get("PATH"), shim_ids),
                                    shim_ids)
    add_alias_facts(r.caller, r.found, shim_path, proc)


def _by_caller(r, settings, shim_ids, shim_path, proc):
    """Step 0 or 2 from the caller's own facts, where they answer whatever the netns holds."""
    if not caller_alone_could_answer(r.caller):
        return False
    _search(r, settings, shim_ids, shim_path, proc)
    decision = answers_alone(r.caller)
    if decision is None:
        return False
    r.decision, r.source, r.how = decision, "caller", HOW_CALLER
    return True


def _by_cache(r):
    if not (r.cached and r.cached[1] in CACHEABLE_STEPS):
        return False
    r.decision, r.source = Decision(*r.cached), "cache"
    r.how = HOW_CACHE_HIT % (r.cache_dir, r.cache_key)
    return True


def _by_facts(r, settings, shim_ids, shim_path, proc):
    """The cold path: every fact, kernel probes included, then the policy."""
    from shim.gather import gather

    found = with_recorded_aliases(
        find_on_path(all_variant_names() + sorted(SHIM_NAMES), settings.get("PATH"), shim_ids), shim_ids)
    if r.found is None:  # the caller's alias facts are not read yet (the same alias: ALIAS_ORDER)
        add_alias_facts(r.caller, found, shim_path, proc)
    if not r.caller.support:
        r.caller.support, r.caller.support_why = kernel_support(proc)
    g = gather(r.caller, found, settings.get("PATH"), proc)
    r.facts, r.states, r.found = g.facts, g.states, found
    r.netns_kind, r.path_dirs = g.netns_kind, g.path_dirs
    r.facts.mode = settings.get(MODE)
    r.decision, r.source = decide(r.facts), "facts"
    if not r.decision.cacheable and r.decision.step >= 6 and r.cache_dir and not r.cache_key:
        remembered = _remembered(r, proc)
        if remembered:
            r.decision, r.source = remembered, "memory"


def _choose(r, shim_path):
    """The binary for r.decision (ShimError when it is not on PATH)."""
    name = r.name
    family, suffix = split_name(name)
    wanted = variant_name(family, r.decision.backend, suffix)
    alias_path = r.found.get(name)
    backend_of_alias = None
    if alias_path and r.decision.step == NO_PRIVILEGE_STEP:
        pass  # the alias runs as a direct call would: its backend is not asked (no --version)
    elif alias_path and not r.found.get(wanted):
        if r.caller and r.caller.alias_path == alias_path and r.caller.alias_backend:
            backend_of_alias = r.caller.alias_backend
        else:
            backend_of_alias = alias_backend(alias_path, shim_path)[0]
    r.binary = choose_binary(r.decision, wanted, r.found.get(wanted), alias_path, backend_of_alias)


def _what_to_store(r):
    """(directory, key) to store r.decision under once its binary runs, or None; sets r.how."""
    if r.source not in ("facts", "memory"):
        return None
    if r.source == "memory":
        r.how = "no rules now; remembered from %s/%s" % (r.cache_dir, netns.inode_key())
        return None
    if not r.cache_dir:
        r.how = "cache off"
        return None
    if not r.decision.cacheable:
        r.how = "step %d rests on the caller or on no rule: re-decided next call" % r.decision.step
        return None
    key = r.cache_key or netns.inode_key()
    if not key:
        r.how = "no netns key, not cached"
        return None
    r.how = "to be cached in %s/%s" % (r.cache_dir, key)
    return r.cache_dir, key


def _remembered(r, proc):
    """On a kernel without the netns cookie (Linux < 5.14): the decision stored under this netns's
    inode, trusted only while the netns still shows the trace of that backend (its xtables tables,
    emptied or not), which a new netns that reuses the inode never has from us. Used only when no
    backend holds a rule or hint now (the caller reached step 6 or 7): then it keeps a flushed
    ruleset in its backend (`iptables-save > f; iptables -F; iptables -X; iptables-restore < f`).
    docs/decision.md#kernels-without-a-netns-cookie."""
    from shim.facts.rules import trace

    key = netns.inode_key()
    entry = cache.load(r.cache_dir, key) if key else None
    if not entry or entry[1] not in CACHEABLE_STEPS:
        return None
    if trace(entry[0], proc) is not True:
        return None
    return Decision(entry[0], entry[1], "%s (remembered: no rules now, its emptied tables remain)" % entry[2])
