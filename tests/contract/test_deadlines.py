"""Deadlines, on both buses: a run whose tools never answer ends ``timed_out``, once."""

from __future__ import annotations

import pytest

from agentstream.settings import AgentSettings
from schemas import ToolResult, ToolResultData, UserRequest, UserRequestData
from tests.contract.conftest import StackMaker
from tests.pipeline_harness import Stack, publish_event, running, wait_for
from topics import Topic


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
            lambda: stack.read(stack.catalog.name(Topic.TOOL_CALL)), timeout_s=15
        )
        responses = await wait_for(lambda: _answered(stack, "r-slow"), timeout_s=20)
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
        await wait_for(lambda: _answered(stack, "r-next"), timeout_s=15)
    assert len(calls) == 1
    [response] = (await stack.responses())["r-slow"]
    assert response.data.status == "timed_out"
    assert response.id == responses[0].id


async def _answered(stack: Stack, request_id: str) -> list[object]:
    return list((await stack.responses()).get(request_id, []))
