"""What the engine needs from a channel to one node agent.

A channel is started once (`start` spawns the agent and reads its hello,
then `hello` holds that dict), sends commands (`send`), yields events in
order (`events()`, one consumer, ending when the agent process ends), and is
closed with `close` (asks the agent to shut down, waits, kills the agent if it
must; never touches the jobs, which run in their own sessions). Any failure
to reach or keep the agent is an `AgentError` whose message names the node.
The wire format is engine.agent.protocol's JSON lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from engine.agent.protocol import Command


class AgentError(RuntimeError):
    """The agent of `node` could not be started or reached."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"agent on node {node}: {message}")
        self.node = node


@runtime_checkable
class AgentChannel(Protocol):
    node: str
    hello: dict[str, Any] | None

    async def start(self) -> None:
        """Spawn the agent and read its hello; AgentError if it dies, says
        nothing within the hello timeout (15 s), or says a hello that
        protocol.parse_event refuses or of another protocol version
        (protocol.check_hello)."""

    async def send(self, message: Command | dict[str, Any]) -> None:
        """Write one command (a protocol command or its to_wire() dict);
        AgentError if the agent is gone."""

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events after hello, in order; ends when the agent process ends.
        (Implemented as an async generator: `async for ev in ch.events()`.)"""
        ...

    async def close(self) -> None:
        """Send shutdown, wait, kill the agent if needed. Jobs keep running."""

    @property
    def alive(self) -> bool:
        """The agent process is running."""
        ...
