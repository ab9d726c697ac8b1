"""The HTTP API's request and response bodies (the OpenAPI document is generated from them).

Every error answers with :class:`ErrorBody`: a stable machine code (``error``), a sentence
for people (``message``) and, for 422, the offending fields (``detail``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from agentstream.ingress.records import EntryKind, RequestRecord, RequestStatus
from agentstream.schemas import AGENT_NAME_PATTERN, AgentResponseData
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "ID_PATTERN",
    "AcceptedResponse",
    "ConversationView",
    "CreateRequest",
    "ErrorBody",
    "FieldError",
    "Health",
    "Readiness",
    "RefusedBody",
    "RequestView",
    "StreamEvent",
    "Turn",
]

#: Ids a client may choose (conversation ids): they become Kafka keys and store keys.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"

_MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]
_MetaValue = Annotated[str, StringConstraints(max_length=1000)]


class CreateRequest(BaseModel):
    """``POST /v1/requests``: what to ask, in which conversation."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "What is 12 * 7?"},
                {
                    "text": "And what is that plus 1?",
                    "conversation_id": "c-42",
                    "user": "alice",
                    "max_steps": 4,
                    "metadata": {"channel": "web"},
                },
            ]
        },
    )

    text: str = Field(min_length=1, max_length=200_000, examples=["What is 12 * 7?"])
    conversation_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Continue this conversation; absent: a new conversation is started.",
        examples=["c-42"],
    )
    user: str | None = Field(
        default=None, max_length=200, description="Whose long-term memory the agent uses."
    )
    model: str | None = Field(
        default=None, max_length=200, description="A model name or route ('small', 'large')."
    )
    max_steps: int | None = Field(default=None, ge=1, le=64)
    metadata: dict[_MetaKey, _MetaValue] = Field(default_factory=dict, max_length=32)
    agent: str | None = Field(
        default=None,
        pattern=AGENT_NAME_PATTERN,
        description="The declared agent to answer; absent: the agent that answered the "
        "conversation's last turn, else the app's default. An undeclared agent is a 422.",
    )


class AcceptedResponse(BaseModel):
    """``202``: the request is on the broker (acknowledged by every in-sync replica)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "5b7e0c3e-9c1b-4d7e-8f4a-0d6f1f0a2b11",
                    "conversation_id": "c-42",
                    "status": "accepted",
                }
            ]
        }
    )

    request_id: str
    conversation_id: str
    status: RequestStatus


class RequestView(BaseModel):
    """A request's status and, once it ended, its response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "5b7e0c3e-9c1b-4d7e-8f4a-0d6f1f0a2b11",
                    "conversation_id": "c-42",
                    "status": "completed",
                    "text": "What is 12 * 7?",
                    "created_at": "2025-01-01T12:00:00Z",
                    "updated_at": "2025-01-01T12:00:02Z",
                    "response": {"status": "completed", "text": "84", "steps": 2},
                }
            ]
        }
    )

    request_id: str
    conversation_id: str
    status: RequestStatus
    text: str | None = None
    created_at: datetime
    updated_at: datetime
    response: AgentResponseData | None = Field(
        default=None, description="The terminal answer; present once status is terminal."
    )

    @classmethod
    def of(cls, record: RequestRecord) -> RequestView:
        return cls(
            request_id=record.request_id,
            conversation_id=record.conversation_id,
            status=record.status,
            text=record.text,
            created_at=record.created_at,
            updated_at=record.updated_at,
            response=record.response,
        )


class Turn(BaseModel):
    request_id: str
    status: RequestStatus
    text: str | None = Field(default=None, description="What the user asked.")
    answer: str | None = Field(default=None, description="The agent's final text, if any.")
    created_at: datetime

    @classmethod
    def of(cls, record: RequestRecord) -> Turn:
        return cls(
            request_id=record.request_id,
            status=record.status,
            text=record.text,
            answer=record.response.text if record.response is not None else None,
            created_at=record.created_at,
        )


class ConversationView(BaseModel):
    conversation_id: str
    turns: list[Turn] = Field(description="Oldest first.")


class StreamEvent(BaseModel):
    """The ``data`` of one Server-Sent Event; the SSE ``id`` is ``index``."""

    index: int = Field(ge=0, description="Position in the request's event log.")
    event_id: str
    kind: EntryKind = Field(
        description="`tool_call`, `memory_call`, `tool_result`: the event's data; `handoff`: "
        "an agent handed the request to another (`from_agent`, `to_agent`, `reason`); "
        "`subrun`: an agent called another as a tool (`caller`, `callee`, `call_id`, `tool`, "
        "`step`, `run_id`, `input`), its answer following as the `tool_result` of `call_id`; "
        "`response`: the terminal answer (the last event); `refused`: a request answered 503."
    )
    time: datetime
    data: dict[str, Any]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: ('body', 'text'), ('query', 'wait')...")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": "not_found", "message": "no such request"}],
        }
    )

    error: str = Field(description="Stable machine-readable code, e.g. 'rate_limited'.")
    message: str
    detail: list[FieldError] | None = Field(default=None, description="422: the bad fields.")


class RefusedBody(ErrorBody):
    """A 503 of ``POST /v1/requests``. When the request was published but not acknowledged
    in time, it is *refused*: it never runs, even if its record reaches the topic later
    (ADR 6), and the body says which request that was."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "unavailable",
                    "message": "the broker did not acknowledge the request in time; it was "
                    "refused and will never run: retry",
                    "detail": None,
                    "request_id": "0b8f3c2e-1d5e-4a8e-9b7c-3f1f3c2e1d5e",
                    "retry_safe": True,
                }
            ],
        }
    )

    request_id: str | None = Field(
        default=None,
        description="The refused request: `GET /v1/requests/{id}` says `refused` (or 404 if "
        "its record could not be written). Absent when nothing was published.",
    )
    retry_safe: bool | None = Field(
        default=None,
        description="True: the refused request never runs, so a retry (with the same "
        "Idempotency-Key and body, or without a key) makes exactly one request. False: the "
        "deployment cannot guarantee it (the request topic is not LogAppendTime).",
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="'ok' or what is wrong, per check (broker, topics, store)."
    )
