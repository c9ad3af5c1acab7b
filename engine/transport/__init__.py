"""Channels from the engine to node agents: `base.AgentChannel` (the protocol
every transport implements), `subprocess_channel.SubprocessChannel` (an
agent behind any subprocess speaking JSON lines), `local.LocalAgentChannel`
(that, on this machine) and `factory.channel_factory` (which node gets which
channel). An SSH transport is a SubprocessChannel with ssh in front of
`local.agent_argv`."""

from engine.transport.base import AgentChannel, AgentError
from engine.transport.local import LocalAgentChannel, agent_argv
from engine.transport.subprocess_channel import SubprocessChannel

__all__ = ["AgentChannel", "AgentError", "LocalAgentChannel", "SubprocessChannel", "agent_argv"]
