"""The agent domain: model clients, tools, memory and the tool-calling loop. Pure of Kafka.

Handlers call into this package; it imports :mod:`schemas` and third-party libraries only
(an import-linter contract keeps it so). State objects are pydantic models, stored by the
handlers as JSON; functions that change state take ``now`` and return the new state.

Layout: :mod:`.loop` (the run's state machine; every transition, terminal ones included)
over :mod:`.run` and :mod:`.messages` (its data); :mod:`.models` (the model protocol, the
OpenAI-compatible client, routing, the reply cache); :mod:`.tools` (the registry and the
built-in tools); :mod:`.memory` (long-term memory and summaries); :mod:`.offline` (the
deterministic demo model, not part of the API). The model clients load on first use, so
``from agentstream.agents import ToolRegistry`` does not import ``openai``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.agents.app import (
    DEFAULT_AGENT,
    Agent,
    AgentTool,
    App,
    Guardrail,
    GuardrailVerdict,
    RunContext,
    default_app,
    handoff_tool_name,
    load_app,
    run_guardrails,
)
from agentstream.agents.loop import (
    AskAgain,
    Awaiting,
    CallTools,
    Decision,
    Fail,
    Finish,
    HandOff,
    InvalidTransition,
    RunState,
    RunStatus,
    apply_reply,
    apply_tool_result,
    compact,
    expire,
    fail,
    history_after,
    refuse,
    reject_answer,
    response_data,
    start_run,
    take_over,
)
from agentstream.agents.memory import (
    MEMORY_TOOLS,
    ConversationSummary,
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
from agentstream.agents.models import (
    DEFAULT_PRICES,
    Model,
    ModelPrice,
    ModelRejected,
    ModelRouter,
    ModelTimeout,
    ModelUnavailable,
    ToolSpec,
    UnknownModel,
    cache_key,
    cached_reply,
    decode_reply,
    encode_reply,
    price_for,
    priced,
)
from agentstream.agents.tools import (
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    InvalidArguments,
    ToolRegistry,
    ToolTimeout,
    UnknownTool,
    builtin_registry,
)

if TYPE_CHECKING:
    from agentstream.agents.models.openai_model import OpenAIModel
    from agentstream.agents.offline import OfflineModel

__all__ = [
    "DEFAULT_AGENT",
    "DEFAULT_PRICES",
    "MEMORY_TOOLS",
    "Agent",
    "AgentTool",
    "App",
    "AskAgain",
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
    "Guardrail",
    "GuardrailVerdict",
    "HandOff",
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
    "RunContext",
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
    "compact",
    "count_tokens",
    "decode_reply",
    "default_app",
    "encode_reply",
    "expire",
    "fail",
    "handoff_tool_name",
    "history_after",
    "load_app",
    "memory_scope",
    "memory_tool_specs",
    "price_for",
    "priced",
    "refuse",
    "reject_answer",
    "response_data",
    "run_guardrails",
    "start_run",
    "take_over",
    "trim_history",
]


def __getattr__(name: str) -> Any:
    # The model clients load on first use: importing the tools or the loop must not import
    # ``openai`` (a tool worker never calls a model) nor the offline model's heuristics.
    if name == "OpenAIModel":
        from agentstream.agents.models.openai_model import OpenAIModel

        return OpenAIModel
    if name == "OfflineModel":
        from agentstream.agents.offline import OfflineModel

        return OfflineModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
