"""Which channel reaches which node: `channel_factory(home, interval,
known_hosts=...)` is what the runtime calls once per connection attempt to
a node. The head node (`NodeSpec.is_local`) gets a `LocalAgentChannel` with
its run directories under the engine home; every other node an
`ssh.SshAgentChannel` (one `ssh -T` running the agent there, host keys
checked strictly against `known_hosts`, the cluster profile's file, or
ssh's own when None)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.model import NodeSpec, node_root
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel
from engine.transport.ssh import SshAgentChannel


def channel_factory(home: Path, telemetry_interval: float, *,
                    known_hosts: str | None = None) -> Callable[[NodeSpec], AgentChannel]:

    def make(node: NodeSpec) -> AgentChannel:
        if node.is_local:
            return LocalAgentChannel(node.name, Path(node_root(node, home)).expanduser(),
                                     interval=telemetry_interval)
        return SshAgentChannel(node, home, telemetry_interval, known_hosts=known_hosts)

    return make
