"""iptables-shim: run the iptables variant that matches the rules already in this network namespace.

A call flows one way: name (tools) -> facts (facts/) -> decision (policy) -> exec (execute),
with the per-netns cache (cache) beside the decision.
"""
