"""The policy: a pure function from facts to a decision with its reason. First match wins.

1. IPTABLES_SHIM_MODE=nft|legacy: that backend (any other value is an error).
2. Host context with a default alias: the alias's backend (what kubelet does).
3. A hint chain in exactly one backend: that backend.
4. nft holds rules: nft.
5. legacy holds rules: legacy.
6. A default alias exists: its backend.
7. nft binaries exist: nft; else legacy binaries: legacy; else an error.
"""

from shim.errors import ShimError
from shim.tools import BACKENDS, LEGACY, NFT

OVERRIDE_STEP = 1


class Facts(object):
    """Everything the policy reads, as plain data.

    mode: the raw IPTABLES_SHIM_MODE value or None; context: "host" or "container";
    alias_backend: backend of the default alias or None; rules, hints: {backend: bool or None};
    binaries: {backend: bool}, whether any binary of that backend is on PATH.
    """

    __slots__ = ("mode", "context", "alias_backend", "rules", "hints", "binaries")

    def __init__(self, context, alias_backend, rules, hints, binaries, mode=None):
        self.mode = mode
        self.context = context
        self.alias_backend = alias_backend
        self.rules = rules
        self.hints = hints
        self.binaries = binaries


class Decision(object):
    __slots__ = ("backend", "step", "reason", "grounded")

    def __init__(self, backend, step, reason, grounded=False):
        self.backend = backend
        self.step = step
        self.reason = reason
        # Grounded decisions rest on rules or hints in the kernel and may be cached; the others are
        # re-checked on the next call so that rules written later are seen.
        self.grounded = grounded

    def __eq__(self, other):
        return isinstance(other, Decision) and (self.backend, self.step) == (other.backend, other.step)

    def __repr__(self):
        return "Decision(%r, step %d: %s)" % (self.backend, self.step, self.reason)


def override(mode):
    """Step 1 alone, so that a valid override never needs the other facts."""
    if mode not in BACKENDS:
        raise ShimError(
            "IPTABLES_SHIM_MODE=%r is not a backend: set it to nft or legacy, or unset it" % mode
        )
    return Decision(mode, OVERRIDE_STEP, "IPTABLES_SHIM_MODE=%s" % mode)


def decide(facts):
    if facts.mode is not None:
        return override(facts.mode)
    # A fact that could not be read (None) is not an absent one: a refused probe (no CAP_NET_ADMIN,
    # a seccomp filter on netlink) must not send rules into the backend the host does not read.
    # Decide only what every reading of the unread facts agrees on; otherwise stop.
    unread = [(kind, b) for kind in ("rules", "hints") for b in BACKENDS
              if getattr(facts, kind).get(b) is None]
    if unread and not (facts.context == "host" and facts.alias_backend):
        answers = set()
        for mask in range(1 << len(unread)):
            filled = {"rules": dict(facts.rules), "hints": dict(facts.hints)}
            for i, (kind, b) in enumerate(unread):
                filled[kind][b] = bool(mask >> i & 1)
            answers.add(_decide(Facts(facts.context, facts.alias_backend, filled["rules"],
                                      filled["hints"], facts.binaries)).backend)
        if len(answers) > 1:
            raise ShimError(
                "could not read %s, and the choice of backend depends on it: `iptables-shim explain` "
                "says why (a refused kernel probe and no *-save binary to ask instead); grant what "
                "iptables itself needs (CAP_NET_ADMIN, netlink), or set IPTABLES_SHIM_MODE=nft|legacy"
                % ", ".join("the %s of %s" % (kind, b) for kind, b in unread)
            )
    return _decide(facts)


def _decide(facts):
    grounded = any(facts.rules.get(b) or facts.hints.get(b) for b in BACKENDS)
    alias = facts.alias_backend
    if facts.context == "host" and alias:
        return Decision(alias, 2, "host context: the default alias runs %s" % alias, grounded)
    hinted = [b for b in BACKENDS if facts.hints.get(b)]
    if len(hinted) == 1:
        return Decision(hinted[0], 3, "kubelet's hint chain is in %s only" % hinted[0], True)
    for step, backend in ((4, NFT), (5, LEGACY)):
        if facts.rules.get(backend):
            return Decision(backend, step, "%s holds rules" % backend, True)
    if alias:
        return Decision(alias, 6, "no rules in any backend; the default alias runs %s" % alias, grounded)
    for backend in BACKENDS:
        if facts.binaries.get(backend):
            return Decision(backend, 7, "no rules and no default alias; %s binaries are on PATH" % backend,
                            grounded)
    raise ShimError(
        "no iptables binaries on PATH (looked for iptables-nft*, iptables-legacy*, iptables): "
        "install iptables or put its directory on PATH"
    )


def choose_binary(decision, wanted, variant_path, alias_path, alias_backend):
    """Path to execute: the variant, or the default alias when it runs the same backend.

    Never the other backend: rules written where the host does not read them are the failure
    this project exists to prevent."""
    if variant_path:
        return variant_path
    if alias_path and alias_backend == decision.backend:
        return alias_path
    alias_note = " (the default alias runs %s)" % (alias_backend or "an unknown backend") if alias_path else ""
    raise ShimError(
        "chose %s (step %d: %s) but %s is not on PATH%s: install the %s variant of iptables, "
        "or set IPTABLES_SHIM_MODE=nft|legacy if the choice is wrong"
        % (decision.backend, decision.step, decision.reason, wanted, alias_note, decision.backend)
    )
