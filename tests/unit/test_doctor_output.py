"""shim.doctor.output: the audit's table and summary line, from the plain report doctor --json
prints (no root, no namespace)."""

from shim.doctor.output import summary_line, table
from shim.doctor.problems import KINDS


def counts(audited, gone=0, **problems):
    per_kind = dict.fromkeys(KINDS, 0)
    per_kind.update({k.replace("_", "-"): v for k, v in problems.items()})
    return {"audited": audited, "gone": gone, "with_problems": max([0] + list(problems.values())),
            "problems": per_kind}


def test_one_namespace_is_singular():
    assert summary_line(counts(1), 0.012) == \
        "1 namespace audited, 0 gone during the audit, 0 with problems in 0.01 s"
    assert summary_line(counts(1, split=1), 0.5) == \
        "1 namespace audited, 0 gone during the audit, 1 with problems in 0.50 s: split 1"


def test_other_counts_are_plural_and_name_every_problem_kind_found():
    assert summary_line(counts(0), 0) == "0 namespaces audited, 0 gone during the audit, 0 with problems in 0.00 s"
    assert summary_line(counts(5, gone=1, split=1, cache_stale=2), 0.374) == (
        "5 namespaces audited, 1 gone during the audit, 2 with problems in 0.37 s: split 1, cache-stale 2")


def test_the_table_ends_with_the_summary_and_the_column_legend():
    ns = {"inode": 4026531840, "initial": True, "state": "audited", "problems": [],
          "summary": {"nft": {"rules": True, "hint": False}, "legacy": {"rules": False, "hint": None}},
          "decision": {"backend": "nft", "step": 2}, "container_decision": {"backend": "nft", "step": 4}}
    lines = table({"namespaces": [ns], "counts": counts(1), "duration_seconds": 0.2}).splitlines()
    assert lines[0].split() == ["WHO", "NFT", "LEGACY", "DECISION", "PROBLEMS"]
    assert lines[1].split() == ["initial", "rules=y", "hint=n", "rules=n", "hint=?", "nft/2", "ctr:nft/4", "ok"]
    assert lines[-2] == "1 namespace audited, 0 gone during the audit, 0 with problems in 0.20 s"
    assert "docs/doctor.md" in lines[-1]
