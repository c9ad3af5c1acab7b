"""Channels from the engine to node agents: `base.AgentChannel` (the protocol
every transport implements) and `local.LocalAgentChannel` (a subprocess on
this machine). An SSH transport wraps `local.agent_argv` the same way."""

from engine.transport.base import AgentChannel, AgentError
from engine.transport.local import LocalAgentChannel, agent_argv

__all__ = ["AgentChannel", "AgentError", "LocalAgentChannel", "agent_argv"]
