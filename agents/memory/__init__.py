"""Memory: the long-term :class:`MemoryBook` behind the ``remember`` / ``recall`` tools and
the per-conversation :class:`ConversationSummary`.

Both are projections of the event stream and deterministic (:mod:`.keywords` has no model
and no randomness), so replaying the topics rebuilds the same memory.
"""

from agentstream.agents.memory.book import (
    MEMORY_TOOLS,
    Fact,
    MemoryBook,
    RecallArgs,
    RememberArgs,
    apply_memory_call,
    memory_scope,
    memory_tool_specs,
)
from agentstream.agents.memory.summary import ConversationSummary

__all__ = [
    "MEMORY_TOOLS",
    "ConversationSummary",
    "Fact",
    "MemoryBook",
    "RecallArgs",
    "RememberArgs",
    "apply_memory_call",
    "memory_scope",
    "memory_tool_specs",
]
