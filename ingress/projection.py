"""The ingress projection: per-request status and event log, built from the topics.

The HTTP ingress is stateless; what it answers comes from the state store, written here by
a handler that consumes ``user_request``, ``tool_call``, ``memory_call``, ``tool_result``,
``agent_response`` and the input topic ``agent.<name>`` of every declared agent in the
consumer group :data:`PROJECTION_GROUP` (replicas of the ingress split the partitions). So
any replica answers any ``GET`` or stream, and requests that upstream systems publish
straight to Kafka show up like the ingress's own.

Tool results addressed to an agent travel on its input topic (ADR 23), and so do the tasks
that show how a request moved between agents: a ``handoff`` task becomes a ``handoff``
entry (``from_agent``, ``to_agent``, ``reason``), a ``subrun`` task (an agent called as a
tool) a ``subrun`` entry (``caller``, ``callee``, the ``call_id`` its answer comes back
under as a ``tool_result``); turns add nothing the ``user_request`` did not say.

Store layout (``{ns}`` is the deployment's namespace, :attr:`Settings.namespace`):

- ``{ns}:ingress:request:{request_id}``: the :class:`RequestRecord`, versioned state, so the
  ingress's first write (``accepted``, right after its publish) and the projection's updates
  never overwrite each other (a conflicting commit is refused and the event runs again).
- ``{ns}:ingress:log:{request_id}``: append-only list of :class:`LogEntry` (tool calls, tool
  results, handoffs, sub-runs, the final response); an entry's index is its SSE ``id``.
- ``{ns}:ingress:conversation:{tenant}:{conversation_id}``: sorted index of request ids by
  request time (the turns of a conversation).
- ``{ns}:ingress:idempotency:{tenant}:{sha256(key)}``: the ingress's ``Idempotency-Key``
  claims (written by the ingress only, with a TTL), and ``...:refused`` beside it, how many
  posts with the key were refused (503), which gives the next post new ids.

Events of one request come from several topics, and a consumer may fetch a response in the
same batch as (and before) the calls that preceded it. The log must end with the response
(the SSE stream closes on it), so the response entry is held in the record until the calls
it accounts for (``tool_calls``, a sub-run being its caller's call) and its ``handoffs``,
and for a completed run the calls' results, are logged; the
ingress releases it anyway after a quiet period (:meth:`RequestRepository.release_held`), so
a response whose progress never comes still ends the stream.

The log append is not part of the runtime's atomic commit (the store has no list op there),
so a crash between the append and the commit can append an entry twice: the handler skips
an entry already at the log's tail, and readers drop entries whose ``event_id`` they have
seen (:func:`unique_entries`). The terminal status is set only from ``agent_response``, and
a terminal record never changes again.

A ``user_request`` appended after its accept-by deadline (the ingress answered 503,
:mod:`agentstream.topics.deadline`) runs no handler in any group; here it is recorded as
``refused``, with one terminal ``refused`` log entry, unless the ingress did so already.

The record, the log entries and the keys are defined in :mod:`agentstream.ingress.records`
(re-exported here).

The ingress writes the first record of every request it accepts, with its conversation
index, before answering 202 (:meth:`agentstream.ingress.requests.RequestRepository.accept`). When
the projection in the same process then consumes that very ``user_request``, there is nothing
left to write: :class:`RecentlyRecorded` tells it so, and it skips the store read too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.ingress.records import (
    REFUSED_MESSAGE,
    EntryKind,
    LogEntry,
    ProjectionKeys,
    RecentlyRecorded,
    RequestRecord,
    RequestStatus,
    refusal_entry,
    unique_entries,
)
from agentstream.schemas import (
    AgentResponse,
    AgentTask,
    Envelope,
    MemoryCall,
    ToolCall,
    ToolResult,
    UserRequest,
)
from agentstream.topics import Inbox, Topic

__all__ = [
    "PROJECTION_GROUP",
    "REFUSED_MESSAGE",
    "EntryKind",
    "LogEntry",
    "Projection",
    "ProjectionKeys",
    "RecentlyRecorded",
    "RequestRecord",
    "RequestStatus",
    "refusal_entry",
    "unique_entries",
]

log = logging.getLogger(__name__)

#: Consumer group of the projection (the runtime prefixes it with the topic prefix).
PROJECTION_GROUP = "ingress-projection"

_DEFAULT_TTL_S = 7 * 24 * 3600
_TAIL = 16


class Projection:
    """The handlers of :data:`PROJECTION_GROUP`; ``ttl_s`` bounds how long records live;
    ``recorded``: the requests this process's ingress recorded itself (module docstring);
    ``agents``: the declared agents, whose input topics are read too."""

    def __init__(
        self,
        namespace: str,
        *,
        ttl_s: int = _DEFAULT_TTL_S,
        recorded: RecentlyRecorded | None = None,
        agents: Sequence[str] = (),
    ) -> None:
        self.keys = ProjectionKeys(namespace)
        self.ttl_s = ttl_s
        self.recorded = recorded
        self.agents = tuple(agents)

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.USER_REQUEST,
                self.on_user_request,
                "projection.user_request",
                on_refused=self.on_refused_request,
            ),
            Route(Topic.TOOL_CALL, self.on_tool_call, "projection.tool_call"),
            Route(Topic.MEMORY_CALL, self.on_memory_call, "projection.memory_call"),
            Route(Topic.TOOL_RESULT, self.on_tool_result, "projection.tool_result"),
            Route(Topic.AGENT_RESPONSE, self.on_agent_response, "projection.agent_response"),
            *(
                Route(Inbox(agent), self.on_inbox, f"projection.agent.{agent}")
                for agent in self.agents
            ),
        ]

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        if self.recorded is not None and self.recorded.take(event.request_id):
            # Recorded by this process's ingress, text and index included: the read below
            # would find it complete and lead to no write.
            return []
        key = self.keys.request(event.request_id)
        record = await ctx.load(key, RequestRecord)
        if record is None:
            record = RequestRecord.from_request(event)
        elif record.text is None:
            # Progress of this request was projected before its request (a replay, or an
            # upstream producer's odd ordering): fill in what only the request carries.
            fresh = RequestRecord.from_request(event)
            record = record.model_copy(
                update={
                    "event_id": fresh.event_id,
                    "source": fresh.source,
                    "text": fresh.text,
                    "user": fresh.user,
                    "model": fresh.model,
                    "created_at": fresh.created_at,
                }
            )
        else:
            record = None
        if record is not None:
            ctx.save(key, record, self.ttl_s)
        ctx.index_add(
            self.keys.conversation(event.tenant, event.conversation_id),
            event.request_id,
            event.time.timestamp(),
        )
        return []

    async def on_refused_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        """A ``user_request`` that landed after its accept-by deadline: the ingress answered
        503 and no group runs it; record it as refused (the ingress may have already)."""
        key = self.keys.request(event.request_id)
        record = await ctx.load(key, RequestRecord)
        if record is None:
            ctx.save(key, RequestRecord.refused(event), self.ttl_s)
        elif record.status != "refused":
            log.warning(
                "request %s landed after its deadline but is recorded as %s; left as is",
                event.request_id,
                record.status,
                extra={"request_id": event.request_id},
            )
            return []
        await self._append(event.request_id, refusal_entry(event), ctx)
        return []

    async def on_tool_call(self, event: ToolCall, ctx: Context) -> list[Envelope[Any]]:
        return await self._progress(event, self._entry(event, "tool_call"), ctx)

    async def on_memory_call(self, event: MemoryCall, ctx: Context) -> list[Envelope[Any]]:
        return await self._progress(event, self._entry(event, "memory_call"), ctx)

    async def on_tool_result(self, event: ToolResult, ctx: Context) -> list[Envelope[Any]]:
        return await self._progress(event, self._entry(event, "tool_result"), ctx)

    async def on_inbox(self, event: Envelope[Any], ctx: Context) -> list[Envelope[Any]]:
        """An event of an agent's input topic: a tool result as on ``tool_result``, a
        handoff or a sub-run as its own entry; a turn adds nothing."""
        if isinstance(event, ToolResult):
            return await self.on_tool_result(event, ctx)
        if not isinstance(event, AgentTask):
            log.warning("%s on an agent's input topic: not projected", event.type)
            return []
        d = event.data
        if d.kind == "handoff":
            data: dict[str, Any] = {
                "from_agent": d.from_agent,
                "to_agent": d.agent,
                "reason": d.reason,
            }
            return await self._progress(event, self._note(event, "handoff", data), ctx)
        if d.kind == "subrun" and d.parent is not None:
            data = {
                "call_id": d.parent.call_id,
                "step": d.parent.step,
                "tool": d.parent.tool,
                "caller": d.parent.agent,
                "callee": d.agent,
                "run_id": d.run_id,
                "input": d.request.text,
            }
            return await self._progress(event, self._note(event, "subrun", data), ctx)
        return []

    async def on_agent_response(self, event: AgentResponse, ctx: Context) -> list[Envelope[Any]]:
        key = self.keys.request(event.request_id)
        record = await ctx.load(key, RequestRecord)
        if record is not None and record.response_event_id not in (None, event.id):
            log.warning(
                "second terminal response %s for request %s ignored (first: %s)",
                event.id,
                event.request_id,
                record.response_event_id,
                extra={"request_id": event.request_id},
            )
            return []
        base = record or RequestRecord.placeholder(event)
        if base.response_logged:
            return []
        updated = base.model_copy(
            update={
                "status": event.data.status,
                "response": event.data,
                "response_event_id": event.id,
                "held": self._entry(event, "response"),
                "updated_at": ctx.now(),
            }
        )
        ctx.save(key, await self._release(updated, ctx), self.ttl_s)
        return []

    async def _progress(
        self, event: Envelope[Any], entry: LogEntry, ctx: Context
    ) -> list[Envelope[Any]]:
        """Log ``entry``, a call (a sub-run being one), a result or a handoff of
        ``event``'s request, keeping results after their calls (module docstring)."""
        key = self.keys.request(event.request_id)
        record = await ctx.load(key, RequestRecord) or RequestRecord.placeholder(event)
        if record.response_logged:
            # Later than the response (a result that came after the deadline): the stream
            # already ended with the response, so it is not logged.
            return []
        kind = entry.kind
        call_id = str(entry.data.get("call_id"))
        status = record.status if record.terminal else "running"
        if kind == "tool_result" and call_id not in record.calls_seen:
            # Fetched before its call (another topic): streamed right after the call.
            held = [*record.held_results, entry]
            updated = record.model_copy(
                update={"held_results": held, "status": status, "updated_at": ctx.now()}
            )
            ctx.save(key, updated, self.ttl_s)
            return []
        # Counted even when the entry was already at the tail: this handler runs again only
        # when its previous run's commit did not land, so the count never included it.
        await self._append(event.request_id, entry, ctx)
        if kind == "tool_result":
            counts: dict[str, Any] = {"results_logged": record.results_logged + 1}
        elif kind == "handoff":
            counts = {"handoffs_logged": record.handoffs_logged + 1}
        else:
            follow = [r for r in record.held_results if r.data.get("call_id") == call_id]
            for result in follow:
                await self._append(event.request_id, result, ctx)
            counts = {
                "calls_logged": record.calls_logged + 1,
                "calls_seen": [*record.calls_seen, call_id],
                "results_logged": record.results_logged + len(follow),
                "held_results": [r for r in record.held_results if r not in follow],
            }
        updated = record.model_copy(update={**counts, "status": status, "updated_at": ctx.now()})
        ctx.save(key, await self._release(updated, ctx), self.ttl_s)
        return []

    async def _release(self, record: RequestRecord, ctx: Context) -> RequestRecord:
        """Append the held response once the progress it accounts for is logged.

        Events of one request come from several topics; a consumer that fetched them in
        one batch may see the response before the calls that preceded it. The log (whose
        indexes are the SSE ids) must end with the response, so it waits for them."""
        if record.held is None or not record.response_ready:
            return record
        await self._append(record.request_id, record.held, ctx)
        return record.model_copy(update={"held": None, "response_logged": True})

    @staticmethod
    def _entry(event: Envelope[Any], kind: EntryKind) -> LogEntry:
        return LogEntry(
            event_id=event.id, kind=kind, time=event.time, data=event.data.model_dump(mode="json")
        )

    @staticmethod
    def _note(event: AgentTask, kind: EntryKind, data: dict[str, Any]) -> LogEntry:
        return LogEntry(event_id=event.id, kind=kind, time=event.time, data=data)

    async def _append(self, request_id: str, entry: LogEntry, ctx: Context) -> None:
        log_key = self.keys.log(request_id)
        for item in await ctx.store.list_range(log_key, -_TAIL, -1):
            if LogEntry.model_validate_json(item).event_id == entry.event_id:
                return
        await ctx.store.append(log_key, entry.model_dump_json().encode(), self.ttl_s)
