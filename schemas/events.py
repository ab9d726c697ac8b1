"""The v1 event types and their payloads.

One class per event type. The ``type`` string carries the version (``….v1``); a breaking
change is a new class with a new ``.v2`` type, registered beside the old one so that workers
read both during a migration (see docs/adr/0003-envelope-and-evolution.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, JsonValue

from schemas.envelope import Envelope, Payload

__all__ = [
    "EVENT_TYPES",
    "TERMINAL_STATUSES",
    "AgentResponse",
    "AgentResponseData",
    "MemoryCall",
    "ResponseStatus",
    "ToolCall",
    "ToolCallData",
    "ToolResult",
    "ToolResultData",
    "Usage",
    "UserRequest",
    "UserRequestData",
]

_TEXT_MAX = 1_000_000

ResponseStatus = Literal["completed", "failed", "timed_out", "rejected"]
TERMINAL_STATUSES: tuple[ResponseStatus, ...] = ("completed", "failed", "timed_out", "rejected")


class UserRequestData(Payload):
    """What a user asked. Published by the ingress or straight to Kafka by upstream systems."""

    text: str = Field(min_length=1, max_length=_TEXT_MAX, examples=["What is 12 * 7?"])
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Whose long-term memory to use; defaults to the tenant's shared memory.",
    )
    model: str | None = Field(
        default=None,
        max_length=200,
        description="Ask for a model by name or route ('small', 'large'); default: routing rule.",
    )
    max_steps: int | None = Field(default=None, ge=1, le=64)
    deadline: datetime | None = Field(
        default=None, description="After this instant the request ends as timed_out."
    )
    metadata: dict[str, str] = Field(default_factory=dict)


class ToolCallData(Payload):
    """One call of one tool, asked by the model at ``step`` of a request."""

    call_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    tool: str = Field(min_length=1, max_length=200)
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Whom the call acts for (memory scope); set by the agent, never the model.",
    )


class ToolResultData(Payload):
    """The outcome of one tool call. ``ok`` false carries ``error`` and ``error_class``."""

    call_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    tool: str = Field(min_length=1, max_length=200)
    ok: bool
    output: JsonValue = None
    error: str | None = None
    error_class: str | None = None
    duration_ms: float | None = None


class Usage(Payload):
    """Tokens and cost of one request, summed over every model call it made."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cached_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 10),
            model_calls=self.model_calls + other.model_calls,
            cached_calls=self.cached_calls + other.cached_calls,
        )


class AgentResponseData(Payload):
    """The one terminal answer of a request."""

    status: ResponseStatus
    text: str | None = None
    error: str | None = None
    error_class: str | None = None
    steps: int = 0
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    tool_calls: list[str] = Field(
        default_factory=list, description="Names of the tools called, in order."
    )


class UserRequest(Envelope[UserRequestData]):
    TYPE: ClassVar[str] = "agentstream.user_request.v1"
    type: Literal["agentstream.user_request.v1"] = "agentstream.user_request.v1"


class ToolCall(Envelope[ToolCallData]):
    TYPE: ClassVar[str] = "agentstream.tool_call.v1"
    type: Literal["agentstream.tool_call.v1"] = "agentstream.tool_call.v1"


class MemoryCall(Envelope[ToolCallData]):
    """A call of a memory tool (``remember``, ``recall``), served by the memory worker."""

    TYPE: ClassVar[str] = "agentstream.memory_call.v1"
    type: Literal["agentstream.memory_call.v1"] = "agentstream.memory_call.v1"


class ToolResult(Envelope[ToolResultData]):
    TYPE: ClassVar[str] = "agentstream.tool_result.v1"
    type: Literal["agentstream.tool_result.v1"] = "agentstream.tool_result.v1"


class AgentResponse(Envelope[AgentResponseData]):
    TYPE: ClassVar[str] = "agentstream.agent_response.v1"
    type: Literal["agentstream.agent_response.v1"] = "agentstream.agent_response.v1"


#: Every event type this version of agentstream reads, by its ``type`` string.
EVENT_TYPES: dict[str, type[Envelope[Any]]] = {
    cls.TYPE: cls for cls in (UserRequest, ToolCall, MemoryCall, ToolResult, AgentResponse)
}
