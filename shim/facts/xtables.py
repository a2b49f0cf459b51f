"""What counts as an iptables rule or a kubelet hint, shared by every rule probe; the per-family
record the kernel probes report; and the one exception a probe raises when it cannot ask (so the
caller falls through to the next probe)."""

XTABLES = ("filter", "nat", "mangle", "raw", "security")
HINT_TABLE = "mangle"
HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


class Unavailable(Exception):
    """This probe cannot answer here (refused by seccomp or a missing capability, protocol not
    supported, an interface it does not understand). Never raised for "no such table": a missing
    table is an answer, "no rules"."""


class WouldLoadModule(Unavailable):
    """Asking could make the kernel load a module (it cannot be told whether the backend is loaded
    or built in). No other probe may ask either: the `*-save` binaries load modules themselves."""


class FamilyState(object):
    """What one backend holds for one family (`iptables` or `ip6tables`) in this netns.

    tables: the xtables-named tables that exist, sorted (a tuple of names);
    rules:  does any of them hold a rule entry (True/False; None where the caller did not ask);
    hint:   does its `mangle` hold one of HINT_CHAINS (True/False; None where not asked)."""

    __slots__ = ("tables", "rules", "hint")

    def __init__(self, tables, rules, hint):
        self.tables = tuple(tables)
        self.rules = rules
        self.hint = hint

    def as_dict(self):
        return {"tables": list(self.tables), "rules": self.rules, "hint": self.hint}

    def __eq__(self, other):
        return isinstance(other, FamilyState) and self.as_dict() == other.as_dict()

    __hash__ = None  # mutable: not for sets or dict keys

    def __repr__(self):
        return "FamilyState(%r, %r, %r)" % (self.tables, self.rules, self.hint)
