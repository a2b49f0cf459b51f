"""The policy: a pure function from facts to a decision with its reason. First match wins.

0. The caller lacks CAP_NET_ADMIN and a default alias exists: what a direct call of the alias
   gives (it cannot change either backend, so it cannot split anything).
1. IPTABLES_SHIM_MODE=nft|legacy: that backend (any other value is an error; see override()).
2. Host context with a default alias: the alias's backend (what kubelet does).
3. A hint chain in exactly one backend: that backend.
4. nft holds rules: nft.
5. legacy holds rules: legacy.
6. A default alias exists: its backend.
7. nft binaries exist: nft; else legacy binaries: legacy; else an error.

Steps 2, 6 and 7 only express a preference: they never pick a backend the kernel cannot run here
(docs/kernels.md). Only steps 3-5 rest on the netns alone, so only they are cached
(docs/decision.md#cache).
"""

from shim.errors import ShimError
from shim.tools import BACKENDS, LEGACY, NFT

NO_PRIVILEGE_STEP = 0
OVERRIDE_STEP = 1
HOST_ALIAS_STEP = 2
CACHEABLE_STEPS = (3, 4, 5)  # the answers that hold for every caller of the netns
ABSENT = "absent"  # a value of Facts.support: the kernel cannot run this backend for this caller
# The reasons of the answers the frozen launcher may give before Python starts (steps 0-2): its C
# route spells them from here (packaging/launcher/settled_h.py), so both routes log the same line.
NO_PRIVILEGE_REASON = ("no CAP_NET_ADMIN: it can change no backend, so it runs what a direct call "
                       "of the default alias runs (%s)")
OVERRIDE_REASON = "IPTABLES_SHIM_MODE=%s"
HOST_ALIAS_REASON = "host context: the default alias runs %s"


class Facts(object):
    """Everything the policy reads, as plain data. None is "could not be read" throughout.

    context: "host" or "container"; privileged: CAP_NET_ADMIN in the effective set (True, False,
    None); alias_backend: backend of the default alias, or None (no alias, or its backend unknown);
    rules, hints: {backend: True, False or None}; binaries: {backend: bool}, any binary of that
    backend on PATH; support: {backend: "loaded", "loadable", "absent" or None}; mode: the raw
    IPTABLES_SHIM_MODE value or None.
    """

    __slots__ = ("mode", "context", "privileged", "alias_backend", "rules", "hints", "binaries", "support")

    def __init__(self, context, alias_backend, rules, hints, binaries, mode=None, privileged=True,
                 support=None):
        self.mode = mode
        self.context = context
        self.privileged = privileged
        self.alias_backend = alias_backend
        self.rules = rules
        self.hints = hints
        self.binaries = binaries
        self.support = support or {}

    def copy(self, **changes):
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Facts(**fields)

    def can_work(self, backend):
        return self.support.get(backend) != ABSENT

    def unread(self):
        """[(kind, backend)] of the rule and hint facts that could not be read."""
        return [(kind, b) for kind in ("rules", "hints") for b in BACKENDS if getattr(self, kind).get(b) is None]


class Decision(object):
    __slots__ = ("backend", "step", "reason")

    def __init__(self, backend, step, reason):
        self.backend = backend
        self.step = step
        self.reason = reason

    @property
    def cacheable(self):
        """Steps 3-5 rest on the netns's own rules and hints: the same for every caller. The others
        rest on the caller (privilege, context, PATH) or on no rule at all, and are re-decided."""
        return self.step in CACHEABLE_STEPS

    def __eq__(self, other):
        return isinstance(other, Decision) and (self.backend, self.step) == (other.backend, other.step)

    def __repr__(self):
        return "Decision(%r, step %d: %s)" % (self.backend, self.step, self.reason)


class MissingVariant(ShimError):
    """The fix is to get a backend's binaries into the image: the line is `head + fix + tail`,
    `fix` the generic words until worded() puts them in the image's distribution's words
    (shim.facts.distribution.fix_words, read only on this error path: shim.resolve)."""

    def __init__(self, head, fix, tail, backend, family=None):
        self.head, self.fix, self.tail = head, fix, tail
        self.backend, self.family = backend, family
        ShimError.__init__(self, head + fix + tail)

    def worded(self, words):
        """The line with `words` (None: the generic words) as the fix."""
        return self.head + (words or self.fix) + self.tail


class Undecided(ShimError):
    """The answer depends on facts that could not be read."""

    def __init__(self, unread):
        self.unread = unread
        ShimError.__init__(
            self,
            "could not read %s, and the choice of backend depends on it: `iptables-shim explain` "
            "says why (a refused kernel probe and no *-save binary to ask instead); grant what "
            "iptables itself needs (CAP_NET_ADMIN, netlink), or set IPTABLES_SHIM_MODE=nft|legacy"
            % ", ".join("the %s of %s" % (kind, b) for kind, b in unread)
        )


def override(mode):
    """Step 1 alone, so that a valid override never needs the other facts."""
    if mode not in BACKENDS:
        raise ShimError(
            "IPTABLES_SHIM_MODE=%r is not a backend: set it to nft or legacy, or unset it" % mode
        )
    return Decision(mode, OVERRIDE_STEP, OVERRIDE_REASON % mode)


def decide(facts):
    """The decision, or Undecided when the unread facts could change it, or ShimError."""
    if facts.mode is not None:
        return override(facts.mode)
    unread = facts.unread()
    if not unread:
        return _decide(facts)
    # Decide only what every reading of the unread facts agrees on (a refused probe must not send
    # rules into the backend the host does not read); otherwise stop.
    answers = {}
    for mask in range(1 << len(unread)):
        filled = {"rules": dict(facts.rules), "hints": dict(facts.hints)}
        for i, (kind, b) in enumerate(unread):
            filled[kind][b] = bool(mask >> i & 1)
        try:
            decision = _decide(facts.copy(rules=filled["rules"], hints=filled["hints"]))
        except ShimError:
            decision = None
        answers[decision.backend if decision else None] = decision
    if len(answers) == 1 and None not in answers:
        # Report the step of the reading where nothing unread holds a rule: the reason must not
        # claim rules that were never seen.
        return _decide(facts.copy(rules={b: bool(v) for b, v in facts.rules.items()},
                                  hints={b: bool(v) for b, v in facts.hints.items()}))
    raise Undecided(unread)


def _decide(facts):
    alias = facts.alias_backend
    if facts.privileged is False and alias:
        return Decision(alias, NO_PRIVILEGE_STEP, NO_PRIVILEGE_REASON % alias)
    usable_alias = alias if alias and facts.can_work(alias) else None
    if facts.context == "host" and usable_alias:
        return Decision(alias, HOST_ALIAS_STEP, HOST_ALIAS_REASON % alias)
    hinted = [b for b in BACKENDS if facts.hints.get(b)]
    if len(hinted) == 1:
        return Decision(hinted[0], 3, "kubelet's hint chain is in %s only" % hinted[0])
    for step, backend in ((4, NFT), (5, LEGACY)):
        if facts.rules.get(backend):
            return Decision(backend, step, "%s holds rules" % backend)
    if usable_alias:
        return Decision(alias, 6, "no rules in any backend; the default alias runs %s" % alias)
    note = ""
    if alias:
        note = " (the default alias runs %s, which this kernel cannot run)" % alias
    for backend in BACKENDS:
        if facts.binaries.get(backend) and facts.can_work(backend):
            return Decision(backend, 7, "no rules and no usable default alias; %s binaries are on PATH%s"
                            % (backend, note))
    stranded = [b for b in BACKENDS if facts.binaries.get(b) or alias == b]
    if stranded:
        other = NFT if stranded[0] == LEGACY else LEGACY
        raise MissingVariant(
            "this kernel cannot run %s (%s), the only iptables backend on PATH: "
            % (" or ".join(stranded), kernel_support_words(stranded[0])),
            "install the %s variant of iptables (iptables-%s)" % (other, other),
            ", or load the kernel's %s support" % " / ".join(stranded),
            other,
        )
    raise ShimError(
        "no iptables binaries on PATH (looked for iptables-nft*, iptables-legacy*, iptables): "
        "install iptables or put its directory on PATH"
    )


def kernel_support_words(backend):
    return ("no ip_tables module loaded or loadable from here: a kernel without legacy x_tables"
            if backend == LEGACY else "no nf_tables module loaded or loadable from here")


def choose_binary(decision, wanted, variant_path, alias_path, alias_backend):
    """Path to execute: the variant, or the default alias when it runs the same backend. For a
    caller without privilege, the alias itself, exactly as a direct call would run it.

    Never the other backend: rules written where the host does not read them are the failure
    this project exists to prevent."""
    if decision.step == NO_PRIVILEGE_STEP and alias_path:
        return alias_path
    if variant_path:
        return variant_path
    if alias_path and alias_backend == decision.backend:
        return alias_path
    alias_note = " (the default alias runs %s)" % (alias_backend or "an unknown backend") if alias_path else ""
    raise MissingVariant(
        "chose %s (step %d: %s) but %s is not on PATH%s: "
        % (decision.backend, decision.step, decision.reason, wanted, alias_note),
        "install the %s variant of iptables" % decision.backend,
        ", or set IPTABLES_SHIM_MODE=nft|legacy if the choice is wrong",
        decision.backend, wanted.partition("-")[0],
    )
