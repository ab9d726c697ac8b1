"""The agent worker's handlers: a user request starts a run, tool results continue it.

The tool-calling loop's state machine lives in :mod:`agentstream.agents.loop`; this package
turns its decisions into events (``tool_call``, ``memory_call``, ``agent_response``) and
sweeps runs whose deadline passed while waiting for tools.
"""

from agentstream.handlers.agent.routes import AgentHandlers

__all__ = ["AgentHandlers"]
