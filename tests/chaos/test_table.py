"""The table of `python -m chaos` (chaos/__main__.py): every figure beside
its target, a missed target marked, and the hostile-input rows "n/a" until
that campaign reports."""

from __future__ import annotations

from chaos.__main__ import rows, table
from chaos.engine_crash import CrashResult
from chaos.node_faults import FaultResult


def test_the_table_marks_each_missed_target_and_only_those() -> None:
    crash = CrashResult(seed=1, jobs=100, kills=10, restart_s=[0.5, 0.7, 3.0])
    nodes = [FaultResult("node crash", detect_s=0.1, recover_s=6.0),
             FaultResult("link frozen", detect_s=40.0, left=2)]
    found = {r.what: r for r in rows(crash, nodes, None)}
    assert [(r.what, r.figure) for r in found.values() if r.what.startswith("faults")] == [
        ("faults injected: engine kill -9", "10"), ("faults injected: node crash", "1"),
        ("faults injected: link frozen", "1")]
    assert found["jobs submitted"].figure == "102"
    assert found["jobs lost"].ok is True and found["duplicate launches"].ok is True
    assert found["restart to API answering (p50 / max)"].figure == "0.70 / 3.00 s"
    assert found["restart to API answering (p50 / max)"].ok is False  # 3 s > 2 s
    assert found["time to detect: node crash"].ok is True
    assert found["time to detect: link frozen"].ok is False
    assert found["processes left behind"].figure == "2" and found["processes left behind"].ok \
        is False
    assert found["crashes and 5xx answers"].figure == "n/a"
    text = table(list(found.values()))
    assert text.count("MISSED") == 3 and "< 2 s" in text

    bad = {r.what: r for r in rows(crash, [], {"inputs": 500, "crashes": 0, "5xx": 1})}
    assert bad["bad inputs tried"].figure == "500"
    assert bad["crashes and 5xx answers"].ok is False
