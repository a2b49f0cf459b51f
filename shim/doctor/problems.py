"""Pure: what one namespace's reading says is wrong. Each problem has a fixed name that scripts and
alerts match (docs/doctor.md says what each means and what to do)."""

from shim.tools import BACKENDS, FAMILIES

SPLIT = "split"
HINT_DISAGREES = "hint-disagrees"
HINT_IN_BOTH = "hint-in-both"
CACHE_STALE = "cache-stale"
EMPTY_LEGACY_TABLES = "empty-legacy-tables"
HOST_ALIAS_DISAGREES = "host-alias-disagrees"
UNREADABLE = "unreadable"
KINDS = (SPLIT, HINT_DISAGREES, HINT_IN_BOTH, CACHE_STALE, EMPTY_LEGACY_TABLES, HOST_ALIAS_DISAGREES,
         UNREADABLE)


def combine(values):
    """One fact over both families: True if either is, False if both are not, else None."""
    if any(v is True for v in values):
        return True
    if all(v is False for v in values):
        return False
    return None


def summary(backends):
    """{backend: {"rules", "hint", "tables"}} over both families. tables: True when an xtables
    table of that backend exists in either family."""
    out = {}
    for b in BACKENDS:
        fams = [backends[b][f] for f in FAMILIES]
        tables = [f["tables"] for f in fams]
        out[b] = {
            "rules": combine([f["rules"] for f in fams]),
            "hint": combine([f["hint"] for f in fams]),
            "tables": True if any(tables) else (False if all(t is not None for t in tables) else None),
        }
    return out


def find(reading, initial):
    """[(kind, detail)] for one namespace's reading (reading.read_here's data)."""
    found = []
    backends = reading["backends"]
    for b in BACKENDS:
        errors = [(f, backends[b][f]["error"]) for f in FAMILIES if backends[b][f]["error"]]
        if len(errors) == len(FAMILIES) and len(set(e for _, e in errors)) == 1:
            found.append((UNREADABLE, "%s: %s" % (b, errors[0][1])))  # one probe for both families
        else:
            found.extend((UNREADABLE, "%s %s: %s" % (b, f, e)) for f, e in errors)
    s = summary(backends)
    nft, legacy = s["nft"], s["legacy"]
    if nft["rules"] and legacy["rules"]:
        found.append((SPLIT, "iptables rules in both nft and legacy"))
    hinted = [b for b in BACKENDS if s[b]["hint"]]
    if len(hinted) == 2:
        found.append((HINT_IN_BOTH, "kubelet's hint chain is in both nft and legacy"))
    elif len(hinted) == 1:
        other = [b for b in BACKENDS if b != hinted[0]][0]
        if s[other]["rules"] and s[hinted[0]]["rules"] is False:
            found.append((HINT_DISAGREES, "kubelet's hint chain is in %s, the rules only in %s"
                          % (hinted[0], other)))
    legacy_tables = [f for f in FAMILIES if backends["legacy"][f]["tables"]]
    if legacy_tables and legacy["rules"] is False and nft["rules"]:
        found.append((EMPTY_LEGACY_TABLES, "legacy tables without a rule (%s) while nft holds the rules"
                      % ", ".join("%s: %s" % (f, " ".join(backends["legacy"][f]["tables"]))
                                  for f in legacy_tables)))
    fresh = reading.get("container_decision") or {}
    entry = (reading.get("cache") or {}).get("entry")
    if entry and fresh.get("backend") and entry["backend"] != fresh["backend"]:
        found.append((CACHE_STALE, "the cache says %s (step %d), a fresh decision %s (step %d: %s)"
                      % (entry["backend"], entry["step"], fresh["backend"], fresh["step"], fresh["reason"])))
    elif entry and not fresh.get("backend"):
        found.append((UNREADABLE, "the cached %s cannot be checked: %s" % (entry["backend"], fresh.get("error"))))
    alias = reading.get("alias_backend")
    if initial and alias and len(hinted) == 1 and hinted[0] != alias:
        found.append((HOST_ALIAS_DISAGREES, "the host's iptables runs %s, kubelet's hint chain is in %s"
                      % (alias, hinted[0])))
    return found
