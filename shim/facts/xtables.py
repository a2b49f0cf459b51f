"""What counts as an iptables rule or a kubelet hint, shared by every rule probe; and the one
exception a probe raises when it cannot ask (so the caller falls through to the next probe)."""

XTABLES = ("filter", "nat", "mangle", "raw", "security")
HINT_TABLE = "mangle"
HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


class Unavailable(Exception):
    """This probe cannot answer here (refused by seccomp or a missing capability, protocol not
    supported, an interface it does not understand). Never raised for "no such table": a missing
    table is an answer, "no rules"."""
