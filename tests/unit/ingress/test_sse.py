"""The SSE body generator on its own: heartbeats while waiting, resume, the held response."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress.projection import Projection
from agentstream.ingress.requests import RequestRepository
from agentstream.ingress.sse import event_stream
from agentstream.schemas import AgentResponse, AgentResponseData, UserRequest, UserRequestData

NS = "agentstream:sse."


def request() -> UserRequest:
    return UserRequest(
        id="ev", source="t", request_id="r1", conversation_id="c1", data=UserRequestData(text="q")
    )


def answer(tools: int = 0) -> AgentResponse:
    return request().derive(
        AgentResponse,
        AgentResponseData(status="completed", text="a", tool_calls=["t"] * tools),
        step="final",
        source="agent",
    )


async def project(store: InProcessStore, event: UserRequest | AgentResponse) -> None:
    projection = Projection(NS)
    ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
    if isinstance(event, UserRequest):
        await projection.on_user_request(event, ctx)
    else:
        await projection.on_agent_response(event, ctx)
    assert await store.commit(expect=ctx.reads, ops=ctx.ops)


async def collect(repo: RequestRepository, **options: float) -> list[bytes]:
    chunks = []
    async for chunk in event_stream(
        repo, "r1", last_event_id=None, poll_interval_s=0.01, heartbeat_s=0.05, **options
    ):
        chunks.append(chunk)
    return chunks


async def test_heartbeats_while_waiting_then_the_response_ends_the_stream() -> None:
    store = InProcessStore()
    repo = RequestRepository(store, NS, record_ttl_s=60, idempotency_ttl_s=60)
    await project(store, request())
    streaming = asyncio.create_task(collect(repo))
    await asyncio.sleep(0.3)
    await project(store, answer())
    chunks = await asyncio.wait_for(streaming, 5)
    assert chunks[0] == b"retry: 1000\n\n"
    assert b": keep-alive\n\n" in chunks
    assert chunks[-1].startswith(b"id: 0\nevent: response\n")


async def test_a_held_response_ends_the_stream_after_the_settle_time() -> None:
    store = InProcessStore()
    repo = RequestRepository(store, NS, record_ttl_s=60, idempotency_ttl_s=60)
    await project(store, request())
    await project(store, answer(tools=1))  # its tool call never arrives
    chunks = await asyncio.wait_for(collect(repo, settle_s=0.2), 5)
    assert chunks[-1].startswith(b"id: 0\nevent: response\n")
