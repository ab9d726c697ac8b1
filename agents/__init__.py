"""The agent domain: model clients, tools, memory and the tool-calling loop. Pure of Kafka.

Handlers call into this package; it imports :mod:`schemas` and third-party libraries only
(an import-linter contract keeps it so). State objects are pydantic models, stored by the
handlers as JSON; functions that change state take ``now`` and return the new state.
"""

from agentstream.agents.builtin_tools import builtin_registry
from agentstream.agents.cache import cache_key, cached_reply, decode_reply, encode_reply
from agentstream.agents.circuit import CircuitBreaker, CircuitOpen, CircuitState
from agentstream.agents.loop import (
    Awaiting,
    CallTools,
    Decision,
    Fail,
    Finish,
    InvalidTransition,
    RunState,
    RunStatus,
    apply_reply,
    apply_tool_result,
    expire,
    history_after,
    response_data,
    start_run,
)
from agentstream.agents.memory import (
    MEMORY_TOOLS,
    Fact,
    MemoryBook,
    RecallArgs,
    RememberArgs,
    apply_memory_call,
    memory_scope,
    memory_tool_specs,
)
from agentstream.agents.messages import (
    Message,
    ModelReply,
    ToolInvocation,
    ToolOutcome,
    count_tokens,
    trim_history,
)
from agentstream.agents.model import (
    DEFAULT_PRICES,
    Model,
    ModelPrice,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    ToolSpec,
    price_for,
    priced,
)
from agentstream.agents.offline import OfflineModel
from agentstream.agents.openai_model import OpenAIModel
from agentstream.agents.routing import ModelRouter, UnknownModel
from agentstream.agents.summary import ConversationSummary
from agentstream.agents.tools import InvalidArguments, ToolRegistry, ToolTimeout, UnknownTool

__all__ = [
    "DEFAULT_PRICES",
    "MEMORY_TOOLS",
    "Awaiting",
    "CallTools",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "ConversationSummary",
    "Decision",
    "Fact",
    "Fail",
    "Finish",
    "InvalidArguments",
    "InvalidTransition",
    "MemoryBook",
    "Message",
    "Model",
    "ModelPrice",
    "ModelRejected",
    "ModelReply",
    "ModelRouter",
    "ModelTimeout",
    "ModelUnavailable",
    "OfflineModel",
    "OpenAIModel",
    "RecallArgs",
    "RememberArgs",
    "RunState",
    "RunStatus",
    "ToolInvocation",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
    "ToolTimeout",
    "UnknownModel",
    "UnknownTool",
    "apply_memory_call",
    "apply_reply",
    "apply_tool_result",
    "builtin_registry",
    "cache_key",
    "cached_reply",
    "count_tokens",
    "decode_reply",
    "encode_reply",
    "expire",
    "history_after",
    "memory_scope",
    "memory_tool_specs",
    "price_for",
    "priced",
    "response_data",
    "start_run",
    "trim_history",
]
