"""The agent worker's handlers, called directly on the in-process store with a scripted model:
parallel tool calls out, results back in, one terminal answer per request, and the same
events again when an event is delivered twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from agentstream.agents import (
    ModelRouter,
    RunState,
    ToolOutcome,
    builtin_registry,
    default_app,
)
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.agent.routes import AgentConfig, AgentHandlers, ConversationState
from agentstream.handlers.router import turn_task
from agentstream.handlers.tool import tool_result
from agentstream.schemas import (
    AgentResponse,
    AgentTask,
    Envelope,
    MemoryCall,
    SchemaError,
    ToolCall,
    ToolResult,
    UserRequest,
    UserRequestData,
    derive_id,
)

from tests.support.handling import T0, Handling
from tests.support.scripted_model import FunctionModel, answer, call, scripted, tools

TWO_TOOLS = tools(
    call("calculator", {"expression": "6 * 7"}),
    call("current_time", {"zone": "Asia/Tokyo"}),
)


def user_request(
    rid: str = "req-1", text: str = "What is 6 * 7, and the time in Tokyo?", **data: Any
) -> UserRequest:
    return UserRequest(
        id=f"evt-{rid}",
        source="test",
        time=T0,
        request_id=rid,
        conversation_id="conv-1",
        tenant="acme",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        data=UserRequestData(text=text, **data),
    )


def agent(model: FunctionModel, **config: Any) -> AgentHandlers:
    app = default_app("Be brief.", tools=builtin_registry())
    options: dict[str, Any] = {"cache": False, **config}
    return AgentHandlers(
        app, "assistant", ModelRouter(model), AgentConfig(**options), AgentMetrics()
    )


def turn(request: UserRequest) -> AgentTask:
    """The router's forward of ``request`` to the assistant."""
    return turn_task(request, "assistant")


def result_of(event: Envelope[Any], output: Any = None, *, ok: bool = True) -> ToolResult:
    outcome = ToolOutcome(ok=ok, output=output, error=None if ok else "boom")
    return tool_result(event, outcome, "tool-worker")


def only_response(outputs: list[Envelope[Any]]) -> AgentResponse:
    assert len(outputs) == 1
    (response,) = outputs
    assert isinstance(response, AgentResponse)
    return response


def same(event: Envelope[Any]) -> dict[str, Any]:
    """An event as a redelivery must repeat it: all but its creation time (the runtime's
    outbox replays the recorded bytes; a handler run again builds equal events)."""
    return event.model_dump(exclude={"time"})


@pytest.fixture
def handling() -> Handling:
    return Handling()


async def test_a_request_that_calls_two_tools_emits_two_calls_with_derived_ids(
    handling: Handling,
) -> None:
    model = scripted(TWO_TOOLS, answer("42; it is 21:00 in Tokyo."))
    handlers = agent(model)

    outputs = await handling.handle(handlers.on_event, turn(user_request()))

    assert [type(e) for e in outputs] == [ToolCall, ToolCall]
    assert [e.data.tool for e in outputs] == ["calculator", "current_time"]
    assert [e.id for e in outputs] == [derive_id("req-1", "call:1", i) for i in (0, 1)]
    assert [e.data.call_id for e in outputs] == [derive_id("req-1", "call1", i) for i in (0, 1)]
    assert {e.data.step for e in outputs} == {1}
    assert all(e.request_id == "req-1" and e.causation_id == "req-1" for e in outputs)
    assert len(model.calls) == 1
    assert [m.role for m in model.calls[0].messages] == ["system", "user"]
    state = await handling.load(RunState, "run", "req-1")
    assert state is not None
    assert (state.status, state.awaiting, sorted(state.pending)) == (
        "running",
        "tools",
        sorted(e.data.call_id for e in outputs),
    )


async def test_tool_results_continue_the_run_to_one_answer(handling: Handling) -> None:
    model = scripted(TWO_TOOLS, answer("42; it is 21:00 in Tokyo."))
    handlers = agent(model)
    calc, clock = await handling.handle(handlers.on_event, turn(user_request()))

    # Results come back in any order; the run waits for all of them.
    assert await handling.handle(handlers.on_tool_result, result_of(clock, {"time": "21:00"})) == []
    outputs = await handling.handle(handlers.on_tool_result, result_of(calc, {"result": 42}))

    response = only_response(outputs)
    assert response.id == derive_id("req-1", "response")
    assert (response.data.status, response.data.text, response.data.steps) == (
        "completed",
        "42; it is 21:00 in Tokyo.",
        2,
    )
    assert response.data.tool_calls == ["calculator", "current_time"]
    assert response.data.usage.model_calls == 2
    # The model read the results in the order it asked for them.
    second = model.calls[1].messages
    assert [m.name for m in second if m.role == "tool"] == ["calculator", "current_time"]
    assert ToolOutcome.from_content(second[-2].content).output == {"result": 42}
    # What is kept: the run, compacted and terminal; the conversation's history.
    state = await handling.load(RunState, "run", "req-1")
    assert state is not None
    assert (state.status, state.messages) == ("completed", [])
    conv = await handling.load(ConversationState, "conv", "conv-1")
    assert conv is not None
    assert [m.role for m in conv.history] == ["user", "assistant"]
    assert conv.active is None


async def test_a_redelivered_event_yields_the_same_events(handling: Handling) -> None:
    model = scripted(TWO_TOOLS, answer("42"))
    handlers = agent(model)
    request = user_request()

    crashed = await handling.handle(handlers.on_event, turn(request), commit=False)
    again = await handling.handle(handlers.on_event, turn(request))
    assert [same(e) for e in again] == [same(e) for e in crashed]

    # Once committed, the same request is a duplicate: no new events, no model call.
    calls = len(model.calls)
    assert await handling.handle(handlers.on_event, turn(request)) == []
    assert len(model.calls) == calls

    # The last result, delivered twice around a crash: the same one answer.
    await handling.handle(handlers.on_tool_result, result_of(again[0], {"result": 42}))
    last = result_of(again[1], {"time": "21:00"})
    first = await handling.handle(handlers.on_tool_result, last, commit=False)
    second = await handling.handle(handlers.on_tool_result, last)
    assert same(only_response(first)) == same(only_response(second))
    # Delivered again after the run ended: nothing more.
    assert await handling.handle(handlers.on_tool_result, last) == []


async def test_the_step_limit_ends_the_run_in_one_failed_response(handling: Handling) -> None:
    model = scripted(TWO_TOOLS)  # never answers
    handlers = agent(model, max_steps=2)
    calls = await handling.handle(handlers.on_event, turn(user_request()))
    await handling.handle(handlers.on_tool_result, result_of(calls[0], {"result": 42}))

    outputs = await handling.handle(handlers.on_tool_result, result_of(calls[1], {"t": 1}))

    response = only_response(outputs)
    assert response.data.status == "failed"
    assert response.data.error is not None
    assert "step limit of 2" in response.data.error
    assert response.data.steps == 2
    assert len(model.calls) == 2
    assert await handling.index("deadlines", "assistant", "0") == []
    for late in calls:
        assert await handling.handle(handlers.on_tool_result, result_of(late, 1)) == []


async def test_the_deadline_sweeper_ends_the_run_in_one_timed_out_response(
    handling: Handling,
) -> None:
    handlers = agent(scripted(TWO_TOOLS, answer("late")), deadline_s=30)
    calls = await handling.handle(handlers.on_event, turn(user_request()))
    assert await handling.index("deadlines", "assistant", "0") == ["req-1|conv-1"]

    handling.clock.advance(29)
    assert await handling.run(lambda ctx: handlers.expire("req-1", ctx)) == []
    handling.clock.advance(1)
    response = only_response(await handling.run(lambda ctx: handlers.expire("req-1", ctx)))

    assert (response.data.status, response.data.steps, response.data.text) == ("timed_out", 1, None)
    assert response.id == derive_id("req-1", "response")
    # The sweeper removes the entry once the answer is delivered, not the handler.
    assert await handling.index("deadlines", "assistant", "0") == ["req-1|conv-1"]
    assert await handling.run(lambda ctx: handlers.expire("req-1", ctx)) == []
    for late in calls:
        assert await handling.handle(handlers.on_tool_result, result_of(late, 1)) == []


async def test_a_result_after_the_deadline_ends_the_run_timed_out(handling: Handling) -> None:
    model = scripted(TWO_TOOLS, answer("late"))
    handlers = agent(model)
    deadline = T0 + timedelta(seconds=5)
    calls = await handling.handle(handlers.on_event, turn(user_request(deadline=deadline)))
    await handling.handle(handlers.on_tool_result, result_of(calls[0], 42))
    handling.clock.at = deadline

    response = only_response(await handling.handle(handlers.on_tool_result, result_of(calls[1], 1)))

    assert response.data.status == "timed_out"
    assert len(model.calls) == 1  # the model is not asked after the deadline
    assert await handling.index("deadlines", "assistant", "0") == []


async def test_memory_tools_go_to_the_memory_worker(handling: Handling) -> None:
    model = scripted(tools(call("remember", {"fact": "my budget is 1200"})), answer("Noted."))
    handlers = agent(model)

    (out,) = await handling.handle(handlers.on_event, turn(user_request(user="ada")))

    assert isinstance(out, MemoryCall)
    assert (out.data.tool, out.data.user) == ("remember", "ada")


async def test_a_dead_lettered_request_is_answered_once(handling: Handling) -> None:
    handlers = agent(scripted(answer("never asked")))
    request = user_request()

    outputs = await handling.run(
        lambda ctx: handlers.on_dead_letter(turn(request), None, SchemaError("bad"), ctx)
    )

    response = only_response(outputs)
    assert response.data.status == "rejected"
    assert response.data.error == f"SchemaError: {SchemaError('bad')}"
    assert await handling.handle(handlers.on_event, turn(request)) == []
    replayed = await handling.run(
        lambda ctx: handlers.on_dead_letter(turn(request), None, SchemaError("bad"), ctx)
    )
    assert replayed == []


async def test_a_dead_lettered_result_fails_the_running_run(handling: Handling) -> None:
    handlers = agent(scripted(TWO_TOOLS, answer("never")))
    calls = await handling.handle(handlers.on_event, turn(user_request()))
    poisoned = result_of(calls[0], 42)

    outputs = await handling.run(
        lambda ctx: handlers.on_dead_letter(poisoned, None, RuntimeError("store down"), ctx)
    )

    response = only_response(outputs)
    assert (response.data.status, response.data.error) == ("failed", "RuntimeError: store down")
    assert await handling.index("deadlines", "assistant", "0") == []
    assert await handling.handle(handlers.on_tool_result, result_of(calls[1], 1)) == []
