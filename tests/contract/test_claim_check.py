"""Claim check, on both buses: a payload too big for the broker travels by reference and
comes back whole; a reference whose payload is gone is a dead letter, never a silent loss."""

from __future__ import annotations

import pytest
from agentstream.agents import builtin_registry
from agentstream.handlers.runtime.claims import CLAIM_HEADER, ClaimCheck
from agentstream.schemas import DeadLetter, ToolCall, ToolCallData, ToolResult, decode, header
from agentstream.settings import RuntimeSettings
from agentstream.topics import Kind, OutgoingRecord, Topic
from pydantic import BaseModel

from tests.contract.conftest import StackMaker
from tests.pipeline_harness import Stack, publish_event, running, wait_for

SMALL_BUDGET = RuntimeSettings(claim_check_bytes=4096, retry_base_delay_s=0.01)


@pytest.fixture
async def stack(make_stack_for: StackMaker) -> Stack:
    return await make_stack_for(runtime=SMALL_BUDGET)


class Size(BaseModel):
    chars: int


async def test_a_big_tool_output_travels_by_reference_and_comes_back_whole(
    stack: Stack,
) -> None:
    registry = builtin_registry()

    @registry.tool(name="big_report", description="A long report.")
    async def big_report(args: Size) -> str:
        return "x" * args.chars

    call = ToolCall(
        source="test",
        request_id="r1",
        conversation_id="c1",
        data=ToolCallData(
            call_id="call-big", step=1, tool="big_report", arguments={"chars": 50_000}
        ),
    )
    async with running(stack, ["tool"], registry=registry):
        await publish_event(stack, call)
        records = await wait_for(
            lambda: stack.read(stack.catalog.name(Topic.TOOL_RESULT)), timeout_s=30
        )
    [record] = records
    assert record.value is not None
    assert len(record.value) < 4096, "the record on the topic is a stub"
    assert header(record.headers, CLAIM_HEADER) is not None
    claims = ClaimCheck(stack.store, stack.settings.namespace, threshold_bytes=4096, ttl_s=3600)
    event = decode((await claims.resolve(record)).value)
    assert isinstance(event, ToolResult)
    assert event.data.output == "x" * 50_000


async def test_a_reference_whose_payload_is_gone_is_dead_lettered(stack: Stack) -> None:
    topic = stack.catalog.inbox("assistant")  # where the agent reads its tool results
    stub = (
        b'{"id": "e1", "type": "agentstream.tool_result.v1", "request_id": "r1", '
        b'"conversation_id": "c1", "claim_check": {"key": "gone", "bytes": 9, '
        b'"sha256": "00"}}'
    )
    async with running(stack, ["agent"]):
        await stack.bus.publish(OutgoingRecord(topic, stub, b"c1", ((CLAIM_HEADER, b"gone"),)))
        dead = await wait_for(
            lambda: stack.read(stack.catalog.inbox("assistant", Kind.DLQ)), timeout_s=30
        )
    info = DeadLetter.from_headers(dead[0].headers)
    assert info.error_class == "SchemaError"
    assert "gone from the store" in info.error_message
    assert dead[0].value == stub
