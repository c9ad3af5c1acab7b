"""`llmconsole nodes check`, `drain` and `undrain` through the real CLI and
daemon, on the head node."""

from __future__ import annotations

import json
import shutil

from chaos.engine_handle import EngineHandle


def test_nodes_check_reports_every_check_of_the_head_node(engine: EngineHandle) -> None:
    proc = engine.cli("nodes", "check", "--json", check=False)
    [result] = json.loads(proc.stdout)
    rows = {r["check"]: r for r in result["checks"]}
    assert list(rows) == ["link", "host key", "software", "gpus", "disk", "clock"]
    assert rows["link"]["ok"] and rows["link"]["detail"].startswith("up")
    assert rows["host key"]["ok"] and rows["software"]["ok"]
    assert "torch" in rows["software"]["detail"]
    assert rows["gpus"] == {"check": "gpus", "ok": True, "detail": "0 seen"}
    free = shutil.disk_usage(engine.home).free / 1e9
    assert str(engine.home) in rows["disk"]["detail"]
    assert rows["disk"]["ok"] == (free >= 5.0)
    assert rows["clock"]["ok"] and "s against the head" in rows["clock"]["detail"]
    assert proc.returncode == (0 if result["ok"] else 1)
    table = engine.cli("nodes", "check", "local", check=False).stdout
    assert "NODE" in table and "clock" in table
    assert ("every check passed" if result["ok"] else "checks failed on local") in table
    # the last result is kept on the node, for the screen
    [node] = engine.json("nodes")
    assert node["check"]["checks"][0]["check"] == "link"


def test_an_unknown_node_is_one_line_naming_the_nodes(engine: EngineHandle) -> None:
    for action in ("check", "drain", "undrain"):
        proc = engine.cli("nodes", action, "gpu9", check=False)
        assert proc.returncode == 1
        [line] = proc.stderr.strip().splitlines()
        assert "no node 'gpu9'" in line and "nodes: local" in line


def test_drain_and_undrain_the_head_node(engine: EngineHandle) -> None:
    out = engine.cli("nodes", "drain", "local", "--reason", "disk swap").stdout
    assert out.strip() == "node local: drained (drained: disk swap)"
    [node] = engine.json("nodes")
    assert node["state"] == "drained" and node["drain_reason"] == "disk swap"
    listing = engine.cli("nodes").stdout
    assert "DRAINED" in listing and "drained: disk swap" in listing
    engine.cli("engine", "stop")  # remembered across a restart
    [node] = engine.json("nodes")
    assert node["state"] == "drained"
    assert engine.cli("nodes", "undrain", "local").stdout.strip() == "node local: up"
