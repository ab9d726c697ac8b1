"""The memory worker: serves the memory tools and keeps long-term memory from the stream.

- ``memory_call`` (``remember``, ``recall``): answered with a ``tool_result``, reading and
  writing the :class:`agents.MemoryBook` of the caller's scope (tenant, and the request's
  ``user`` when given).
- ``user_request`` and ``agent_response``: a per-conversation summary, a projection of the
  stream.

Memory is derived only from events, so :func:`rebuild` recomputes it by replaying the
retained topics (``agentstream memory rebuild``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agentstream.agents import (
    ConversationSummary,
    MemoryBook,
    ToolOutcome,
    apply_memory_call,
    memory_scope,
)
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.stores.base import StateStore
from agentstream.handlers.tool import tool_result
from agentstream.schemas import (
    AgentResponse,
    Envelope,
    MemoryCall,
    SchemaError,
    ToolRejected,
    UserRequest,
    decode,
)
from agentstream.topics import Bus, Catalog, Inbox, LogicalTopic, Topic
from agentstream.topics.deadline import landed_late
from pydantic import BaseModel

__all__ = ["MemoryHandlers", "rebuild"]

log = logging.getLogger(__name__)

SOURCE = "memory-worker"
_PENDING_TTL_S = 24 * 3600


class _PendingTurn(BaseModel):
    text: str
    user: str | None = None


class MemoryHandlers:
    def __init__(self, agents: Sequence[str] = ()) -> None:
        #: The results go to the asking agent's input topic (or tool_result for none).
        self.publishes: tuple[LogicalTopic, ...] = (
            Topic.TOOL_RESULT,
            *(Inbox(a) for a in agents),
        )

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.MEMORY_CALL,
                self.on_memory_call,
                "memory.memory_call",
                on_dead_letter=self.on_dead_letter,
                publishes=self.publishes,
            ),
            Route(Topic.USER_REQUEST, self.on_user_request, "memory.user_request"),
            Route(Topic.AGENT_RESPONSE, self.on_agent_response, "memory.agent_response"),
        ]

    async def on_memory_call(self, event: MemoryCall, ctx: Context) -> list[Envelope[Any]]:
        key = ctx.key("memory", memory_scope(event.tenant, event.data.user))
        book = await ctx.load(key, MemoryBook) or MemoryBook(
            tenant=event.tenant, user=event.data.user
        )
        try:
            output = apply_memory_call(
                book,
                event.data.tool,
                event.data.arguments,
                now=ctx.now(),
                request_id=event.request_id,
            )
        except ToolRejected as exc:
            outcome = ToolOutcome(ok=False, error=str(exc), error_class=type(exc).__name__)
        else:
            if event.data.tool == "remember":
                ctx.save(key, book)
            outcome = ToolOutcome(ok=True, output=output)
        return [tool_result(event, outcome, SOURCE)]

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        ctx.save(
            ctx.key("memturn", event.request_id),
            _PendingTurn(text=event.data.text, user=event.data.user),
            _PENDING_TTL_S,
        )
        return []

    async def on_agent_response(self, event: AgentResponse, ctx: Context) -> list[Envelope[Any]]:
        pending = await ctx.load(ctx.key("memturn", event.request_id), _PendingTurn)
        key = ctx.key("summary", event.tenant, event.conversation_id)
        summary = await ctx.load(key, ConversationSummary) or ConversationSummary(
            conversation_id=event.conversation_id
        )
        summary.update(
            pending.text if pending else "",
            event.data.text,
            request_id=event.request_id,
            now=ctx.now(),
        )
        ctx.save(key, summary)
        return []

    async def on_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        if not isinstance(event, MemoryCall):
            return []
        outcome = ToolOutcome(
            ok=False, error=f"memory failed: {error}", error_class=type(error).__name__
        )
        return [tool_result(event, outcome, SOURCE)]


async def rebuild(bus: Bus, store: StateStore, catalog: Catalog, namespace: str) -> dict[str, int]:
    """Recompute long-term memory and summaries by replaying the retained topics.

    Reads ``user_request``, ``memory_call`` and ``agent_response`` from the beginning, applies
    them in offset order per partition (a conversation's events share a partition, so its
    order is kept), and overwrites the stored memory of every scope and conversation seen.
    """
    turns: dict[str, _PendingTurn] = {}
    books: dict[str, MemoryBook] = {}
    summaries: dict[str, ConversationSummary] = {}
    counts = {"user_request": 0, "memory_call": 0, "agent_response": 0, "skipped": 0}
    streams = {
        t: await bus.read(catalog.name(t))
        for t in (Topic.USER_REQUEST, Topic.MEMORY_CALL, Topic.AGENT_RESPONSE)
    }
    for record in streams[Topic.USER_REQUEST]:
        if landed_late(record):  # answered 503 by the ingress: never a turn
            continue
        try:
            event = decode(record.value)
        except SchemaError:
            counts["skipped"] += 1
            continue
        if isinstance(event, UserRequest):
            turns[event.request_id] = _PendingTurn(text=event.data.text, user=event.data.user)
            counts["user_request"] += 1
    seen: set[str] = set()
    for record in sorted(streams[Topic.MEMORY_CALL], key=lambda r: (r.partition, r.offset)):
        try:
            event = decode(record.value)
        except SchemaError:
            counts["skipped"] += 1
            continue
        if not isinstance(event, MemoryCall) or event.id in seen or event.data.tool != "remember":
            continue
        seen.add(event.id)
        scope = memory_scope(event.tenant, event.data.user)
        book = books.setdefault(scope, MemoryBook(tenant=event.tenant, user=event.data.user))
        try:
            apply_memory_call(
                book,
                "remember",
                event.data.arguments,
                now=event.time,
                request_id=event.request_id,
            )
        except ToolRejected:
            continue
        counts["memory_call"] += 1
    for record in sorted(streams[Topic.AGENT_RESPONSE], key=lambda r: (r.partition, r.offset)):
        try:
            event = decode(record.value)
        except SchemaError:
            counts["skipped"] += 1
            continue
        if not isinstance(event, AgentResponse) or event.id in seen:
            continue
        seen.add(event.id)
        key = f"{event.tenant}/{event.conversation_id}"
        summary = summaries.setdefault(
            key, ConversationSummary(conversation_id=event.conversation_id)
        )
        turn = turns.get(event.request_id)
        summary.update(
            turn.text if turn else "",
            event.data.text,
            request_id=event.request_id,
            now=event.time,
        )
        counts["agent_response"] += 1
    from agentstream.handlers.stores.base import Put

    ops: list[Any] = [
        Put(f"{namespace}:memory:{scope}", book.model_dump_json().encode())
        for scope, book in books.items()
    ]
    ops += [
        Put(f"{namespace}:summary:{key.replace('/', ':', 1)}", s.model_dump_json().encode())
        for key, s in summaries.items()
    ]
    if ops:
        await store.commit(expect={}, ops=ops)
    counts["scopes"] = len(books)
    counts["conversations"] = len(summaries)
    return counts
