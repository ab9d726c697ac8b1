"""Failures end well, on both buses: dead letters with their headers, retries that keep a
conversation's order, and an answer for every request even when its processing dies."""

from __future__ import annotations

from agentstream.agents import ToolRegistry, builtin_registry
from agentstream.agents.models.routing import ModelRouter
from agentstream.schemas import (
    DeadLetter,
    PermanentError,
    RetryableError,
    ToolCall,
    ToolCallData,
    ToolResult,
    UserRequest,
    UserRequestData,
    decode,
)
from agentstream.topics import Kind, OutgoingRecord, Topic
from pydantic import BaseModel

from tests.pipeline_harness import (
    FlakyModel,
    Stack,
    publish_event,
    running,
    wait_for,
)


def _request(text: str, rid: str, conv: str = "c1") -> UserRequest:
    return UserRequest(
        source="test",
        request_id=rid,
        conversation_id=conv,
        data=UserRequestData(text=text, user=conv),
    )


async def test_poison_bytes_dead_letter_and_the_partition_keeps_flowing(stack: Stack) -> None:
    topic = stack.catalog.name(Topic.USER_REQUEST)
    async with running(stack, ["agent", "tool", "memory"]):
        await stack.bus.publish(OutgoingRecord(topic, b"{not json", b"c1"))
        await stack.bus.publish(
            OutgoingRecord(
                topic,
                b'{"type": "agentstream.user_request.v1", "id": "x1", '
                b'"request_id": "bad-1", "conversation_id": "c1", "source": "up", '
                b'"time": "2026-11-24T10:00:00Z", "data": {"text": 42}}',
                b"c1",
            )
        )
        await publish_event(stack, _request("What is 6 * 7?", "good-1"))
        responses = await wait_for(lambda: _have(stack, {"good-1", "bad-1"}), timeout_s=30)
    assert "42" in (responses["good-1"][0].data.text or "")
    # The wrong-schema request is answered: rejected, with the reason.
    assert responses["bad-1"][0].data.status == "rejected"
    assert "schema" in (responses["bad-1"][0].data.error or "")
    # Every group that reads the topic (the agent, the memory projection) dead-letters the
    # record it could not read; each dead letter names its group and handler.
    dead = [
        r
        for r in await stack.read(stack.catalog.name(Topic.USER_REQUEST, Kind.DLQ))
        if DeadLetter.from_headers(r.headers).handler == "router.user_request"
    ]
    assert len(dead) == 2
    assert dead[0].value == b"{not json"
    assert dead[0].key == b"c1"
    info = DeadLetter.from_headers(dead[0].headers)
    assert (info.topic, info.error_class, info.attempts) == (topic, "SchemaError", 1)
    assert info.handler == "router.user_request"
    assert info.group.endswith("agentstream-router")
    assert "Traceback" in info.stacktrace


async def _have(stack: Stack, ids: set[str]) -> dict[str, list[object]] | None:
    responses = await stack.responses()
    return responses if ids <= set(responses) else None  # type: ignore[return-value]


async def test_a_request_whose_model_always_fails_is_dead_lettered_and_answered(
    stack: Stack,
) -> None:
    model = FlakyModel("doomed", 100, lambda: RetryableError("503 from the model"))
    async with running(stack, ["agent", "tool", "memory"], router=ModelRouter(model)):
        await publish_event(stack, _request("doomed: hello", "r-doomed"))
        await publish_event(stack, _request("What is 2 + 2?", "r-fine", conv="c2"))
        responses = await wait_for(lambda: _have(stack, {"r-doomed", "r-fine"}), timeout_s=90)
    assert responses["r-doomed"][0].data.status == "failed"
    assert "503" in (responses["r-doomed"][0].data.error or "")
    assert len({r.id for r in responses["r-doomed"]}) == 1
    assert responses["r-fine"][0].data.status == "completed"
    # Within its budget (6 attempts: in place, then through the retry topic).
    assert model.calls == stack.settings.runtime.max_attempts
    # The agent's input topic carries the turn (ADR 23): its dead letter is there.
    dead = await stack.read(stack.catalog.inbox("assistant", Kind.DLQ))
    assert len(dead) == 1
    info = DeadLetter.from_headers(dead[0].headers)
    assert info.attempts == stack.settings.runtime.max_attempts
    assert info.topic == stack.catalog.inbox("assistant")  # the original, not .retry
    assert info.error_class == "RetryableError"
    retried = await stack.read(stack.catalog.inbox("assistant", Kind.RETRY))
    assert retried, "the event went through the retry topic"


async def test_order_per_conversation_holds_through_retries(stack: Stack) -> None:
    # The first turn fails three times (so it leaves for the retry topic), the second turn
    # of the same conversation must still be answered after it; another conversation flows.
    model = FlakyModel("first turn", 3, lambda: RetryableError("429", retry_after=0.3))
    async with running(stack, ["agent", "tool", "memory"], router=ModelRouter(model)):
        await publish_event(stack, _request("first turn: what is 1 + 1?", "t1"))
        await publish_event(stack, _request("second turn: what is 2 + 2?", "t2"))
        await publish_event(stack, _request("what is 3 + 3?", "other", conv="c9"))
        await wait_for(lambda: _have(stack, {"t1", "t2", "other"}), timeout_s=60)
    records = await stack.read(stack.catalog.name(Topic.AGENT_RESPONSE))
    order = [decode(r.value).request_id for r in records if r.key == b"c1"]
    assert order == ["t1", "t2"]
    texts = {rid: rs[0].data.text for rid, rs in (await stack.responses()).items()}
    assert "2" in (texts["t1"] or "")
    assert "4" in (texts["t2"] or "")
    assert model.calls == 3 + 2  # three failures, then the two steps of the turn


class NoArgs(BaseModel):
    pass


def _flaky_registry(failures: int) -> tuple[ToolRegistry, list[int]]:
    registry = builtin_registry()
    calls = [0]

    @registry.tool(name="flaky_lookup", description="Looks something up; fails at first.")
    async def flaky_lookup(args: NoArgs) -> str:
        calls[0] += 1
        if calls[0] <= failures:
            raise RetryableError("upstream 503")
        return "found"

    return registry, calls


async def test_a_tool_failing_transiently_is_retried_and_answers_once(stack: Stack) -> None:
    registry, calls = _flaky_registry(3)
    call = ToolCall(
        source="test",
        request_id="rq",
        conversation_id="c1",
        data=ToolCallData(call_id="call-1", step=1, tool="flaky_lookup", arguments={}),
    )
    async with running(stack, ["tool"], registry=registry):
        await publish_event(stack, call)
        results = await wait_for(lambda: _results(stack), timeout_s=30)
    assert calls[0] == 4
    assert [r.data.ok for r in results] == [True]
    assert results[0].data.output == "found"


async def test_a_tool_failing_for_good_is_answered_with_a_failed_result(stack: Stack) -> None:
    registry = builtin_registry()

    @registry.tool(name="broken", description="Always broken.")
    async def broken(args: NoArgs) -> str:
        raise PermanentError("this tool is broken")

    call = ToolCall(
        source="test",
        request_id="rq",
        conversation_id="c1",
        data=ToolCallData(call_id="call-2", step=1, tool="broken", arguments={}),
    )
    async with running(stack, ["tool"], registry=registry):
        await publish_event(stack, call)
        results = await wait_for(lambda: _results(stack), timeout_s=30)
    assert [r.data.ok for r in results] == [False]
    assert "broken" in (results[0].data.error or "")


async def _results(stack: Stack) -> list[ToolResult]:
    records = await stack.read(stack.catalog.name(Topic.TOOL_RESULT))
    return [e for r in records if isinstance(e := decode(r.value), ToolResult)]
