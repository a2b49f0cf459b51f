"""name -> facts -> decision -> exec, for one call of a shimmed name.

The hot path (a cache hit) imports only this module, tools, cache, netns, binaries, policy and
execute; the fact gathering in shim.resolve is imported on a miss only. None of them imports os
(nor posixpath, _collections_abc): that alone costs about a millisecond, more than the rest of a
hit (issue 3). They use the builtin posix module and plain strings; the cold path uses os freely.
"""

import posix
import sys

from shim import cache
from shim.errors import ShimError
from shim.execute import exec_real
from shim.facts import netns
from shim.facts.binaries import REENTRY_MARKER, alias_backend, find_on_path, identity
from shim.policy import Decision, choose_binary, override
from shim.tools import CLI_NAME, CONTEXTS, SHIM_NAMES, split_name, variant_name


def decide_for_call(env, shim_ids, caller):
    """(decision, found binaries or None, how, (directory, key) to store it in once a binary for it
    is found, or None): the override, the cache, or the facts."""
    if env.get("IPTABLES_SHIM_CONTEXT") and env["IPTABLES_SHIM_CONTEXT"] not in CONTEXTS:
        from shim.resolve import context_fact

        context_fact(env, None)  # its error for a bad value, on every call: before cache and probes
    mode = env.get("IPTABLES_SHIM_MODE")
    if mode:
        return override(mode), None, "override, not cached", None
    directory = cache.cache_dir(env)
    key = netns.netns_key() if directory else None
    if key:
        entry = cache.load(directory, key)
        if entry:
            return Decision(*entry), None, "cache hit %s/%s" % (directory, key), None
    from shim.resolve import decide_here  # the cold path: facts and probes

    decision, gathered = decide_here(env, shim_ids, caller)
    if not key:
        return decision, gathered.found, "cache off" if not directory else "no netns key, not cached", None
    if not decision.grounded:
        return decision, gathered.found, "no rules in any backend, re-checked next call", None
    return decision, gathered.found, "", (directory, key)


def run_tool(name, argv, env, shim_path):
    family, suffix = split_name(name)
    caller = env.get(REENTRY_MARKER)
    if caller:
        raise ShimError(
            "%s was started again by the shim at %s, through a copy of the shim or an iptables alias "
            "that calls iptables via PATH: keep one shim directory on PATH, and real binaries after it"
            % (shim_path, caller)
        )
    own = identity(shim_path)
    shim_ids = {own} if own else set()
    decision, found, how, store_in = decide_for_call(env, shim_ids, shim_path)
    wanted = variant_name(family, decision.backend, suffix)
    if found is None:
        found = find_on_path([wanted, name], env.get("PATH"), shim_ids)
    variant_path, alias_path = found.get(wanted), found.get(name)
    backend_of_alias = None
    if not variant_path and alias_path:
        backend_of_alias = alias_backend(alias_path, shim_path)[0]
    path = choose_binary(decision, wanted, variant_path, alias_path, backend_of_alias)
    if store_in:  # only now: a call that cannot run (a broken PATH) must not decide for later ones
        if cache.store(store_in[0], store_in[1], decision.backend, decision.step, decision.reason):
            how = "cached in %s/%s" % store_in
        else:
            how = "cache %s unusable, not cached" % store_in[0]
    if env.get("IPTABLES_SHIM_DEBUG") == "1":
        sys.stderr.write(
            "iptables-shim: %s -> %s: %s (step %d: %s; %s; netns %s)\n"
            % (name, path, decision.backend, decision.step, decision.reason, how, netns.netns_key())
        )
        sys.stderr.flush()
    try:
        exec_real(path, argv, caller=shim_path if path == alias_path else None)
    except OSError as e:
        raise ShimError("cannot execute %s: %s" % (path, e.strerror))


def environment():
    """The environment as str, decoded as os.environ decodes it (which would import os). A copy:
    what the shim's children must see is set with posix.putenv (exec_real)."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape")
            for k, v in posix.environ.items()}


def main(argv, shim_path):
    """Entry point of every name; returns an exit code only when nothing was executed."""
    name = argv[0].rpartition("/")[2]
    try:
        if name == CLI_NAME:
            from shim.cli import run

            return run(argv[1:], shim_path)
        if name not in SHIM_NAMES:
            raise ShimError(
                "called as %r, which is not a name the shim serves (%s)"
                % (name, ", ".join(sorted(SHIM_NAMES)))
            )
        return run_tool(name, argv, environment(), shim_path)
    except ShimError as e:
        sys.stderr.write("iptables-shim: %s\n" % e)
        return e.exit_code
