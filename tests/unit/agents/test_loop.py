"""The tool-calling loop as a pure state machine, and the message and history helpers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from agentstream.agents.loop import (
    CallTools,
    Fail,
    Finish,
    InvalidTransition,
    RunState,
    apply_reply,
    apply_tool_result,
    expire,
    history_after,
    response_data,
    start_run,
)
from agentstream.agents.messages import (
    Message,
    ModelReply,
    ToolInvocation,
    ToolOutcome,
    count_tokens,
    message_tokens,
    trim_history,
)

from tests.support.runs import T0, answer, begin, calls, request


def test_start_run_builds_the_prompt() -> None:
    history = [Message.system("old system"), Message.user("hi"), Message.assistant("hello")]
    state = start_run(
        request(user="ada", model="large", metadata={"k": "v"}),
        history,
        system_prompt="Be brief.",
        max_steps=4,
        default_deadline_s=60,
        history_budget_tokens=1000,
    )
    assert [m.role for m in state.messages] == ["system", "user", "assistant", "user"]
    assert state.messages[0].content == "Be brief."
    assert state.user_message.content == "What is 2+2 and the time?"
    assert state.history_len == 2
    assert (state.tenant, state.user, state.requested_model) == ("acme", "ada", "large")
    assert state.traceparent == "00-abc-def-01"
    assert state.deadline == T0 + timedelta(seconds=60)
    assert (state.status, state.awaiting, state.step, state.max_steps) == ("running", "model", 0, 4)
    # Built without validating again: the same state as a validated one, field for field.
    validated = RunState.model_validate(state.model_dump())
    assert state == validated
    assert state.model_dump_json() == validated.model_dump_json()
    assert RunState.model_validate_json(state.model_dump_json()) == state


def test_request_limits_win() -> None:
    deadline = T0 + timedelta(seconds=5)
    state = start_run(
        request(max_steps=2, deadline=deadline),
        [],
        system_prompt=None,
        max_steps=8,
        default_deadline_s=60,
        history_budget_tokens=100,
    )
    assert state.max_steps == 2
    assert state.deadline == deadline
    assert state.messages == [Message.user("What is 2+2 and the time?")]
    assert begin(default_deadline_s=None).deadline is None


def test_tool_step_then_answer() -> None:
    state = begin()
    state, decision = apply_reply(state, calls("calculator", "current_time"), T0)
    assert isinstance(decision, CallTools)
    assert decision.step == 1
    assert [c.name for c in decision.invocations] == ["calculator", "current_time"]
    assert (state.awaiting, state.step) == ("tools", 1)
    assert state.tool_calls_made == ["calculator", "current_time"]

    # results arrive out of order; the tool messages follow the order of the calls
    state, ready = apply_tool_result(state, "c1", True, {"time": "12:00"})
    assert not ready
    state, ready = apply_tool_result(state, "c0", True, {"result": 4})
    assert ready
    assert state.awaiting == "model"
    tool_messages = [m for m in state.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_messages] == ["c0", "c1"]
    assert ToolOutcome.from_content(tool_messages[0].content).output == {"result": 4}

    state, decision = apply_reply(state, answer("4, and it is noon."), T0)
    assert decision == Finish(text="4, and it is noon.")
    assert (state.status, state.answer, state.step) == ("completed", "4, and it is noon.", 2)
    assert state.usage.model_calls == 2
    assert state.usage.total_tokens == 37
    data = response_data(state)
    assert data.status == "completed"
    assert data.text == "4, and it is noon."
    assert data.steps == 2
    assert data.model == "m"
    assert data.tool_calls == ["calculator", "current_time"]


def test_tool_results_are_idempotent() -> None:
    state, _ = apply_reply(begin(), calls("a", "b"), T0)
    state, ready = apply_tool_result(state, "c0", True, 1)
    again, ready_again = apply_tool_result(state, "c0", False, None, "late duplicate")
    assert again == state
    assert not ready
    assert not ready_again
    assert state.results["c0"].ok

    state, ready = apply_tool_result(state, "c1", True, 2)
    assert ready
    # a duplicate of the last result says "ready" again and changes nothing
    assert apply_tool_result(state, "c1", True, 2) == (state, True)
    # a result for a call that is not part of this step is ignored
    assert apply_tool_result(state, "zzz", True, 3) == (state, False)
    state, _ = apply_reply(state, answer("done"), T0)
    assert apply_tool_result(state, "c1", True, 2) == (state, False)


def test_errors_reach_the_model() -> None:
    state, _ = apply_reply(begin(), calls("calculator"), T0)
    state, ready = apply_tool_result(
        state, "c0", False, None, "division by zero", error_class="CalculationError"
    )
    assert ready
    outcome = ToolOutcome.from_content(state.messages[-1].content)
    assert outcome == ToolOutcome(
        ok=False, error="division by zero", error_class="CalculationError"
    )


def test_step_limit_fails_the_run() -> None:
    state = begin(max_steps=2)
    state, _ = apply_reply(state, calls("a"), T0)
    state, _ = apply_tool_result(state, "c0", True, 1)
    state, decision = apply_reply(state, calls("a", ids=("c9",)), T0)
    assert isinstance(decision, Fail)
    assert decision.status == "failed"
    assert "step limit of 2 reached" in decision.reason
    assert (state.status, state.error, state.step) == ("failed", decision.reason, 2)
    assert state.pending == {}
    assert response_data(state).error == decision.reason


def test_deadline_times_the_run_out() -> None:
    state = begin(default_deadline_s=10)
    late = T0 + timedelta(seconds=11)
    ended, decision = apply_reply(state, answer("too late"), late)
    assert isinstance(decision, Fail)
    assert decision.status == "timed_out"
    assert ended.status == "timed_out"
    assert ended.usage.model_calls == 1  # the late call still cost something

    waiting, _ = apply_reply(state, calls("a"), T0)
    assert expire(waiting, T0) == (waiting, None)
    expired, fail = expire(waiting, late)
    assert fail is not None
    assert fail.status == "timed_out"
    assert expired.status == "timed_out"
    assert expire(expired, late) == (expired, None)


def test_empty_reply_fails() -> None:
    state, decision = apply_reply(begin(), ModelReply(text="  ", model="m"), T0)
    assert decision == Fail(status="failed", reason="the model returned an empty reply")
    assert state.status == "failed"


def test_wrong_transitions_are_refused() -> None:
    state, _ = apply_reply(begin(), calls("a"), T0)
    with pytest.raises(InvalidTransition):
        apply_reply(state, answer("early"), T0)
    with pytest.raises(InvalidTransition):
        response_data(state)


def test_missing_or_reused_call_ids_are_replaced() -> None:
    state, decision = apply_reply(begin(), calls("a", "b", ids=("", "same")), T0)
    assert isinstance(decision, CallTools)
    first = [c.id for c in decision.invocations]
    assert first[0]
    assert first[1] == "same"
    for call_id in first:
        state, _ = apply_tool_result(state, call_id, True, 1)
    state, decision = apply_reply(state, calls("c", ids=("same",)), T0)
    assert isinstance(decision, CallTools)
    assert decision.invocations[0].id not in first
    assert state.messages[-1].tool_calls == decision.invocations
    # the replacement is deterministic
    _, again = apply_reply(begin(), calls("a", "b", ids=("", "same")), T0)
    assert isinstance(again, CallTools)
    assert [c.id for c in again.invocations] == first


def test_run_state_round_trips_as_json() -> None:
    state, _ = apply_reply(begin(), calls("a", "b"), T0)
    state, _ = apply_tool_result(state, "c0", True, {"nested": [1, "x", None]})
    assert RunState.model_validate_json(state.model_dump_json()) == state


def test_history_after_keeps_the_exchange_without_tools() -> None:
    history = [Message.user("hi"), Message.assistant("hello")]
    state = start_run(
        request(),
        history,
        system_prompt="S",
        max_steps=4,
        default_deadline_s=None,
        history_budget_tokens=1000,
    )
    state, _ = apply_reply(state, calls("a"), T0)
    state, _ = apply_tool_result(state, "c0", True, 1)
    state, _ = apply_reply(state, answer("It is 4."), T0)
    assert history_after(state) == [
        Message.user("hi"),
        Message.assistant("hello"),
        Message.user("What is 2+2 and the time?"),
        Message.assistant("It is 4."),
    ]
    assert history_after(state, "other")[-1] == Message.assistant("other")
    failed, _ = apply_reply(begin(), ModelReply(model="m"), T0)
    assert history_after(failed) == [Message.user("What is 2+2 and the time?")]


def test_count_tokens() -> None:
    assert count_tokens("") == 0
    assert count_tokens(None) == 0
    assert count_tokens("abc") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 400) == 100
    tool_call = Message.assistant(None, [ToolInvocation(id="1", name="calc", arguments={"a": 1})])
    assert message_tokens(tool_call) > message_tokens(Message.assistant(None))


def test_trim_history_keeps_the_newest_turns() -> None:
    turns = []
    for i in range(10):
        turns += [Message.user(f"question {i} " + "x" * 36), Message.assistant(f"answer {i}")]
    cost = message_tokens(turns[-1]) + message_tokens(turns[-2])
    kept = trim_history(turns, cost * 3)
    assert kept == turns[-6:]
    assert trim_history(turns, 0) == []
    assert trim_history(turns, 10**6) == turns


def test_trim_history_never_splits_a_tool_exchange() -> None:
    call = ToolInvocation(id="t1", name="calc", arguments={"e": "1+1"})
    exchange = [
        Message.user("q1"),
        Message.assistant(None, [call, call.model_copy(update={"id": "t2"})]),
        Message.tool("t1", "calc", "2"),
        Message.tool("t2", "calc", "2"),
        Message.assistant("two"),
    ]
    system = Message.system("sys")
    last = message_tokens(exchange[-1])
    block = sum(message_tokens(m) for m in exchange[1:4])
    head = message_tokens(system)
    # room for the answer and part of the tool block: the block is dropped whole
    assert trim_history([system, *exchange], head + last + block - 1) == [system, exchange[-1]]
    assert trim_history([system, *exchange], head + last + block) == [system, *exchange[1:]]
    # orphan tool results (their call was cut earlier) are never kept
    assert trim_history([Message.tool("t0", "calc", "1"), *exchange[4:]], 1000) == exchange[4:]


def test_tool_outcome_content() -> None:
    ok = ToolOutcome(ok=True, output={"error": "a field named error", "result": 1})
    assert ToolOutcome.from_content(ok.to_content()) == ok
    failed = ToolOutcome(ok=False, error="boom")
    assert ToolOutcome.from_content(failed.to_content()) == failed
    assert ToolOutcome.from_content("plain text") == ToolOutcome(ok=True, output="plain text")
