"""The names the shim answers to, and the names of the real binaries behind them."""

NFT = "nft"
LEGACY = "legacy"
BACKENDS = (NFT, LEGACY)

CONTEXTS = ("host", "container")  # values of the context fact and of IPTABLES_SHIM_CONTEXT

FAMILIES = ("iptables", "ip6tables")
TOOL_SUFFIXES = ("", "-save", "-restore")

SHIM_NAMES = frozenset(family + suffix for family in FAMILIES for suffix in TOOL_SUFFIXES)
CLI_NAME = "iptables-shim"


def split_name(name):
    """`ip6tables-save` -> ("ip6tables", "-save"); None for a name the shim does not serve."""
    if name not in SHIM_NAMES:
        return None
    family, _, tool = name.partition("-")
    return family, ("-" + tool if tool else "")


def variant_name(family, backend, suffix):
    """The real binary of one backend: `iptables-nft-save`, `ip6tables-legacy`, ..."""
    return "%s-%s%s" % (family, backend, suffix)


def all_variant_names():
    return [variant_name(f, b, s) for f in FAMILIES for b in BACKENDS for s in TOOL_SUFFIXES]
