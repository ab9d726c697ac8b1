"""What the agent worker emits, and to whom: the ``tool_call`` / ``memory_call`` of a step
and the one terminal ``agent_response`` of a request.

Their ids are derived from the request id (and the step and call index), so a rerun of the
same step emits the same events, with the same ids. A request whose record did not decode
is answered from the correlation ids in its raw bytes, when it has them
(:func:`ids_from_raw`). The answer itself is the loop's (:func:`agents.response_data`).
"""

from __future__ import annotations

import json
from typing import Any

from agentstream.agents import MEMORY_TOOLS, RunState, response_data
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    Envelope,
    MemoryCall,
    ToolCall,
    ToolCallData,
    derive_id,
)

__all__ = ["SOURCE", "call_for", "ids_from_raw", "response_event", "response_for"]

SOURCE = "agent-worker"


def ids_from_raw(raw: bytes | None) -> dict[str, str] | None:
    """Correlation ids from a record that did not decode, if it has them at all."""
    try:
        data = json.loads(raw or b"")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    ids = {k: data.get(k) for k in ("request_id", "conversation_id")}
    if not all(isinstance(v, str) and v for v in ids.values()):
        return None
    tenant = data.get("tenant")
    return {
        "request_id": str(ids["request_id"]),
        "conversation_id": str(ids["conversation_id"]),
        "tenant": tenant if isinstance(tenant, str) and tenant else "default",
    }


def call_for(state: RunState, invocation: Any, index: int) -> Envelope[Any]:
    cls: type[ToolCall] | type[MemoryCall] = (
        MemoryCall if invocation.name in MEMORY_TOOLS else ToolCall
    )
    data = ToolCallData(
        call_id=invocation.id,
        step=state.step,
        tool=invocation.name,
        arguments=invocation.arguments,
        user=state.user,
    )
    return cls(
        id=derive_id(state.request_id, f"call:{state.step}", index),
        source=SOURCE,
        request_id=state.request_id,
        conversation_id=state.conversation_id,
        causation_id=state.request_id,
        tenant=state.tenant,
        traceparent=state.traceparent,
        data=data,
    )


def response_for(state: RunState) -> AgentResponse:
    """The one terminal ``agent_response`` of a finished run, as the loop says it ended."""
    return response_event(state, response_data(state))


def response_event(origin: RunState | Envelope[Any], data: AgentResponseData) -> AgentResponse:
    """An ``agent_response`` answering ``origin``'s request: its id depends on the request id
    alone, so a request has one response whichever step or replay emits it."""
    return AgentResponse(
        id=derive_id(origin.request_id, "response"),
        source=SOURCE,
        request_id=origin.request_id,
        conversation_id=origin.conversation_id,
        causation_id=origin.request_id,
        tenant=origin.tenant,
        traceparent=origin.traceparent,
        data=data,
    )
