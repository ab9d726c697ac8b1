"""Deadlines, on both buses: a run whose tools never answer ends ``timed_out``, once."""

from __future__ import annotations

import pytest
from agentstream.schemas import ToolResult, ToolResultData, UserRequest, UserRequestData
from agentstream.settings import AgentSettings
from agentstream.topics import Topic
from agentstream.topics.partitioner import partition_for

from tests.contract.conftest import StackMaker
from tests.pipeline_harness import Stack, publish_event, running, wait_for


@pytest.fixture
async def stack(make_stack_for: StackMaker) -> Stack:
    return await make_stack_for(agent=AgentSettings(deadline_s=2.0))


async def test_a_run_whose_tools_never_answer_times_out_once(stack: Stack) -> None:
    request = UserRequest(
        source="test",
        request_id="r-slow",
        conversation_id="c1",
        data=UserRequestData(text="What is 19 * 23?"),
    )
    async with running(stack, ["agent"]):  # no tool worker: the call is never answered
        await publish_event(stack, request)
        calls = await wait_for(
            lambda: stack.read(stack.catalog.name(Topic.TOOL_CALL)), timeout_s=45
        )
        responses = await wait_for(lambda: _answered(stack, "r-slow"), timeout_s=45)
        # A result arriving after the deadline changes nothing.
        late = ToolResult(
            source="test",
            request_id="r-slow",
            conversation_id="c1",
            data=ToolResultData(call_id="late", step=1, tool="calculator", ok=True, output=437),
        )
        await publish_event(stack, late)
        await publish_event(stack, request)  # and the same request again is not re-run
        again = UserRequest(
            source="test",
            request_id="r-next",
            conversation_id="c1",
            data=UserRequestData(text="Hello there"),
        )
        await publish_event(stack, again)
        await wait_for(lambda: _answered(stack, "r-next"), timeout_s=45)
    assert len(calls) == 1
    [response] = (await stack.responses())["r-slow"]
    assert response.data.status == "timed_out"
    assert response.id == responses[0].id


async def _answered(stack: Stack, request_id: str) -> list[object]:
    return list((await stack.responses()).get(request_id, []))


async def test_an_expiry_found_again_replays_its_answer_instead_of_losing_it(
    stack: Stack,
) -> None:
    """The crash window: an expiry committed in the store whose answer never reached the
    broker. Its deadline entry stays until delivery, so the next sweep finds it again and
    its job replays the recorded answer (same id), and only then is the entry removed."""
    request = UserRequest(
        source="test",
        request_id="r-crash",
        conversation_id="c2",
        data=UserRequestData(text="What is 19 * 23?"),
    )
    async with running(stack, ["agent"]):
        await publish_event(stack, request)
        [first] = await wait_for(lambda: _answered(stack, "r-crash"), timeout_s=45)
        assert first.data.status == "timed_out"
        entries = await _deadline_entries(stack)
        assert entries == {}, "the entry is removed once the answer is delivered"
        # Put the entry back as a crash before the publish would have left it.
        partition = partition_for(b"c2", stack.settings.topics.partitions)
        index = f"{stack.settings.namespace}:deadlines:assistant:{partition}"
        await stack.store.index_add(index, "r-crash|c2", 0.0)
        replayed = await wait_for(
            lambda: _at_least(stack, "r-crash", 2), timeout_s=45, interval_s=0.3
        )
        await wait_for(lambda: _no_entry(stack, index), timeout_s=10)
    assert {r.id for r in replayed} == {first.id}  # the same answer, not a second one
    assert {r.data.status for r in replayed} == {"timed_out"}


async def _deadline_entries(stack: Stack) -> dict[int, list[tuple[str, float]]]:
    found: dict[int, list[tuple[str, float]]] = {}
    for partition in range(stack.settings.topics.partitions):
        index = f"{stack.settings.namespace}:deadlines:assistant:{partition}"
        entries = await stack.store.index_range(index)
        if entries:
            found[partition] = entries
    return found


async def _at_least(stack: Stack, request_id: str, n: int) -> list[object] | None:
    responses = (await stack.responses()).get(request_id, [])
    return list(responses) if len(responses) >= n else None


async def _no_entry(stack: Stack, index: str) -> bool:
    return not await stack.store.index_range(index)
