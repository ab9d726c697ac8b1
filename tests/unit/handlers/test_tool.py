"""The tool worker's handler, called directly: arguments validated before the tool runs, and
the outcome recorded once under the call's idempotency key."""

from __future__ import annotations

from typing import Any

import pytest
from agentstream.agents import ToolRegistry
from agentstream.handlers.tool import ToolHandlers, ToolMetrics
from agentstream.schemas import ToolCall, ToolCallData, ToolResult, derive_id
from pydantic import BaseModel, Field

from tests.support.handling import T0, Handling


class AddArgs(BaseModel):
    a: float
    b: float = Field(ge=0)


class Counted:
    """A tool that says how often it ran."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, args: AddArgs) -> dict[str, float]:
        self.runs += 1
        return {"sum": args.a + args.b, "run": self.runs}


def handlers_with(tool: Counted) -> ToolHandlers:
    registry = ToolRegistry()

    async def add(args: AddArgs) -> dict[str, float]:
        return await tool(args)

    registry.tool(description="Add two numbers.")(add)
    return ToolHandlers(registry, ToolMetrics())


def tool_call(arguments: dict[str, Any], *, call_id: str = "call-1", tool: str = "add") -> ToolCall:
    return ToolCall(
        id=f"evt-{call_id}",
        source="agent-worker",
        time=T0,
        request_id="req-1",
        conversation_id="conv-1",
        causation_id="req-1",
        tenant="acme",
        data=ToolCallData(call_id=call_id, step=1, tool=tool, arguments=arguments),
    )


@pytest.fixture
def handling() -> Handling:
    return Handling()


async def test_a_call_runs_the_tool_and_answers_its_call(handling: Handling) -> None:
    tool = Counted()
    event = tool_call({"a": 2, "b": 3})

    (result,) = await handling.handle(handlers_with(tool).on_tool_call, event)

    assert isinstance(result, ToolResult)
    assert result.id == derive_id(event.id, "result")
    assert (result.data.call_id, result.data.step, result.data.tool) == ("call-1", 1, "add")
    assert (result.data.ok, result.data.output) == (True, {"sum": 5.0, "run": 1})
    assert result.data.duration_ms is not None
    assert tool.runs == 1


async def test_the_outcome_is_recorded_once_per_call(handling: Handling) -> None:
    tool = Counted()
    handlers = handlers_with(tool)
    event = tool_call({"a": 2, "b": 3})

    (first,) = await handling.handle(handlers.on_tool_call, event, commit=False)  # a crash
    (second,) = await handling.handle(handlers.on_tool_call, event)

    assert tool.runs == 1
    assert second.data == first.data
    assert second.id == first.id
    # Another call is another side effect.
    (other,) = await handling.handle(
        handlers.on_tool_call, tool_call({"a": 1, "b": 0}, call_id="call-2")
    )
    assert other.data.output == {"sum": 1.0, "run": 2}


@pytest.mark.parametrize(
    ("arguments", "fields"),
    [({"a": "two", "b": 3}, "a"), ({"a": 2, "b": -1}, "b"), ({"b": 1}, "a")],
)
async def test_invalid_arguments_are_answered_without_running_the_tool(
    handling: Handling, arguments: dict[str, Any], fields: str
) -> None:
    tool = Counted()

    (result,) = await handling.handle(handlers_with(tool).on_tool_call, tool_call(arguments))

    assert (result.data.ok, result.data.error_class) == (False, "InvalidArguments")
    assert result.data.error is not None
    assert fields in result.data.error
    assert tool.runs == 0


async def test_an_unknown_tool_is_answered_with_a_failed_result(handling: Handling) -> None:
    tool = Counted()
    event = tool_call({}, tool="shell")

    (result,) = await handling.handle(handlers_with(tool).on_tool_call, event)

    assert (result.data.ok, result.data.error_class) == (False, "UnknownTool")


async def test_a_call_that_failed_for_good_still_gets_a_result(handling: Handling) -> None:
    handlers = handlers_with(Counted())
    event = tool_call({"a": 1, "b": 1})

    (result,) = await handling.run(
        lambda ctx: handlers.on_dead_letter(event, None, TimeoutError("slow"), ctx)
    )

    assert (result.data.ok, result.data.error_class) == (False, "TimeoutError")
    assert result.data.call_id == "call-1"
