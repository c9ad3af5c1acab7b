"""Node health, as pure decisions: values in, decisions out, no I/O and no
clock (the caller passes `now`). `engine.nodes` applies them.

- `reconnect_delay`: how long to wait before the next connection attempt to
  a node's agent: capped exponential backoff with jitter, so a cluster whose
  head node restarts does not reconnect every node in the same instant.
- `lost_attempts`: the attempts to give up on because a node they run on has
  been unreachable for `lost_after` seconds. Every node of an attempt counts,
  not only the first: a horovodrun job whose second node died is as lost as
  one whose launcher node did.
- `reconcile`: what to do with each attempt the store says runs on a node,
  given the runs that node's agent reported in its hello.
- `node_state`: a node's state in one word, from what is known of its link
  (connected or not, how long silent), its trust, its software and whether
  an admin drained it. Heartbeats, not only a closed channel, decide: a
  hung SSH session whose process lives goes suspect, then dead.

Node states (`Condition`), and what the scheduler does with each:
- up: connected and heard from recently; takes new work.
- suspect: connected, but silent (no telemetry, no pong) for SUSPECT_AFTER_S;
  keeps its attempts, takes no new work.
- down: not connected (the channel ended or cannot start, or it was closed
  after DEAD_AFTER_S of silence); its attempts are lost after `lost_after`.
- untrusted: its host key is unknown or changed; nothing runs there until
  `llmconsole nodes trust NODE`.
- incompatible: connected, but its software differs from the head's
  (engine.versions); takes no new work.
- drained: up, but an admin said no new work (`llmconsole nodes drain`);
  its running attempts go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

# Heartbeats. Every node gets a ping each PING_EVERY_S and sends telemetry
# each second, so silence means trouble: SUSPECT_AFTER_S without a word
# makes it suspect (about two missed pings: a loaded node is not flagged for
# one late answer), DEAD_AFTER_S closes its channel so that it reconnects
# (longer than ssh's own ServerAlive limit of 15 s, so a dead link is
# usually noticed by ssh first, and a hung agent behind a live link by this).
PING_EVERY_S = 5.0
SUSPECT_AFTER_S = 10.0
DEAD_AFTER_S = 20.0

# Reconnect backoff: the first retry comes quickly (an agent restarting), the
# cap keeps a node that is down for hours from being forgotten for long.
RECONNECT_FIRST_S = 0.5
RECONNECT_CAP_S = 30.0
RECONNECT_JITTER = 0.2  # +-20 % of the delay


def reconnect_delay(failures: int, rand: float, *, first: float = RECONNECT_FIRST_S,
                    cap: float = RECONNECT_CAP_S, jitter: float = RECONNECT_JITTER) -> float:
    """The wait before connection attempt number `failures` + 1 (`failures` >= 1
    consecutive failures so far). `rand` is a uniform draw in [0, 1)."""
    base = min(cap, first * 2.0 ** min(max(failures - 1, 0), 32))
    return max(0.0, base * (1.0 + jitter * (2.0 * rand - 1.0)))


class Condition(Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    UNTRUSTED = "untrusted"
    INCOMPATIBLE = "incompatible"
    DRAINED = "drained"

    def takes_work(self) -> bool:
        return self is Condition.UP


class Link(Enum):
    OK = "ok"
    SUSPECT = "suspect"
    DEAD = "dead"


def link_verdict(silent_for: float, *, suspect_after: float = SUSPECT_AFTER_S,
                 dead_after: float = DEAD_AFTER_S) -> Link:
    """A connected node's link after `silent_for` seconds without a word."""
    if silent_for >= dead_after:
        return Link.DEAD
    if silent_for >= suspect_after:
        return Link.SUSPECT
    return Link.OK


def node_state(*, connected: bool, silent_for: float, untrusted: bool,
               incompatible: bool, drained: bool,
               suspect_after: float = SUSPECT_AFTER_S) -> Condition:
    """The one word for a node. What stops work comes first: a node that
    cannot be trusted or reached says so before it says drained."""
    if not connected:
        return Condition.UNTRUSTED if untrusted else Condition.DOWN
    if incompatible:
        return Condition.INCOMPATIBLE
    if silent_for >= suspect_after:
        return Condition.SUSPECT
    if drained:
        return Condition.DRAINED
    return Condition.UP


@dataclass(frozen=True)
class NodeStatus:
    """What health needs to know of a node."""

    name: str
    up: bool
    down_since: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AttemptNodes:
    """An active attempt and the nodes it holds, the launching node first."""

    key: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Lost:
    key: str
    node: str
    reason: str


def lost_attempts(nodes: Mapping[str, NodeStatus], attempts: Iterable[AttemptNodes],
                  now: float, lost_after: float) -> list[Lost]:
    """The attempts holding a node that has been down for `lost_after` seconds
    or more, each once, with the first such node in placement order. A node
    the cluster no longer lists counts as down since forever."""
    out = []
    for attempt in attempts:
        for name in attempt.nodes:
            node = nodes.get(name)
            if node is None:
                out.append(Lost(attempt.key, name, f"node {name} is not in the cluster"))
                break
            if node.up or node.down_since is None:
                continue
            away = now - node.down_since
            if away >= lost_after:
                why = f": {node.error}" if node.error else ""
                out.append(Lost(attempt.key, name,
                                f"node {name} unreachable for {away:.0f}s{why}"))
                break
    return out


class Action(Enum):
    """What to do with an attempt the store has on a node that just said hello."""

    ATTACH = "attach"  # the agent has it: resume streaming from our offsets
    ATTACH_AND_STOP = "attach-and-stop"  # it has it, and a cancel was asked meanwhile
    LAUNCH = "launch"  # the start never reached the agent: send it (idempotent)
    LOSE = "lose"  # it was started, but the node has no record of it
    STOP = "stop"  # the agent runs something the store says has ended


@dataclass(frozen=True)
class Known:
    """An attempt the store says is placed on the node (its part there)."""

    key: str
    starting: bool  # still `starting` in the store
    cancel_requested: bool
    launch_here: bool  # this node runs a part of it (not only horovodrun's ranks)


@dataclass(frozen=True)
class Reported:
    """A run the node's agent reported in its hello."""

    key: str
    alive: bool


def reconcile(known: Sequence[Known], reported: Sequence[Reported]
              ) -> list[tuple[str, Action]]:
    """Decisions for the attempts on one node, in the order of `known`, then
    the strays the agent has and the store does not, alive ones only."""
    on_node = {r.key: r for r in reported}
    decisions: list[tuple[str, Action]] = []
    for k in known:
        if not k.launch_here:
            continue  # its ranks there are horovodrun's; the launching node reports
        found = on_node.pop(k.key, None)
        if found is not None:
            decisions.append((k.key, Action.ATTACH_AND_STOP if k.cancel_requested
                              else Action.ATTACH))
        elif k.starting:
            decisions.append((k.key, Action.LAUNCH))
        else:
            decisions.append((k.key, Action.LOSE))
    known_keys = {k.key for k in known}
    decisions += [(r.key, Action.STOP) for r in on_node.values()
                  if r.alive and r.key not in known_keys]
    return decisions
