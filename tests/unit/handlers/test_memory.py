"""The memory worker's handlers, called directly: ``remember`` and ``recall`` per scope, and
the conversation summary projected from requests and responses."""

from __future__ import annotations

from typing import Any

import pytest
from agentstream.agents import ConversationSummary, MemoryBook, memory_scope
from agentstream.handlers.memory import MemoryHandlers
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    MemoryCall,
    ToolCallData,
    ToolResult,
    UserRequest,
    UserRequestData,
)

from tests.support.handling import T0, Handling


def memory_call(
    tool: str, arguments: dict[str, Any], *, user: str | None = "ada", call_id: str = "m-1"
) -> MemoryCall:
    return MemoryCall(
        id=f"evt-{call_id}",
        source="agent-worker",
        time=T0,
        request_id="req-1",
        conversation_id="conv-1",
        causation_id="req-1",
        tenant="acme",
        data=ToolCallData(call_id=call_id, step=1, tool=tool, arguments=arguments, user=user),
    )


@pytest.fixture
def handling() -> Handling:
    return Handling()


@pytest.fixture
def memory() -> MemoryHandlers:
    return MemoryHandlers()


async def ask(handling: Handling, memory: MemoryHandlers, event: MemoryCall) -> ToolResult:
    (result,) = await handling.handle(memory.on_memory_call, event)
    assert isinstance(result, ToolResult)
    assert result.data.call_id == event.data.call_id
    return result


async def test_remember_then_recall(handling: Handling, memory: MemoryHandlers) -> None:
    remembered = await ask(handling, memory, memory_call("remember", {"fact": "my budget is 1200"}))
    assert remembered.data.ok
    assert remembered.data.output == {
        "remembered": {"key": "budget", "value": "1200"},
        "scope": "acme/ada",
    }

    recalled = await ask(
        handling, memory, memory_call("recall", {"query": "budget"}, call_id="m-2")
    )

    assert recalled.data.ok
    assert recalled.data.output == {
        "query": "budget",
        "facts": [{"key": "budget", "value": "1200"}],
        "count": 1,
    }
    book = await handling.load(MemoryBook, "memory", memory_scope("acme", "ada"))
    assert book is not None
    assert list(book.facts) == ["budget"]


async def test_memory_is_kept_per_user(handling: Handling, memory: MemoryHandlers) -> None:
    await ask(handling, memory, memory_call("remember", {"fact": "my name is Ada"}))

    other = await ask(
        handling, memory, memory_call("recall", {"query": "name"}, user="bob", call_id="m-2")
    )

    assert other.data.output == {"query": "name", "facts": [], "count": 0}


async def test_a_bad_memory_call_is_answered_with_a_failed_result(
    handling: Handling, memory: MemoryHandlers
) -> None:
    result = await ask(handling, memory, memory_call("remember", {"note": "no fact"}))

    assert (result.data.ok, result.data.error_class) == (False, "InvalidArguments")
    assert await handling.load(MemoryBook, "memory", memory_scope("acme", "ada")) is None


async def test_the_summary_follows_requests_and_answers(
    handling: Handling, memory: MemoryHandlers
) -> None:
    request = UserRequest(
        id="evt-req-1",
        source="test",
        time=T0,
        request_id="req-1",
        conversation_id="conv-1",
        tenant="acme",
        data=UserRequestData(text="Plan a trip to Lisbon"),
    )
    response = request.derive(
        AgentResponse,
        AgentResponseData(status="completed", text="Lisbon in May: book the tram tour."),
        step="response",
        source="agent-worker",
    )

    assert await handling.handle(memory.on_user_request, request) == []
    assert await handling.handle(memory.on_agent_response, response) == []

    summary = await handling.load(ConversationSummary, "summary", "acme", "conv-1")
    assert summary is not None
    assert summary.conversation_id == "conv-1"
    assert "lisbon" in summary.model_dump_json().lower()
