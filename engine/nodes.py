"""The engine's side of its node agents: one long-lived channel per node
(`engine.transport`), reconnected with capped, jittered backoff
(`health.reconnect_delay`), and what is known of each node (up or down and
why, since when, its GPUs, slots and latest telemetry).

Contract:
- `Nodes.start()` runs one connection loop per node until `stop()`. Each
  successful connection calls `on_hello(node, hello)` once, then
  `on_event(node, event)` for every event, in order; a channel that ends or
  cannot start marks the node down (published as a "node" event) and the
  loop tries again.
- `send` never blocks and never raises: a command for a node that is down is
  dropped, because what matters is re-sent when the node says hello again
  (the runtime reconciles then).
- Events arrive typed (`engine.agent.protocol.parse_event`); one that does
  not parse is logged and skipped, the channel goes on.
- Nothing here decides what happens to jobs; `engine.health` does, and the
  runtime applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import health, versions
from engine.agent.protocol import (
    Command,
    Event,
    Hello,
    Peer,
    Pong,
    Probe,
    ProbeResult,
    Procs,
    ProcsResult,
    ProtocolError,
    Simple,
    parse_event,
)
from engine.hub import EventHub
from engine.model import NodeSpec
from engine.transport.base import AgentChannel

log = logging.getLogger("llmconsole.engine")

HEARTBEAT_TICK_S = 1.0  # how often silence is looked at (and pings sent when due)

ChannelFactory = Callable[[NodeSpec], AgentChannel]
HelloHandler = Callable[["NodeState", Hello], None]
EventHandler = Callable[["NodeState", Event], None]


@dataclass
class NodeState:
    spec: NodeSpec
    channel: AgentChannel | None = None
    up: bool = False
    gpus: int = 0
    slots: int = 1
    memory_gb: float | None = None
    gpu_names: list[str] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None
    error: str | None = None
    down_since: float | None = None
    seen: bool = False  # has said hello at least once: its capacity is known
    last_heard: float | None = None  # when the agent last said anything
    rtt_ms: float | None = None  # the last ping's round trip
    software: dict[str, str] = field(default_factory=dict)
    incompatible: str | None = None  # why its software does not fit, with the fix
    untrusted: bool = False  # its host key is unknown or changed (error says which)
    drained: str | None = None  # why an admin drained it ("" for no reason given)
    check: dict[str, Any] | None = None  # the last `nodes check` of it
    state_published_suspect: bool = False
    suspect_after: float = health.SUSPECT_AFTER_S
    gpus_seen: int | None = None  # what its agent reported in hello
    machine: str | None = None  # the agent's host name: nodes on one machine share it

    @property
    def name(self) -> str:
        return self.spec.name

    def silent_for(self, now: float) -> float:
        return 0.0 if self.last_heard is None else max(0.0, now - self.last_heard)

    def condition(self, now: float) -> health.Condition:
        return health.node_state(connected=self.up, silent_for=self.silent_for(now),
                                 untrusted=self.untrusted,
                                 incompatible=self.incompatible is not None,
                                 drained=self.drained is not None,
                                 suspect_after=self.suspect_after)

    def state_reason(self, now: float) -> str | None:
        """Why it is not up, in words (None when up)."""
        condition = self.condition(now)
        if condition is health.Condition.UP:
            return None
        if condition is health.Condition.INCOMPATIBLE:
            return self.incompatible
        if condition is health.Condition.SUSPECT:
            return f"silent for {self.silent_for(now):.0f}s"
        if condition is health.Condition.DRAINED:
            return f"drained: {self.drained}" if self.drained else "drained"
        return self.error

    def status(self) -> health.NodeStatus:
        return health.NodeStatus(self.name, self.up, self.down_since, self.error)


class Nodes:
    def __init__(self, specs: Mapping[str, NodeSpec] | list[NodeSpec],
                 channel_factory: ChannelFactory, hub: EventHub,
                 clock: Callable[[], float], *, on_hello: HelloHandler,
                 on_event: EventHandler, rand: Callable[[], float] = random.random,
                 suspect_after: float = health.SUSPECT_AFTER_S,
                 dead_after: float = health.DEAD_AFTER_S,
                 ping_every: float = health.PING_EVERY_S) -> None:
        items = specs.values() if isinstance(specs, Mapping) else specs
        self.states: dict[str, NodeState] = {
            n.name: NodeState(n, suspect_after=suspect_after) for n in items}
        self.suspect_after, self.dead_after, self.ping_every = \
            suspect_after, dead_after, ping_every
        self.channel_factory = channel_factory
        self.hub = hub
        self.clock = clock
        self.on_hello = on_hello
        self.on_event = on_event
        self.rand = rand
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._pings: dict[str, dict[int, float]] = {}  # node -> ping id -> sent at
        self._ping_ids = 0
        self._requests: dict[int, asyncio.Future[ProbeResult | ProcsResult]] = {}
        self.head_software = versions.software_versions()

    def __iter__(self) -> Iterator[NodeState]:
        return iter(self.states.values())

    def __getitem__(self, name: str) -> NodeState:
        return self.states[name]

    def values(self) -> list[NodeState]:
        return list(self.states.values())

    def get(self, name: str) -> NodeState | None:
        return self.states.get(name)

    def specs(self) -> dict[str, NodeSpec]:
        return {n.name: n.spec for n in self.states.values()}

    def statuses(self) -> dict[str, health.NodeStatus]:
        return {n.name: n.status() for n in self.states.values()}

    def capacity_known(self) -> bool:
        return all(n.seen or (n.spec.gpus is not None and n.spec.slots is not None)
                   for n in self.states.values())

    # ------------------------------------------------------------- life
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for node in self.states.values():
            self._tasks.append(loop.create_task(self._loop(node), name=f"node {node.name}"))
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="heartbeats"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for node in self.states.values():
            if node.channel is not None:
                with contextlib.suppress(Exception):
                    await node.channel.close()

    async def wait_up(self, timeout: float) -> bool:
        """Until every node is up (True), or each has failed its first try
        or `timeout` has passed (False): an engine serves at once even when a
        node is untrusted or unreachable, not after the whole timeout."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if all(n.up for n in self.states.values()):
                return True
            if all(n.up or n.error is not None for n in self.states.values()):
                return False
            await asyncio.sleep(0.02)
        return False

    # --------------------------------------------------------------- send
    def send(self, node_name: str, message: Command) -> None:
        node = self.states.get(node_name)
        if node is None or node.channel is None or not node.up:
            return  # resent by the reconcile when the node comes back
        channel = node.channel

        async def send() -> None:
            try:
                await channel.send(message)
            except Exception as err:  # the reader notices the channel ending
                log.warning("node %s: could not send %s: %s", node_name,
                            message.to_wire().get("op"), err)

        task = asyncio.get_running_loop().create_task(send())
        self._sends.add(task)  # keep a reference until it is done
        task.add_done_callback(self._sends.discard)

    # --------------------------------------------------------- connection
    async def _loop(self, node: NodeState) -> None:
        failures = 0
        while not self._stopping:
            try:
                channel = self.channel_factory(node.spec)
                node.channel = channel
                await channel.start()
            except Exception as err:
                failures += 1
                node.untrusted = getattr(err, "state", None) == "untrusted"
                self.mark_down(node, str(err) if node.untrusted else f"agent did not start: {err}")
                await asyncio.sleep(health.reconnect_delay(failures, self.rand()))
                continue
            failures = 0
            try:
                hello = parse_event(getattr(channel, "hello", None) or {})
                if not isinstance(hello, Hello):
                    raise ProtocolError(f"the first event was {type(hello).__name__}, not hello")
            except ProtocolError as err:
                failures += 1
                self.mark_down(node, f"agent said no proper hello: {err}")
                await channel.close()
                await asyncio.sleep(health.reconnect_delay(failures, self.rand()))
                continue
            self._mark_up(node, hello)
            try:
                self.on_hello(node, hello)
                async for raw in channel.events():
                    node.last_heard = self.clock()
                    try:
                        event = parse_event(raw)
                    except ProtocolError as err:
                        log.warning("node %s: event skipped: %s", node.name, err)
                        continue
                    if isinstance(event, Pong):
                        self._on_pong(node, event)
                        continue
                    if isinstance(event, (ProbeResult, ProcsResult)):
                        waiting = self._requests.pop(event.id, None)
                        if waiting is not None and not waiting.done():
                            waiting.set_result(event)
                        continue
                    try:
                        self.on_event(node, event)
                    except Exception:
                        log.exception("node %s: event %s failed", node.name, type(event).__name__)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("node %s: channel failed: %s", node.name, err)
            if node.channel is channel and channel.alive:
                await channel.close()  # closed by the heartbeat check: make sure it is gone
            self.mark_down(node, node.error if node.error and not node.up
                           else "agent connection ended")
            await asyncio.sleep(health.reconnect_delay(1, self.rand()))

    # --------------------------------------------------------- heartbeats
    async def _heartbeat_loop(self) -> None:
        """Ping every connected node; a node silent for DEAD_AFTER_S has its
        channel closed (a hung link or agent), so that it reconnects."""
        next_ping = 0.0
        while True:
            await asyncio.sleep(HEARTBEAT_TICK_S)
            now = self.clock()
            ping = now >= next_ping
            if ping:
                next_ping = now + self.ping_every
            for node in self.states.values():
                if not node.up or node.channel is None:
                    continue
                verdict = health.link_verdict(node.silent_for(now),
                                              suspect_after=self.suspect_after,
                                              dead_after=self.dead_after)
                if verdict is health.Link.DEAD:
                    why = f"no heartbeat for {node.silent_for(now):.0f}s (a hung link or agent)"
                    log.warning("node %s: %s; reconnecting", node.name, why)
                    channel = node.channel
                    self.mark_down(node, why)
                    self._close_later(channel)
                    continue
                if verdict is health.Link.SUSPECT and not node.state_published_suspect:
                    node.state_published_suspect = True
                    self.hub.publish({"type": "node", "node": node.name, "up": True,
                                      "state": "suspect"})
                elif verdict is health.Link.OK and node.state_published_suspect:
                    node.state_published_suspect = False
                    self.hub.publish({"type": "node", "node": node.name, "up": True,
                                      "state": node.condition(now).value})
                if ping:
                    self._ping(node, now)

    def _ping(self, node: NodeState, now: float) -> None:
        self._ping_ids += 1
        sent = self._pings.setdefault(node.name, {})
        sent[self._ping_ids] = now
        for old in [i for i, t in sent.items() if now - t > self.dead_after]:
            del sent[old]  # never answered
        self.send(node.name, Simple("ping", self._ping_ids))

    def _on_pong(self, node: NodeState, pong: Pong) -> None:
        sent = self._pings.get(node.name, {}).pop(pong.id, None) \
            if isinstance(pong.id, int) else None
        if sent is not None:
            node.rtt_ms = (self.clock() - sent) * 1000.0

    async def probe(self, node_name: str, peers: tuple[Peer, ...], timeout: float
                    ) -> tuple[ProbeResult, float] | None:
        """Ask a node's agent for a probe; (its answer, when it was asked),
        or None if the node is down or does not answer within `timeout`."""
        got = await self._request(node_name, lambda i: Probe(i, peers), timeout)
        return (got[0], got[1]) if got is not None and isinstance(got[0], ProbeResult) \
            else None

    async def procs(self, node_name: str, attempt: str, run_dir: str, timeout: float
                    ) -> ProcsResult | None:
        """The attempt's processes on a node, or None if it cannot say."""
        got = await self._request(node_name, lambda i: Procs(i, attempt, run_dir), timeout)
        return got[0] if got is not None and isinstance(got[0], ProcsResult) else None

    async def _request(self, node_name: str, make: Callable[[int], Command], timeout: float
                       ) -> tuple[ProbeResult | ProcsResult, float] | None:
        """Send the command `make(id)` and wait for the event answering that id."""
        node = self.states.get(node_name)
        if node is None or not node.up:
            return None
        self._ping_ids += 1
        request_id = self._ping_ids
        waiting: asyncio.Future[ProbeResult | ProcsResult] = \
            asyncio.get_running_loop().create_future()
        self._requests[request_id] = waiting
        asked = self.clock()
        self.send(node_name, make(request_id))
        try:
            return await asyncio.wait_for(waiting, timeout), asked
        except asyncio.TimeoutError:
            return None
        finally:
            self._requests.pop(request_id, None)

    def _close_later(self, channel: AgentChannel) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await channel.close()

        task = asyncio.get_running_loop().create_task(close())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _mark_up(self, node: NodeState, hello: Hello) -> None:
        node.gpus = node.spec.gpus if node.spec.gpus is not None else len(hello.gpus)
        node.gpu_names = [str(g.get("name", "")) for g in hello.gpus]
        node.slots = node.spec.slots if node.spec.slots is not None else (hello.cpus or 1)
        node.memory_gb = node.spec.memory_gb
        node.up, node.error, node.down_since, node.seen = True, None, None, True
        node.last_heard, node.untrusted = self.clock(), False
        node.gpus_seen = len(hello.gpus)
        node.machine = hello.host
        node.software = dict(hello.software)
        node.incompatible = None if node.spec.is_local else versions.incompatible_reason(
            self.head_software, node.software, node.name)
        if node.incompatible:
            log.warning("node %s %s", node.name, node.incompatible)
        log.info("node %s up: %d GPUs, %d slots", node.name, node.gpus, node.slots)
        self.hub.publish({"type": "node", "node": node.name, "up": True})

    def mark_down(self, node: NodeState, why: str) -> None:
        if node.up or node.error is None:
            log.warning("node %s down: %s", node.name, why)
        if node.down_since is None:
            node.down_since = self.clock()
        node.up, node.error = False, why
        self.hub.publish({"type": "node", "node": node.name, "up": False, "error": why})
