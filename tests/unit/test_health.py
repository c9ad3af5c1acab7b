"""Node health decisions (engine/health.py): backoff, lost attempts and the
reconcile after a hello, checked over generated inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine import health
from engine.health import Action, AttemptNodes, Known, NodeStatus, Reported

names = st.sampled_from(["a", "b", "c", "d"])


@given(st.integers(1, 200), st.floats(0, 1, exclude_max=True))
def test_backoff_grows_to_the_cap_and_stays_within_the_jitter(failures: int, rand: float
                                                              ) -> None:
    delay = health.reconnect_delay(failures, rand)
    base = min(health.RECONNECT_CAP_S, health.RECONNECT_FIRST_S * 2 ** (failures - 1))
    assert base * (1 - health.RECONNECT_JITTER) <= delay <= base * (1 + health.RECONNECT_JITTER)
    assert delay <= health.RECONNECT_CAP_S * (1 + health.RECONNECT_JITTER)


def test_backoff_doubles_from_half_a_second() -> None:
    assert [health.reconnect_delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert health.reconnect_delay(100, 0.5) == health.RECONNECT_CAP_S


node_status = st.builds(NodeStatus, names, st.booleans(),
                        st.one_of(st.none(), st.floats(0, 1000)), st.none())


@given(st.dictionaries(names, node_status),
       st.lists(st.tuples(st.text("xyz", min_size=1, max_size=3),
                          st.lists(names, min_size=1, max_size=3, unique=True)), max_size=6,
                unique_by=lambda t: t[0]),
       st.floats(0, 2000), st.floats(0, 500))
def test_an_attempt_is_lost_exactly_when_one_of_its_nodes_is_down_too_long(
        statuses: dict[str, NodeStatus], attempts: list[tuple[str, list[str]]], now: float,
        lost_after: float) -> None:
    nodes = {name: NodeStatus(name, s.up, s.down_since) for name, s in statuses.items()}
    lost = health.lost_attempts(nodes, [AttemptNodes(k, tuple(n)) for k, n in attempts], now,
                                lost_after)
    by_key = {item.key: item for item in lost}
    assert len(by_key) == len(lost)  # each attempt at most once

    def gone(name: str) -> bool:
        s = nodes.get(name)
        return s is None or (not s.up and s.down_since is not None
                             and now - s.down_since >= lost_after)

    for key, held in attempts:
        assert (key in by_key) == any(gone(n) for n in held)
        if key in by_key:  # the first gone node in placement order is named
            assert by_key[key].node == next(n for n in held if gone(n))


def test_a_dead_second_node_loses_the_attempt() -> None:
    nodes = {"a": NodeStatus("a", True), "b": NodeStatus("b", False, 0.0, "ssh: refused")}
    [lost] = health.lost_attempts(nodes, [AttemptNodes("1.1", ("a", "b"))], 61.0, 60.0)
    assert lost.node == "b" and "unreachable for 61s: ssh: refused" in lost.reason


known = st.builds(Known, st.text("pq", min_size=1, max_size=2), st.booleans(), st.booleans(),
                  st.booleans())
reported = st.builds(Reported, st.text("pq", min_size=1, max_size=2), st.booleans())


@given(st.lists(known, unique_by=lambda k: k.key), st.lists(reported, unique_by=lambda r: r.key))
def test_reconcile_decides_once_per_attempt_the_node_runs(ks: list[Known], rs: list[Reported]
                                                          ) -> None:
    decisions = dict(health.reconcile(ks, rs))
    assert len(decisions) == len(health.reconcile(ks, rs))
    on_node = {r.key: r for r in rs}
    for k in ks:
        if not k.launch_here:
            assert k.key not in decisions
        elif k.key in on_node:
            assert decisions[k.key] is (Action.ATTACH_AND_STOP if k.cancel_requested
                                        else Action.ATTACH)
        else:
            assert decisions[k.key] is (Action.LAUNCH if k.starting else Action.LOSE)
    known_keys = {k.key for k in ks}
    for r in rs:
        if r.key not in known_keys:
            assert (decisions.get(r.key) is Action.STOP) == r.alive


@given(st.booleans(), st.floats(0, 100), st.booleans(), st.booleans(), st.booleans())
def test_a_node_has_one_state_and_only_up_takes_work(connected: bool, silent: float,
                                                     untrusted: bool, incompatible: bool,
                                                     drained: bool) -> None:
    state = health.node_state(connected=connected, silent_for=silent, untrusted=untrusted,
                              incompatible=incompatible, drained=drained, suspect_after=10.0)
    if not connected:
        assert state is (health.Condition.UNTRUSTED if untrusted else health.Condition.DOWN)
    elif incompatible:
        assert state is health.Condition.INCOMPATIBLE
    elif silent >= 10.0:
        assert state is health.Condition.SUSPECT
    elif drained:
        assert state is health.Condition.DRAINED
    else:
        assert state is health.Condition.UP
    assert state.takes_work() == (state is health.Condition.UP)


@given(st.floats(0, 1000))
def test_silence_makes_a_link_suspect_then_dead(silent: float) -> None:
    verdict = health.link_verdict(silent, suspect_after=10.0, dead_after=20.0)
    expected = health.Link.DEAD if silent >= 20 else \
        health.Link.SUSPECT if silent >= 10 else health.Link.OK
    assert verdict is expected
