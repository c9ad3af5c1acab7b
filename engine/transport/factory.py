"""Which channel reaches which node: `channel_factory(home, interval)` is
what the runtime calls once per connection attempt to a node. The head node
(`NodeSpec.is_local`) gets a `LocalAgentChannel` with its run directories
under the engine home; any other node needs the SSH transport, which this
engine does not have yet (`NoTransport`, a line naming the node)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.errors import UserError
from engine.model import NodeSpec
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel


class NoTransport(UserError):
    """No transport reaches this node."""


def channel_factory(home: Path, telemetry_interval: float) -> Callable[[NodeSpec], AgentChannel]:

    def make(node: NodeSpec) -> AgentChannel:
        if node.is_local:
            return LocalAgentChannel(node.name, home, interval=telemetry_interval)
        raise NoTransport(f"node {node.name} ({node.host}) needs the SSH transport, "
                          f"which this engine does not have yet")

    return make
