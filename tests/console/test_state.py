"""The screen's model, fed events as the engine sends them."""

from __future__ import annotations

from console.state import (
    NODE_STATES,
    ConsoleState,
    Progress,
    bar,
    duration,
    host_key_changed,
    host_key_refused,
    middle_cut,
    node_line,
    node_state,
    progress_line,
    rtt_text,
    run_time,
    smoothed,
    spark,
    state_word,
)


def job(id_: int, state: str, name: str = "j") -> dict:
    return {"id": id_, "name": name, "kind": "train", "state": state, "owner": "ann"}


def test_events_update_jobs_nodes_and_loss_in_order() -> None:
    s = ConsoleState()
    s.load([{"name": "n1", "up": True, "gpus": [], "jobs": []}], [job(1, "queued")])
    changed = s.apply([
        {"type": "job", "job": job(1, "running")},
        {"type": "metric", "job": 1, "attempt": 1, "step": 1, "values": {"loss": 4.0}},
        {"type": "metric", "job": 1, "attempt": 1, "step": 2,
         "values": {"loss": 3.0, "eval_loss": 3.5, "lr": float("nan")}},
        {"type": "telemetry", "node": "n1", "cpu_percent": 50.0,
         "gpus": [{"index": 0, "util_percent": 80.0, "memory_used_mb": 1024}]},
        {"type": "node", "node": "n2", "up": False, "error": "ssh: timeout"},
    ])
    assert changed == {"jobs", "metrics", "nodes"}
    assert s.jobs[1]["state"] == "running"
    series = s.series[1]
    assert list(series.loss) == [(1, 4.0), (2, 3.0)] and list(series.eval_loss) == [(2, 3.5)]
    assert "lr" not in series.last and series.step == 2
    assert s.nodes["n1"]["gpus"][0]["util_percent"] == 80.0
    assert list(s.gpu_history[("n1", 0)]) == [80.0]
    assert s.nodes["n2"] == {"name": "n2", "gpus": [], "jobs": [], "up": False,
                             "error": "ssh: timeout"}


def test_a_new_attempt_starts_a_new_series_and_old_points_are_ignored() -> None:
    s = ConsoleState()
    s.apply([{"type": "metric", "job": 7, "attempt": 1, "step": 5, "values": {"loss": 2.0}}])
    s.apply([{"type": "metric", "job": 7, "attempt": 2, "step": 1, "values": {"loss": 9.0}},
             {"type": "metric", "job": 7, "attempt": 1, "step": 6, "values": {"loss": 1.0}}])
    assert s.series[7].attempt == 2 and list(s.series[7].loss) == [(1, 9.0)]


def test_visible_jobs_filter_and_hide_ended() -> None:
    s = ConsoleState()
    s.load([], [job(1, "succeeded", "pretrain"), job(2, "running", "prune"),
                job(3, "queued", "eval")])
    def ids(shown_total: tuple[list[dict], int]) -> tuple[list[int], int]:
        return [j["id"] for j in shown_total[0]], shown_total[1]

    assert ids(s.visible_jobs(show_ended=True)) == ([3, 2, 1], 3)
    assert ids(s.visible_jobs(show_ended=False)) == ([3, 2], 2)
    assert ids(s.visible_jobs(True, "PRE")) == ([1], 1)
    assert ids(s.visible_jobs(True, limit=2)) == ([3, 2], 3)
    assert s.counts() == {"succeeded": 1, "running": 1, "queued": 1}

    # counts and order follow events: a state change, then a new job
    s.apply([{"type": "job", "job": job(3, "running", "eval")},
             {"type": "job", "job": job(4, "queued", "zeta")}])
    assert s.counts() == {"succeeded": 1, "running": 2, "queued": 1}
    assert ids(s.visible_jobs(True)) == ([4, 3, 2, 1], 4)


def test_visible_jobs_sorts_by_state_name_and_loss() -> None:
    s = ConsoleState()
    s.load([], [job(1, "succeeded", "b"), job(2, "running", "C"), job(3, "queued", "a"),
                job(4, "failed", "d")])
    s.apply([{"type": "metric", "job": 1, "step": 1, "values": {"loss": 2.0}},
             {"type": "metric", "job": 4, "step": 1, "values": {"loss": 1.0}}])

    def order(sort: str) -> list[int]:
        return [j["id"] for j in s.visible_jobs(True, sort=sort)[0]]

    assert order("state") == [2, 3, 4, 1]  # running, queued, then ended ones
    assert order("name") == [3, 1, 2, 4]
    assert order("loss") == [4, 1, 3, 2]  # no loss yet: last, newest first


def test_metric_history_loads_from_the_api_listing() -> None:
    s = ConsoleState()
    s.load_metrics(4, [{"attempt": 1, "step": 2, "name": "loss", "value": 2.0},
                       {"attempt": 1, "step": 1, "name": "loss", "value": 3.0}])
    assert list(s.series[4].loss) == [(1, 3.0), (2, 2.0)]


def test_text_helpers() -> None:
    assert bar(50, 10) == "█████░░░░░" and bar(None, 3) == "-  "
    assert smoothed([1.0, 0.0], 0.5) == [1.0, 0.5]
    assert spark([0, 100], 4) == "▁█"


def test_node_events_patch_the_state_word_and_ask_for_the_views_again() -> None:
    s = ConsoleState()
    s.load([{"name": "n1", "up": True, "state": "up", "gpus": [], "jobs": []}], [])
    assert not s.nodes_stale
    s.apply([{"type": "node", "node": "n1", "up": True, "state": "drained"}])
    assert node_state(s.nodes["n1"]) == "drained" and s.nodes_stale
    s.nodes_stale = False
    s.apply([{"type": "node", "node": "n1", "up": False, "error": "ssh: timeout"}])
    assert node_state(s.nodes["n1"]) == "down" and s.nodes_stale  # `up` alone says down
    s.nodes_stale = False
    assert s.apply([{"type": "nodes-checked", "nodes": ["n1"]}]) == set() and s.nodes_stale
    s.apply([{"type": "telemetry", "node": "n1", "gpus": [{"index": 0, "util_percent": 5.0}]}])
    s.load_nodes([{"name": "n1", "up": True, "state": "up", "gpus": [], "jobs": []}])
    assert node_state(s.nodes["n1"]) == "up" and list(s.gpu_history[("n1", 0)]) == [5.0]


def test_a_node_in_words() -> None:
    check = {"node": "n1", "ok": True, "time": 0.0,
             "checks": [{"check": "link", "ok": True, "detail": "up"},
                        {"check": "gpus", "ok": None, "detail": "not asked"}]}
    up = {"name": "n1", "state": "up", "state_reason": None, "rtt_ms": 0.4,
          "gpus": [{"index": 0}, {"index": 1}], "jobs": [4, 7], "check": check}
    assert node_line(up, clock_text=lambda t: "12:03") == \
        "node n1: up | check ok 12:03 | rtt <1ms | 2 GPUs | jobs 4,7"
    failed = {**check, "ok": False, "checks": [{"check": "disk", "ok": False, "detail": "0"},
                                               {"check": "clock", "ok": False, "detail": "9"}]}
    drained = {**up, "state": "drained", "state_reason": "drained: disk swap", "rtt_ms": 12.6,
               "gpus": [], "jobs": [], "check": failed}
    assert node_line(drained) == \
        "node n1: DRAINED | check: disk, clock FAIL | rtt 13ms | no GPU | drained: disk swap"
    down = {"name": "n2", "up": False, "rtt_ms": 3.0, "error": "agent on node n2: host key "
            "unknown: n2 offers ED25519 key SHA256:x", "gpus": [{"index": 0}]}
    assert node_line(down) == ("node n2: DOWN | not checked | 1 GPU | host key unknown: n2 "
                               "offers ED25519 key SHA256:x")  # no round trip while down
    assert rtt_text(down) == "" and host_key_refused(down) and not host_key_changed(down)
    untrusted = {"name": "n3", "state": "untrusted",
                 "state_reason": "agent on node n3: host key CHANGED: n3 offers ..."}
    assert host_key_refused(untrusted) and host_key_changed(untrusted)
    assert not host_key_refused({**down, "error": "ssh: connection refused"})
    assert [state_word(w) for w in NODE_STATES] == ["up", "SUSPECT", "DOWN", "UNTRUSTED",
                                                    "INCOMPATIBLE", "DRAINED"]


def test_a_fetched_history_merges_with_the_live_points_that_came_first() -> None:
    s = ConsoleState()
    s.apply([{"type": "metric", "job": 4, "attempt": 1, "step": s_, "time": 100.0 + s_,
              "values": {"loss": 10.0 / s_, "total_steps": 10}} for s_ in (5, 6)])
    history = [{"attempt": 1, "step": s_, "name": "loss", "value": 10.0 / s_,
                "time": 100.0 + s_} for s_ in range(1, 6)]  # up to the first live one
    s.load_metrics(4, history)
    series = s.series[4]
    assert list(series.loss) == [(s_, 10.0 / s_) for s_ in range(1, 7)]  # no gap, no repeat
    assert series.step == 6 and series.last["total_steps"] == 10  # not charted, kept
    # live points queued while the history was fetched, that it has already: once each
    s.apply([{"type": "metric", "job": 4, "attempt": 1, "step": s_, "values": {"loss": 10.0 / s_}}
             for s_ in (3, 6)])
    assert list(s.series[4].loss) == [(s_, 10.0 / s_) for s_ in range(1, 7)]
    # an older attempt's history does not replace the newer attempt's points
    s.apply([{"type": "metric", "job": 4, "attempt": 2, "step": 1, "values": {"loss": 9.0}}])
    s.load_metrics(4, history)
    assert s.series[4].attempt == 2 and list(s.series[4].loss) == [(1, 9.0)]


def test_progress_comes_from_the_job_view_until_the_series_is_further() -> None:
    s = ConsoleState()
    s.load([], [{**job(1, "succeeded"), "attempt": 1,
                 "progress": {"step": 300, "total": 300, "loss": 2.5, "tokens_per_s": 900.0,
                              "time": 0.0}},
                {**job(2, "running"), "attempt": 2, "progress": None}])
    p = s.job_progress(1)
    assert (p.step, p.total, p.loss, p.tokens_per_s) == (300, 300, 2.5, 900.0)
    assert s.job_progress(2).step is None
    s.apply([{"type": "metric", "job": 2, "attempt": 1, "step": 50, "values": {"loss": 1.0}}])
    assert s.job_progress(2).loss is None  # the last attempt's point is not the current one
    s.apply([{"type": "metric", "job": 2, "attempt": 2, "step": s_, "time": float(s_),
              "values": {"loss": 3.0, "total_steps": 20, "tokens_per_s": 1500.0}}
             for s_ in (1, 2, 3, 4)])
    p = s.job_progress(2)
    assert (p.step, p.total, p.loss, p.rate) == (4, 20, 3.0, 1.0)
    assert progress_line(p) == "4/20 1.5k tok/s ETA 0:16"
    assert progress_line(Progress(step=7)) == "step 7"


def test_allocations_change_when_a_job_starts_or_ends() -> None:
    s = ConsoleState()
    s.load([], [job(1, "queued")])
    s.apply([{"type": "job", "job": job(1, "queued")}])
    assert not s.allocations_changed
    s.apply([{"type": "job", "job": job(1, "starting")}])
    assert s.allocations_changed
    s.allocations_changed = False
    s.apply([{"type": "job", "job": job(1, "running")}])
    assert not s.allocations_changed  # still holding the same
    s.apply([{"type": "job", "job": job(1, "failed")}])
    assert s.allocations_changed


def test_run_time_names_and_staleness() -> None:
    ran = {"state": "succeeded", "started_at": 100.0, "ended_at": 107.0, "submitted_at": 0.0}
    assert run_time(ran, now=10_000.0) == 7.0 and duration(7.0) == "0:07"
    assert run_time({"state": "queued", "submitted_at": 0.0}, now=50.0) is None
    assert run_time({"state": "running", "started_at": 40.0}, now=50.0) == 10.0
    assert duration(None) == "-" and duration(3 * 3600 + 420) == "3h07"
    a, b = "pipeline-tiny/prune", "pipeline-tiny/pretrain"
    for width in range(3, 24):
        ca, cb = middle_cut(a, width), middle_cut(b, width)
        assert len(ca) <= width and len(cb) <= width
        assert ca != cb  # the stages stay distinct at every width
    assert middle_cut(a, 14) == "pipelin…/prune" and middle_cut(b, 14) == "pipe…/pretrain"
    s = ConsoleState()
    s.load([], [])
    s.disconnected("gone", now=5.0)
    s.disconnected("still gone", now=9.0)
    assert not s.connected and s.stale_since == 5.0  # since the first loss
    s.load([], [])
    assert s.connected and s.stale_since is None
