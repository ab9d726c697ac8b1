"""Declared agents, handler by handler on the in-process store: the router sequences turns and
picks each turn's agent; handoffs move one run between agents; an agent called as a tool runs
a sub-run whose answer (and cost) comes back once; guardrails and output types end a request
in one terminal answer with the reason; the depth limit and the cycle guard fail clearly."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from agentstream.agents import (
    Agent,
    App,
    Message,
    ModelRouter,
    RunContext,
    RunState,
    ToolOutcome,
    ToolSpec,
    builtin_registry,
)
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.agent.routes import AgentConfig, AgentHandlers
from agentstream.handlers.router import ConversationRoute, RouterHandlers, turn_task
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.tool import tool_result
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    AgentTask,
    ConfigError,
    Envelope,
    SchemaError,
    ToolCall,
    ToolResult,
    UserRequest,
    UserRequestData,
    derive_id,
)
from agentstream.topics import Catalog
from pydantic import BaseModel

from tests.support.handling import T0, Handling
from tests.support.scripted_model import FunctionModel, Reply, answer, call, tools


class Plan(BaseModel):
    plan: str
    seats: int


def no_secrets(context: RunContext, text: str) -> str | None:
    return "no secrets here" if "secret" in text else None


def polite(context: RunContext, text: str) -> bool:
    return "stupid" not in text


def team_app() -> App:
    app = App("team", default="triage", tools=builtin_registry())
    app.agent("math", "Do arithmetic.", description="Arithmetic.", tools=["calculator"])
    app.agent("billing", "Billing.", description="Invoices and refunds.", tools=[])
    app.agent("quote", "Quotes.", description="Quotes.", tools=[], output_type=Plan)
    app.agent(
        "triage",
        "Route.",
        tools=["current_time"],
        handoffs=["billing", "quote"],
        agent_tools=["math"],
        input_guardrails=[no_secrets],
        output_guardrails=[polite],
    )
    return app.validate()


def by_agent(replies: dict[str, Sequence[Reply]]) -> FunctionModel:
    """A model that answers by the agent whose system prompt it sees, turn by turn."""
    prompts = {"Do arithmetic.": "math", "Billing.": "billing", "Route.": "triage"}

    def reply(messages: Sequence[Message], offered: Sequence[ToolSpec]) -> Reply:
        system = messages[0].content or ""
        agent = next((a for p, a in prompts.items() if system.startswith(p)), "quote")
        replied = sum(m.role == "assistant" for m in messages)
        script = replies[agent]
        return script[min(replied, len(script) - 1)]

    return FunctionModel(reply)


def handlers(app: App, model: FunctionModel, **config: Any) -> dict[str, AgentHandlers]:
    router = ModelRouter(model)
    options = AgentConfig(cache=False, **config)
    return {a: AgentHandlers(app, a, router, options, AgentMetrics()) for a in app.names()}


def request(rid: str, text: str = "hello", conv: str = "c1", **data: Any) -> UserRequest:
    return UserRequest(
        id=f"evt-{rid}",
        source="test",
        time=T0,
        request_id=rid,
        conversation_id=conv,
        tenant="acme",
        data=UserRequestData(text=text, **data),
    )


def response(rid: str, agent: str | None, conv: str = "c1") -> AgentResponse:
    return AgentResponse(
        id=derive_id(rid, "response"),
        source="test",
        request_id=rid,
        conversation_id=conv,
        tenant="acme",
        data=AgentResponseData(status="completed", text="ok", agent=agent),
    )


@pytest.fixture
def handling() -> Handling:
    return Handling()


# -- the router -----------------------------------------------------------------------------


async def test_the_router_runs_a_conversations_turns_one_at_a_time(handling: Handling) -> None:
    router = RouterHandlers(["triage", "billing"], "triage", ttl_s=60)
    (first,) = await handling.handle(router.on_user_request, request("r1"))
    assert isinstance(first, AgentTask)
    assert (first.data.agent, first.data.kind, first.id) == (
        "triage",
        "turn",
        derive_id("r1", "turn"),
    )
    # The next turn waits for the first one's answer, whatever agent it names.
    assert await handling.handle(router.on_user_request, request("r2", agent="billing")) == []
    assert await handling.handle(router.on_user_request, request("r3")) == []
    # A duplicate of a routed request changes nothing.
    assert await handling.handle(router.on_user_request, request("r1")) == []
    # Another conversation is not held up.
    (other,) = await handling.handle(router.on_user_request, request("x1", conv="c2"))
    assert other.request_id == "x1"

    (second,) = await handling.handle(router.on_agent_response, response("r1", "billing"))
    assert (second.request_id, second.data.agent) == ("r2", "billing")
    # r3 names no agent: the agent that answered the last turn takes it.
    (third,) = await handling.handle(router.on_agent_response, response("r2", "billing"))
    assert (third.request_id, third.data.agent) == ("r3", "billing")
    assert await handling.handle(router.on_agent_response, response("r3", "billing")) == []
    state = await handling.load(ConversationRoute, "route", "c1")
    assert state is not None
    assert (state.active, state.queued, state.last_agent) == (None, [], "billing")


async def test_the_router_serves_turns_queued_by_a_router_of_before_in_order(
    handling: Handling,
) -> None:
    """A state written before queued turns were kept as text (``queue``) still serves its
    turns first, then the ones queued since."""
    router = RouterHandlers(["triage"], "triage", ttl_s=60)
    old = ConversationRoute(active="r1", queue=[request("r2"), request("r3")])
    await handling.run(lambda ctx: _saved(ctx, ctx.key("route", "c1"), old))
    assert await handling.handle(router.on_user_request, request("r4")) == []
    for answered, following in (("r1", "r2"), ("r2", "r3"), ("r3", "r4")):
        (task,) = await handling.handle(router.on_agent_response, response(answered, None))
        assert (task.request_id, task.data.agent) == (following, "triage")


async def _saved(ctx: Context, key: str, value: BaseModel) -> list[Envelope[Any]]:
    ctx.save(key, value)
    return []


async def test_the_router_rejects_an_unknown_agent_without_holding_the_conversation(
    handling: Handling,
) -> None:
    router = RouterHandlers(["triage"], "triage", ttl_s=60)
    (rejected,) = await handling.handle(router.on_user_request, request("r1", agent="nope"))
    assert isinstance(rejected, AgentResponse)
    assert rejected.id == derive_id("r1", "response")
    assert rejected.data.status == "rejected"
    assert "unknown agent 'nope'" in (rejected.data.error or "")
    (turn,) = await handling.handle(router.on_user_request, request("r2"))
    assert turn.request_id == "r2"
    # Its own answer, read back by the router, does not release anything.
    assert await handling.handle(router.on_agent_response, rejected) == []


async def test_a_request_naming_an_agent_is_rejected_in_the_schema_when_malformed() -> None:
    with pytest.raises(ValueError, match="agent"):
        UserRequestData(text="hi", agent="Not A Name!")


# -- handoffs -------------------------------------------------------------------------------


async def test_a_handoff_moves_the_run_and_the_target_answers_once(handling: Handling) -> None:
    app = team_app()
    model = by_agent(
        {
            "triage": [tools(call("transfer_to_billing", {"reason": "refund"}))],
            "billing": [answer("Your refund is on its way.")],
        }
    )
    agents = handlers(app, model)
    turn = _turn(request("r1", "I want a refund"), "triage")

    (handoff,) = await handling.handle(agents["triage"].on_event, turn)
    assert isinstance(handoff, AgentTask)
    assert (handoff.data.kind, handoff.data.agent, handoff.data.from_agent) == (
        "handoff",
        "billing",
        "triage",
    )
    assert Catalog(agents=app.names()).topic_of(handoff) == "agent.billing"
    # A late or duplicated event at triage changes nothing now.
    assert await handling.handle(agents["triage"].on_event, turn) == []

    (done,) = await handling.handle(agents["billing"].on_event, handoff)
    assert isinstance(done, AgentResponse)
    assert done.id == derive_id("r1", "response")
    assert (done.data.status, done.data.agent, done.data.handoffs) == (
        "completed",
        "billing",
        ["triage"],
    )
    assert done.data.usage.model_calls == 2  # both agents' calls
    # The target saw its own instructions, the user's message and the handoff note.
    seen = model.calls[-1].messages
    assert seen[0].content == "Billing."
    assert any("refund" in (m.content or "") for m in seen if m.role == "system")
    # Delivered again: nothing more.
    assert await handling.handle(agents["billing"].on_event, handoff) == []
    assert await handling.index("deadlines", "triage", "0") == []
    assert await handling.index("deadlines", "billing", "0") == []


async def test_handing_on_and_on_ends_at_the_handoff_limit(handling: Handling) -> None:
    app = App("loop", default="a", tools=builtin_registry())
    app.agent("a", "A.", tools=[], handoffs=["b"])
    app.agent("b", "B.", tools=[], handoffs=["a"])
    model = FunctionModel(
        lambda messages, _: tools(
            call("transfer_to_b" if (messages[0].content or "") == "A." else "transfer_to_a")
        )
    )
    agents = handlers(app.validate(), model, max_handoffs=3)
    (event,) = await handling.handle(agents["a"].on_event, _turn(request("r1"), "a"))
    while isinstance(event, AgentTask):
        (event,) = await handling.handle(agents[event.data.agent].on_event, event)
    assert isinstance(event, AgentResponse)
    assert event.data.status == "failed"
    assert "handoff limit of 3" in (event.data.error or "")


# -- agents as tools ------------------------------------------------------------------------


async def test_an_agent_called_as_a_tool_answers_once_and_its_cost_rolls_up(
    handling: Handling,
) -> None:
    app = team_app()
    model = by_agent(
        {
            "triage": [tools(call("ask_math", {"input": "6 * 7"})), answer("It is 42.")],
            "math": [tools(call("calculator", {"expression": "6 * 7"})), answer("42")],
        }
    )
    agents = handlers(app, model)
    (sub,) = await handling.handle(
        agents["triage"].on_event, _turn(request("r1", "6*7?"), "triage")
    )
    assert isinstance(sub, AgentTask)
    assert (sub.data.kind, sub.data.agent, sub.data.chain) == ("subrun", "math", ["triage"])
    assert sub.data.parent is not None
    assert sub.data.run_id == derive_id("r1", f"subrun:{sub.data.parent.call_id}")
    # A redelivered step asks for the very same sub-run.
    again = await handling.handle(agents["triage"].on_event, _turn(request("r1"), "triage"))
    assert again == []  # the run started already

    (calc,) = await handling.handle(agents["math"].on_event, sub)
    assert isinstance(calc, ToolCall)
    assert (calc.data.reply_to, calc.data.run_id) == ("math", sub.data.run_id)
    assert await handling.handle(agents["math"].on_event, sub) == []  # one sub-run per call
    result = tool_result(calc, ToolOutcome(ok=True, output={"result": 42}), "tool-worker")
    assert Catalog(agents=app.names()).topic_of(result) == "agent.math"

    (answer_back,) = await handling.handle(agents["math"].on_event, result)
    assert isinstance(answer_back, ToolResult)
    assert (answer_back.data.reply_to, answer_back.data.ok, answer_back.data.output) == (
        "triage",
        True,
        "42",
    )
    assert answer_back.data.usage is not None
    assert answer_back.data.usage.model_calls == 2

    (done,) = await handling.handle(agents["triage"].on_event, answer_back)
    assert isinstance(done, AgentResponse)
    assert (done.data.status, done.data.agent, done.data.text) == (
        "completed",
        "triage",
        "It is 42.",
    )
    assert done.data.usage.model_calls == 4  # triage's two and math's two
    # The sub-run's answer delivered again: used once.
    assert await handling.handle(agents["triage"].on_event, answer_back) == []
    sub_state = await handling.load(RunState, "run", sub.data.run_id or "")
    assert sub_state is not None
    assert sub_state.status == "completed"


async def test_a_cycle_of_agent_calls_fails_the_request_clearly(handling: Handling) -> None:
    app = App("cycle", default="a", tools=builtin_registry())
    app.agent("a", "A.", tools=[], agent_tools=["b"])
    app.agent("b", "B.", tools=[], agent_tools=["a"])
    model = FunctionModel(
        lambda messages, _: tools(
            call("ask_b" if (messages[0].content or "") == "A." else "ask_a", {"input": "x"})
        )
    )
    agents = handlers(app.validate(), model)
    (event,) = await handling.handle(agents["a"].on_event, _turn(request("r1"), "a"))
    steps = 0
    while not isinstance(event, AgentResponse):
        target = event.data.agent if isinstance(event, AgentTask) else event.data.reply_to
        (event,) = await handling.handle(agents[str(target)].on_event, event)
        steps += 1
    assert steps == 2  # a -> b, b refuses to call a, its failure fails a
    assert event.data.status == "failed"
    assert "would loop (a -> b -> a)" in (event.data.error or "")


async def test_the_depth_limit_fails_the_request_clearly(handling: Handling) -> None:
    app = App("deep", default="a", tools=builtin_registry())
    app.agent("a", "A.", tools=[], agent_tools=["b"])
    app.agent("b", "B.", tools=[], agent_tools=["c"])
    app.agent("c", "C.", tools=[])
    model = FunctionModel(
        lambda messages, _: tools(
            call("ask_b" if (messages[0].content or "") == "A." else "ask_c", {"input": "x"})
        )
    )
    agents = handlers(app.validate(), model, max_depth=2)
    (event,) = await handling.handle(agents["a"].on_event, _turn(request("r1"), "a"))
    while not isinstance(event, AgentResponse):
        target = event.data.agent if isinstance(event, AgentTask) else event.data.reply_to
        (event,) = await handling.handle(agents[str(target)].on_event, event)
    assert event.data.status == "failed"
    assert "depth 2 reached (a -> b -> c)" in (event.data.error or "")


# -- guardrails and output types ------------------------------------------------------------


async def test_an_input_guardrail_rejects_with_its_reason(handling: Handling) -> None:
    model = by_agent({"triage": [answer("never")]})
    agents = handlers(team_app(), model)
    (done,) = await handling.handle(
        agents["triage"].on_event, _turn(request("r1", "my secret is 42"), "triage")
    )
    assert isinstance(done, AgentResponse)
    assert (done.data.status, done.data.error) == (
        "rejected",
        "input guardrail no_secrets: no secrets here",
    )
    assert model.calls == []


async def test_an_output_guardrail_fails_the_answer_with_its_reason(handling: Handling) -> None:
    agents = handlers(team_app(), by_agent({"triage": [answer("a stupid answer")]}))
    (done,) = await handling.handle(agents["triage"].on_event, _turn(request("r1"), "triage"))
    assert isinstance(done, AgentResponse)
    assert (done.data.status, done.data.text) == ("failed", "a stupid answer")
    assert done.data.error == "output guardrail polite: rejected"


async def test_a_structured_answer_is_validated_and_retried_then_returned(
    handling: Handling,
) -> None:
    model = by_agent({"quote": [answer("not json"), answer('{"plan": "pro", "seats": 5}')]})
    agents = handlers(team_app(), model)
    (done,) = await handling.handle(agents["quote"].on_event, _turn(request("r1"), "quote"))
    assert isinstance(done, AgentResponse)
    assert (done.data.status, done.data.output) == ("completed", {"plan": "pro", "seats": 5})
    # The model was told why its first answer did not do.
    retry = model.calls[1].messages[-1]
    assert retry.role == "user"
    assert "does not match the required output type" in (retry.content or "")
    assert "JSON Schema" in (model.calls[0].messages[0].content or "")


async def test_a_structured_answer_that_never_validates_fails_with_the_error(
    handling: Handling,
) -> None:
    model = by_agent({"quote": [answer('{"plan": "pro"}')]})
    agents = handlers(team_app(), model)
    (done,) = await handling.handle(agents["quote"].on_event, _turn(request("r1"), "quote"))
    assert isinstance(done, AgentResponse)
    assert done.data.status == "failed"
    assert "did not match the output type after 3 tries: seats: Field required" in (
        done.data.error or ""
    )
    assert len(model.calls) == 3  # the first answer and output_retries=2 more


# -- declaring ------------------------------------------------------------------------------


def test_declarations_that_do_not_hang_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not valid"):
        Agent("Billing Team")
    app = App("bad", tools=builtin_registry())
    app.agent("a", tools=["nope"], handoffs=["ghost"], agent_tools=["phantom"])
    with pytest.raises(ConfigError) as info:
        app.validate()
    message = str(info.value)
    assert "unknown tool 'nope'" in message
    assert "hands off to undeclared 'ghost'" in message
    assert "calls undeclared 'phantom'" in message
    with pytest.raises(ConfigError, match="declared twice"):
        app.agent("a")


def _turn(request: UserRequest, agent: str) -> AgentTask:
    return turn_task(request, agent)


async def test_instructions_may_be_a_function_of_the_run_and_an_agent_has_its_own_model(
    handling: Handling,
) -> None:
    seen: list[RunContext] = []

    def instructions(context: RunContext) -> str:
        seen.append(context)
        return f"You serve {context.tenant} in conversation {context.conversation_id}."

    app = App("fn", default="a", tools=builtin_registry())
    app.agent("a", instructions, tools=[], model="large")
    small = FunctionModel(lambda *_: "small answer", name="small")
    large = FunctionModel(lambda *_: "large answer", name="large")
    agent = AgentHandlers(
        app.validate(), "a", ModelRouter(small, large), AgentConfig(cache=False), AgentMetrics()
    )
    (done,) = await handling.handle(agent.on_event, _turn(request("r1", metadata={"k": "v"}), "a"))
    assert isinstance(done, AgentResponse)
    assert (done.data.text, done.data.model) == ("large answer", "large")
    assert large.calls[0].messages[0].content == "You serve acme in conversation c1."
    assert small.calls == []
    assert (seen[0].agent, seen[0].request_id, dict(seen[0].metadata)) == ("a", "r1", {"k": "v"})
    # A request naming its model wins over the agent's.
    (again,) = await handling.handle(
        agent.on_event, _turn(request("r2", conv="c2", model="small"), "a")
    )
    assert isinstance(again, AgentResponse)
    assert again.data.model == "small"


async def test_a_sub_run_ends_by_its_callers_deadline(handling: Handling) -> None:
    app = team_app()
    model = by_agent(
        {"triage": [tools(call("ask_math", {"input": "6 * 7"}))], "math": [answer("42")]}
    )
    agents = handlers(app, model, deadline_s=30)
    math_agent = app.get("math")
    math_agent.deadline_s = 600  # its own default is longer: the caller's bounds it
    agents["math"] = AgentHandlers(
        app, "math", ModelRouter(model), AgentConfig(cache=False), AgentMetrics()
    )
    (sub,) = await handling.handle(agents["triage"].on_event, _turn(request("r1"), "triage"))
    assert isinstance(sub, AgentTask)
    assert sub.data.deadline == T0 + timedelta(seconds=30)
    handling.clock.advance(31)
    (late,) = await handling.handle(agents["math"].on_event, sub)
    assert isinstance(late, ToolResult)
    assert (late.data.ok, late.data.error_class) == (False, "SubRunTimedOut")


async def test_an_unreadable_request_is_rejected_in_its_turn(handling: Handling) -> None:
    router = RouterHandlers(["triage"], "triage", ttl_s=60)
    (first,) = await handling.handle(router.on_user_request, request("r1"))
    assert first.request_id == "r1"
    raw = b'{"request_id": "r2", "conversation_id": "c1", "tenant": "acme", "data": 42}'
    # The record of r2 did not decode while r1 runs: its answer waits for r1's.
    held = await handling.run(
        lambda ctx: router.on_dead_letter(None, raw, SchemaError("bad record"), ctx)
    )
    assert held == []
    assert await handling.handle(router.on_user_request, request("r3")) == []

    rejected, third = await handling.handle(router.on_agent_response, response("r1", "triage"))
    assert isinstance(rejected, AgentResponse)
    assert (rejected.request_id, rejected.id, rejected.data.status) == (
        "r2",
        derive_id("r2", "response"),
        "rejected",
    )
    assert "bad record" in (rejected.data.error or "")
    assert isinstance(third, AgentTask)
    assert third.request_id == "r3"
    # In an idle conversation the refusal is answered at once.
    (at_once,) = await handling.run(
        lambda ctx: router.on_dead_letter(
            None,
            b'{"request_id": "x9", "conversation_id": "c9", "data": 1}',
            SchemaError("bad"),
            ctx,
        )
    )
    assert (at_once.request_id, at_once.tenant) == ("x9", "default")


async def test_an_answer_the_router_cannot_read_still_ends_its_turn(handling: Handling) -> None:
    router = RouterHandlers(["triage"], "triage", ttl_s=60)
    await handling.handle(router.on_user_request, request("r1"))
    assert await handling.handle(router.on_user_request, request("r2")) == []
    # An answer of another turn, unreadable, changes nothing.
    stray = b'{"request_id": "r0", "conversation_id": "c1", "data": {"status": 7}}'
    assert (
        await handling.run(
            lambda ctx: router.on_answer_dead_letter(None, stray, SchemaError("bad"), ctx)
        )
        == []
    )
    # r1's answer did not decode (a newer agent's record, say): r2 starts all the same.
    raw = b'{"request_id": "r1", "conversation_id": "c1", "data": {"status": 7}}'
    (second,) = await handling.run(
        lambda ctx: router.on_answer_dead_letter(None, raw, SchemaError("bad record"), ctx)
    )
    assert isinstance(second, AgentTask)
    assert second.request_id == "r2"
    assert await handling.handle(router.on_agent_response, response("r2", "triage")) == []
    state = await handling.load(ConversationRoute, "route", "c1")
    assert state is not None
    assert (state.active, state.queue, state.queued) == (None, [], [])
