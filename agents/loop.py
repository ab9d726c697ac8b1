"""The tool-calling loop as a pure state machine that the agent handler drives.

The handler owns every side effect (model calls, events, the state store); this module only
says what comes next, and owns every transition of a run, the terminal ones included. One
run goes::

    state = start_run(request, history, ...)            # running, awaiting the model
    state, ended = expire(state, now)                    # before each model call
    state, decision = apply_reply(state, reply, now)     # after each model call
      CallTools -> publish one tool/memory call per invocation (they run in parallel)
      state, ready = apply_tool_result(state, ...)       # per result; when ready: call the model
      Finish / Fail -> publish the terminal response (response_data), keep history_after,
                       store compact(state)

and ends early with :func:`expire` (the deadline sweeper), :func:`fail` (an event of the run
was dead-lettered) or, for a request that never ran, :func:`refuse`. A handler never sets a
status itself: it asks this module, and builds the answer from :func:`response_data`.

Every function returns a new :class:`RunState` and never reads the clock (``now`` is passed
in), so a handler that crashed can reload the state and continue, and a redelivered result
is harmless: :func:`apply_tool_result` is idempotent.

Limits: ``max_steps`` bounds the model replies of a run. A reply at the last step that still
asks for tools ends the run as ``failed`` with a reason naming the limit, rather than an
answer the model never gave. A reply or result arriving after the deadline ends it as
``timed_out``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from agentstream.agents.messages import (
    Message,
    ModelReply,
    ToolInvocation,
    ToolOutcome,
    trim_history,
)
from agentstream.agents.run import (
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
)
from agentstream.schemas import AgentResponseData, SubRunParent, Usage, UserRequest, derive_id
from pydantic import JsonValue

__all__ = [
    "AskAgain",
    "Awaiting",
    "CallTools",
    "Decision",
    "Fail",
    "Finish",
    "HandOff",
    "InvalidTransition",
    "RunState",
    "RunStatus",
    "apply_reply",
    "apply_tool_result",
    "compact",
    "expire",
    "fail",
    "history_after",
    "refuse",
    "reject_answer",
    "response_data",
    "start_run",
    "take_over",
]

#: Validates a final answer against an agent's output type: its JSON, or ValueError.
OutputCheck = Callable[[str], JsonValue]


def start_run(
    request: UserRequest,
    history: list[Message],
    *,
    system_prompt: str | None,
    max_steps: int = 8,
    default_deadline_s: float | None = 120.0,
    history_budget_tokens: int = 2000,
    partition: int | None = None,
    agent: str | None = None,
    run_id: str | None = None,
    parent: SubRunParent | None = None,
    chain: list[str] | None = None,
    deadline_at_most: datetime | None = None,
) -> RunState:
    """The state of a new run: system prompt, trimmed history, then the user's message.

    The request's own ``max_steps`` and ``deadline`` win over the defaults; the default
    deadline counts from the request's time, so the same request always gets the same one.
    A sub-run (``run_id``, ``parent``: an agent called as a tool) ends by
    ``deadline_at_most``, its caller's deadline, at the latest.
    """
    kept = trim_history([m for m in history if m.role != "system"], history_budget_tokens)
    messages = [Message.system(system_prompt)] if system_prompt else []
    messages += [*kept, Message.user(request.data.text)]
    deadline = request.data.deadline
    if deadline is None and default_deadline_s is not None:
        deadline = request.time + timedelta(seconds=default_deadline_s)
    if deadline_at_most is not None and (deadline is None or deadline > deadline_at_most):
        deadline = deadline_at_most
    return RunState(
        request_id=request.request_id,
        conversation_id=request.conversation_id,
        tenant=request.tenant,
        user=request.data.user,
        traceparent=request.traceparent,
        requested_model=request.data.model,
        messages=messages,
        history_len=len(kept),
        max_steps=request.data.max_steps or max_steps,
        deadline=deadline,
        partition=partition,
        agent=agent,
        run_id=run_id,
        parent=parent,
        chain=list(chain or ()),
        requested_at=request.time,
    )


def take_over(
    state: RunState,
    *,
    system_prompt: str | None,
    history: list[Message],
    max_steps: int,
    history_budget_tokens: int = 2000,
    note: str | None = None,
) -> RunState:
    """The run of a request handed to ``state.agent``, as that agent starts it: its own
    system prompt, the conversation's history, the user's message and a note of the handoff,
    and ``max_steps`` more model replies. Usage, steps so far and the deadline carry over."""
    if state.terminal or state.awaiting != "handoff":
        raise InvalidTransition(f"run {state.id} is {state.status}, not being handed off")
    kept = trim_history([m for m in history if m.role != "system"], history_budget_tokens)
    messages = [Message.system(system_prompt)] if system_prompt else []
    messages += [*kept, state.user_message]
    if note:
        messages.append(Message.system(note))
    return state.model_copy(
        update={
            "messages": messages,
            "history_len": len(kept),
            "max_steps": state.step + max_steps,
            "awaiting": "model",
            "pending": {},
            "results": {},
        }
    )


def _end(state: RunState, decision: Fail, **update: object) -> tuple[RunState, Fail]:
    ended = state.model_copy(
        update={
            **update,
            "status": decision.status,
            "awaiting": None,
            "error": decision.reason,
            "pending": {},
        }
    )
    return ended, decision


def expire(state: RunState, now: datetime) -> tuple[RunState, Fail | None]:
    """End a running state whose deadline has passed; unchanged state and None otherwise."""
    if state.terminal or state.deadline is None or now < state.deadline:
        return state, None
    return _end(
        state,
        Fail(
            status="timed_out",
            reason=f"deadline {state.deadline.isoformat()} passed after {state.step} steps",
        ),
    )


def fail(state: RunState, reason: str) -> tuple[RunState, Fail | None]:
    """End a running state as ``failed`` for a reason outside the loop (one of its events
    failed for good); a finished state is returned unchanged, with None."""
    if state.terminal:
        return state, None
    return _end(state, Fail(status="failed", reason=reason))


def refuse(
    *,
    request_id: str,
    conversation_id: str,
    tenant: str,
    reason: str,
    rejected: bool,
    traceparent: str | None = None,
    user: str | None = None,
    agent: str | None = None,
) -> RunState:
    """The terminal state of a request that never ran: ``rejected`` when the request itself
    is at fault (undecodable, invalid, an unknown model), ``failed`` otherwise.

    Stored under the request id, it makes a redelivered or replayed request a duplicate, so
    the request keeps its one terminal answer."""
    return RunState(
        request_id=request_id,
        conversation_id=conversation_id,
        tenant=tenant,
        user=user,
        traceparent=traceparent,
        messages=[],
        max_steps=0,
        status="rejected" if rejected else "failed",
        awaiting=None,
        error=reason,
        agent=agent,
    )


def compact(state: RunState) -> RunState:
    """What is kept of a finished run: enough to answer "was it started, is it over" (for
    duplicates, late tool results, replays of a dead letter) and to answer it again.

    The messages are dropped: they live on in the conversation's history
    (:func:`history_after`, taken before) and in the answer."""
    if not state.terminal:
        raise InvalidTransition(f"run {state.request_id} is {state.status}, not finished")
    return state.model_copy(
        update={"messages": [], "history_len": 0, "pending": {}, "results": {}, "awaiting": None}
    )


_MAX_CALL_ID = 200  # ToolCallData.call_id's limit


def _with_unique_ids(
    state: RunState, step: int, calls: list[ToolInvocation]
) -> list[ToolInvocation]:
    """Model-given ids, unless empty, too long or reused in this run: then a derived one."""
    seen = {c.id for m in state.messages for c in m.tool_calls}
    unique = []
    for index, call in enumerate(calls):
        if not call.id or len(call.id) > _MAX_CALL_ID or call.id in seen:
            call = call.model_copy(update={"id": derive_id(state.id, f"call{step}", index)})
        seen.add(call.id)
        unique.append(call)
    return unique


def reject_answer(state: RunState, reason: str) -> RunState:
    """A run the loop just completed whose answer is not to be given (an output guardrail
    rejected it): ``failed`` with ``reason``."""
    if state.status != "completed":
        raise InvalidTransition(f"run {state.id} is {state.status}, not completed")
    return state.model_copy(update={"status": "failed", "error": reason, "output": None})


def apply_reply(
    state: RunState,
    reply: ModelReply,
    now: datetime,
    *,
    handoffs: Mapping[str, str] | None = None,
    check_output: OutputCheck | None = None,
    output_retries: int = 0,
    max_handoffs: int = 8,
) -> tuple[RunState, Decision]:
    """Take the model's reply for the current step and decide what happens next.

    ``handoffs`` maps the handoff tools the model was offered to their agents: a reply
    calling one hands the run over (the first such call; others of the reply are dropped).
    ``check_output`` validates a final answer (an agent's output type): an answer that does
    not validate is sent back with the reason up to ``output_retries`` times, then the run
    fails with it. A request handed on ``max_handoffs`` times already fails rather than
    being handed on again."""
    if state.status != "running" or state.awaiting != "model":
        raise InvalidTransition(
            f"run {state.request_id} is {state.status} awaiting {state.awaiting}, not a reply"
        )
    step = state.step + 1
    base = {"step": step, "usage": state.usage + reply.usage, "model": reply.model}
    if state.deadline is not None and now >= state.deadline:  # (copied only when it ends)
        expired, fail = expire(state.model_copy(update=base), now)
        if fail is not None:
            return expired, fail
    handoff = next((c for c in reply.tool_calls if handoffs and c.name in handoffs), None)
    if handoff is not None and handoffs is not None:
        target = handoffs[handoff.name]
        reason = handoff.arguments.get("reason")
        current = state.agent or ""
        if len(state.handoffs) >= max_handoffs:
            path = " -> ".join([*state.handoffs, current, target])
            limit = f"handoff limit of {max_handoffs} reached ({path})"
            return _end(state, Fail(status="failed", reason=limit), **base)
        handed = state.model_copy(
            update={
                **base,
                "agent": target,
                "awaiting": "handoff",
                "pending": {},
                "results": {},
                "handoffs": [*state.handoffs, current],
            }
        )
        return handed, HandOff(target=target, reason=reason if isinstance(reason, str) else None)
    if reply.tool_calls:
        if step >= state.max_steps:
            names = ", ".join(c.name for c in reply.tool_calls)
            reason = (
                f"step limit of {state.max_steps} reached: the model still asked for tools "
                f"({names}) instead of answering"
            )
            return _end(state, Fail(status="failed", reason=reason), **base)
        calls = _with_unique_ids(state, step, reply.tool_calls)
        decided = state.model_copy(
            update={
                **base,
                "messages": [*state.messages, Message.assistant(reply.text, calls)],
                "pending": {c.id: c for c in calls},
                "results": {},
                "tool_calls_made": [*state.tool_calls_made, *(c.name for c in calls)],
                "awaiting": "tools",
            }
        )
        return decided, CallTools(step=step, invocations=calls)
    if reply.text and reply.text.strip():
        output: JsonValue = None
        if check_output is not None:
            try:
                output = check_output(reply.text)
            except ValueError as exc:
                return _invalid_output(state, reply.text, str(exc), output_retries, base)
        finished = state.model_copy(
            update={
                **base,
                "messages": [*state.messages, Message.assistant(reply.text)],
                "status": "completed",
                "awaiting": None,
                "answer": reply.text,
                "output": output,
            }
        )
        return finished, Finish(text=reply.text, output=output)
    return _end(state, Fail(status="failed", reason="the model returned an empty reply"), **base)


def _invalid_output(
    state: RunState, text: str, problem: str, retries: int, base: dict[str, object]
) -> tuple[RunState, Decision]:
    step = int(str(base["step"]))
    if state.output_tries >= retries or step >= state.max_steps:
        tries = state.output_tries + 1
        reason = f"the answer did not match the output type after {tries} tries: {problem}"
        return _end(state, Fail(status="failed", reason=reason), **base)
    again = state.model_copy(
        update={
            **base,
            "messages": [
                *state.messages,
                Message.assistant(text),
                Message.user(
                    f"Your answer does not match the required output type: {problem}. "
                    "Answer again with only the JSON object."
                ),
            ],
            "output_tries": state.output_tries + 1,
        }
    )
    return again, AskAgain(reason=problem)


def apply_tool_result(
    state: RunState,
    call_id: str,
    ok: bool,
    output: JsonValue = None,
    error: str | None = None,
    *,
    error_class: str | None = None,
    usage: Usage | None = None,
) -> tuple[RunState, bool]:
    """Record one result of the current step; ``ready`` when the model should be called next.

    ``ready`` depends only on the state: true while every result of the current step is in
    and the model has not replied yet, so a duplicate of the last result says "ready" again
    (the agent handler calls the model in the same handling that made the state ready, so a
    state awaiting the model is never stored between events). A result for a call outside
    the current step, or for a finished run, changes nothing.
    """
    if state.terminal or call_id not in state.pending:
        return state, False
    if call_id in state.results:
        return state, state.awaiting == "model"
    outcome = ToolOutcome(ok=ok, output=output, error=error, error_class=error_class)
    results = {**state.results, call_id: outcome}
    total = state.usage + usage if usage is not None else state.usage
    if len(results) < len(state.pending):
        return state.model_copy(update={"results": results, "usage": total}), False
    tool_messages = [  # in the order the model asked, whatever order results came in
        Message.tool(call.id, call.name, results[call.id].to_content())
        for call in state.pending.values()
    ]
    ready = state.model_copy(
        update={
            "results": results,
            "messages": [*state.messages, *tool_messages],
            "awaiting": "model",
            "usage": total,
        }
    )
    return ready, True


def history_after(state: RunState, answer_text: str | None = None) -> list[Message]:
    """The conversation's short-term history after this run: replace the stored one with it.

    It is the (already trimmed) history the run started from, the user's message and the
    final answer; the tool exchange is left out, since its outcome is in the answer. A run
    without an answer keeps the user's message only.
    """
    start = state.history_start
    kept = state.messages[start : start + state.history_len + 1]
    answer = answer_text if answer_text is not None else state.answer
    return [*kept, Message.assistant(answer)] if answer else kept


def response_data(state: RunState) -> AgentResponseData:
    """The terminal ``agent_response`` payload of a finished run."""
    if not state.terminal:
        raise InvalidTransition(f"run {state.request_id} is {state.status}, not finished")
    status = state.status
    assert status != "running"
    return AgentResponseData(
        status=status,
        text=state.answer,
        error=state.error,
        steps=state.step,
        model=state.model,
        usage=state.usage,
        tool_calls=list(state.tool_calls_made),
        agent=state.agent,
        output=state.output,
        handoffs=list(state.handoffs),
    )
