"""What the agent worker emits, and to whom: the ``tool_call`` / ``memory_call`` of a step
(answered into the agent's own input topic), the handoff and sub-run tasks for other agents,
a sub-run's answer (a ``tool_result`` for its caller) and the one terminal ``agent_response``
of a request.

Their ids are derived from the request id (and the step and call index), so a rerun of the
same step emits the same events, with the same ids. A request whose record did not decode
is answered from the correlation ids in its raw bytes, when it has them
(:func:`ids_from_raw`). The answer itself is the loop's (:func:`agents.response_data`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from agentstream.agents import MEMORY_TOOLS, RunState, ToolInvocation, response_data
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    AgentTask,
    AgentTaskData,
    Envelope,
    MemoryCall,
    SubRunParent,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    UserRequestData,
    derive_id,
)

__all__ = [
    "SOURCE",
    "Correlated",
    "call_for",
    "handoff_task",
    "ids_from_raw",
    "response_event",
    "response_for",
    "subrun_id",
    "subrun_result",
    "subrun_task",
]

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
        reply_to=state.agent,
        run_id=state.run_id,
    )
    return cls(
        id=derive_id(state.id, f"call:{state.step}", index),
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


class Correlated(Protocol):
    """What an answer is built from: a request's ids (an event, a run, a refusal)."""

    @property
    def request_id(self) -> str: ...
    @property
    def conversation_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


def response_event(
    origin: Correlated,
    data: AgentResponseData,
    source: str = SOURCE,
) -> AgentResponse:
    """An ``agent_response`` answering ``origin``'s request: its id depends on the request id
    alone, so a request has one response whichever step, replay or part emits it."""
    return AgentResponse(
        id=derive_id(origin.request_id, "response"),
        source=source,
        request_id=origin.request_id,
        conversation_id=origin.conversation_id,
        causation_id=origin.request_id,
        tenant=origin.tenant,
        traceparent=origin.traceparent,
        data=data,
    )


def _task(state: RunState, step: str, data: AgentTaskData) -> AgentTask:
    return AgentTask(
        id=derive_id(state.id, step),
        source=SOURCE,
        time=state.requested_at or state.deadline or _EPOCH,
        request_id=state.request_id,
        conversation_id=state.conversation_id,
        causation_id=state.id,
        tenant=state.tenant,
        traceparent=state.traceparent,
        data=data,
    )


def _request_data(state: RunState, text: str) -> UserRequestData:
    return UserRequestData(text=text, user=state.user)


def handoff_task(state: RunState, source: str, reason: str | None) -> AgentTask:
    """The handoff of ``state``'s request (already handed to ``state.agent`` by the loop) from
    ``source``; the run state travels in the store, under the request id."""
    user_text = state.user_message.content or ""
    return _task(
        state,
        f"handoff:{state.step}",
        AgentTaskData(
            agent=state.agent or "",
            kind="handoff",
            request=_request_data(state, user_text),
            requested_at=state.requested_at or _EPOCH,
            from_agent=source,
            reason=reason,
        ),
    )


def subrun_id(state: RunState, call_id: str) -> str:
    """The id of the sub-run a tool call of ``state`` starts: derived from the call, so a
    redelivered step starts no second sub-run."""
    return derive_id(state.id, f"subrun:{call_id}")


def subrun_task(state: RunState, invocation: ToolInvocation, callee: str, text: str) -> AgentTask:
    """The call of agent ``callee`` as a tool by ``state``'s agent, at the current step."""
    return _task(
        state,
        f"subrun:{invocation.id}",
        AgentTaskData(
            agent=callee,
            kind="subrun",
            request=_request_data(state, text),
            requested_at=state.requested_at or _EPOCH,
            from_agent=state.agent,
            run_id=subrun_id(state, invocation.id),
            parent=SubRunParent(
                run_id=state.id,
                agent=state.agent or "",
                call_id=invocation.id,
                step=state.step,
                tool=invocation.name,
            ),
            chain=[*state.chain, state.agent or ""],
            deadline=state.deadline,
        ),
    )


def subrun_result(state: RunState, *, error_class: str | None = None) -> ToolResult:
    """A finished sub-run's answer, as the result of the tool call that started it, for the
    caller's input topic; its usage rolls up into the caller's."""
    parent = state.parent
    assert parent is not None
    ok = state.status == "completed"
    output = state.output if state.output is not None else state.answer
    error = None if ok else f"the {state.agent} agent {state.status}: {state.error}"
    return ToolResult(
        id=derive_id(state.id, "result"),
        source=SOURCE,
        request_id=state.request_id,
        conversation_id=state.conversation_id,
        causation_id=state.id,
        tenant=state.tenant,
        traceparent=state.traceparent,
        data=ToolResultData(
            call_id=parent.call_id,
            step=parent.step,
            tool=parent.tool,
            ok=ok,
            output=output if ok else None,
            error=error,
            error_class=None
            if ok
            else error_class or _SUBRUN_ERROR.get(state.status, "SubRunFailed"),
            reply_to=parent.agent,
            run_id=None if parent.run_id == state.request_id else parent.run_id,
            usage=state.usage,
        ),
    )


_SUBRUN_ERROR = {"timed_out": "SubRunTimedOut", "rejected": "SubRunRejected"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
