"""The stats worker: per-window counts, latency percentiles, errors and cost per tenant, per
tool, per model and per agent, published to ``agent_stats`` for dashboards
(docs/adr/0011-live-stats.md).

Each ``agent_response`` and tool result becomes a *fact*. Tool results addressed to an agent
(``reply_to``) travel on that agent's input topic ``agent.<name>`` (ADR 23), so the worker
reads every declared agent's input topic too, counting its tool results and passing over
its tasks; results with no addressee stay on ``tool_result``. A fact is filed in the state
store under its partition and tumbling window: a member of the index
``stats:<partition>:facts:<window>``. Index additions carry no version check, so the many
lanes of one partition never conflict on a shared aggregate, and each commits with its
event's dedup mark: a fact counts once.
``user_request`` gives a request's start (``stats:start:<id>``); when the response comes
first, ``stats:answered:<id>`` says where its fact went, to add the latency afterwards.

:class:`WindowCloser` submits one job per due (partition, window). The job *seals* the window
first, on its own commit (``stats:<partition>:sealed``, which every fact handler reads, so a
handler that read the old seal is refused and runs again), then reads the now complete
facts and returns one ``agent_stats`` partial per dimension value, removing the facts with
its mark: emitted once, and a rerun emits the same ids. A fact whose window is sealed counts
*late* in the window open when it is processed. Consumers add partials up with
:func:`schemas.merge_stats`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.stats.closer import WindowCloser
from agentstream.handlers.stats.windows import (
    Row,
    StatsFact,
    WindowKeys,
    aggregate,
    latency_ms,
    member_of,
)
from agentstream.handlers.stores.base import Put, StateStore
from agentstream.schemas import (
    ALL_TENANTS,
    AgentResponse,
    AgentStats,
    AgentStatsData,
    AgentTask,
    Envelope,
    LatencyStats,
    StatsCounts,
    StatsDimension,
    ToolResult,
    UserRequest,
    derive_id,
    stats_key,
)
from agentstream.topics import Inbox, Topic
from pydantic import BaseModel

__all__ = ["StatsConfig", "StatsHandlers", "WindowCloser"]

log = logging.getLogger(__name__)

SOURCE = "stats-worker"
#: Facts read per (partition, window); far above what one partition handles in a window.
_MAX_FACTS = 1_000_000


@dataclass(frozen=True)
class StatsConfig:
    window_s: int = 60
    grace_s: float = 10.0
    #: Who emits (``instances`` of the events): host and process, for operators.
    instance: str = SOURCE
    #: How long a request's start time waits for the response.
    start_ttl_s: int = 24 * 3600

    def window_of(self, epoch_s: float) -> int:
        """The start (epoch seconds) of the window holding ``epoch_s``."""
        return math.floor(epoch_s / self.window_s) * self.window_s


class _Start(BaseModel):
    at: datetime


class _Answered(BaseModel):
    """A response counted before its request was seen (the topics are read side by side, so
    a fast answer can come first): where its fact is, to add the latency afterwards."""

    at: datetime
    partition: int
    window: int
    member: str


class _Sealed(BaseModel):
    #: Epoch seconds: every window starting before this is closed.
    until: int


class StatsHandlers:
    """The routes of the stats worker, and the closing of one window (see the module doc)."""

    def __init__(self, config: StatsConfig, agents: Sequence[str] = ()) -> None:
        self.config = config
        #: The declared agents, whose input topics carry the tool results they asked for.
        self.agents = tuple(agents)

    def routes(self) -> list[Route]:
        return [
            Route(Topic.USER_REQUEST, self.on_user_request, "stats.user_request"),
            Route(Topic.AGENT_RESPONSE, self.on_agent_response, "stats.agent_response"),
            Route(Topic.TOOL_RESULT, self.on_tool_result, "stats.tool_result"),
            *(Route(Inbox(agent), self.on_inbox, f"stats.agent.{agent}") for agent in self.agents),
        ]

    # -- facts --------------------------------------------------------------------------

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        answered_key = ctx.key("stats", "answered", event.request_id)
        answered = await ctx.load(answered_key, _Answered)
        if answered is None:
            start = _Start(at=event.time)
            ctx.save(ctx.key("stats", "start", event.request_id), start, self.config.start_ttl_s)
            return []
        ctx.delete(answered_key)
        keys = WindowKeys(ctx.namespace, answered.partition)
        sealed = await ctx.load(keys.sealed, _Sealed)
        if sealed is not None and answered.window < sealed.until:
            return []  # emitted already, without this latency
        fact = StatsFact.model_validate_json(answered.member).model_copy(
            update={"latency_ms": latency_ms(event.time, answered.at)}
        )
        ctx.index_remove(keys.facts(answered.window), answered.member)
        ctx.index_add(keys.facts(answered.window), member_of(fact), answered.at.timestamp())
        return []

    async def on_agent_response(self, event: AgentResponse, ctx: Context) -> list[Envelope[Any]]:
        start_key = ctx.key("stats", "start", event.request_id)
        start = await ctx.load(start_key, _Start)
        if start is not None:
            ctx.delete(start_key)
        d = event.data
        fact = StatsFact(
            id=event.id,
            kind="request",
            tenant=event.tenant,
            status=d.status,
            model=d.model,
            agent=d.agent,
            latency_ms=None if start is None else latency_ms(start.at, event.time),
            usage=d.usage,
        )
        window, member = await self._file(fact, event.time, ctx)
        if start is None:
            answered = _Answered(
                at=event.time, partition=ctx.origin.partition, window=window, member=member
            )
            ctx.save(
                ctx.key("stats", "answered", event.request_id), answered, self.config.start_ttl_s
            )
        return []

    async def on_tool_result(self, event: ToolResult, ctx: Context) -> list[Envelope[Any]]:
        d = event.data
        fact = StatsFact(
            id=event.id,
            kind="tool",
            tenant=event.tenant,
            tool=d.tool,
            ok=d.ok,
            latency_ms=None if d.duration_ms is None else round(d.duration_ms, 3),
        )
        await self._file(fact, event.time, ctx)
        return []

    async def on_inbox(self, event: Envelope[Any], ctx: Context) -> list[Envelope[Any]]:
        """An event of an agent's input topic: its tool results count, its tasks (turns,
        handoffs, sub-runs) do not (the response of the request counts instead)."""
        if isinstance(event, ToolResult):
            return await self.on_tool_result(event, ctx)
        if not isinstance(event, AgentTask):
            log.warning("%s on an agent's input topic: not counted", event.type)
        return []

    async def _file(self, fact: StatsFact, at: datetime, ctx: Context) -> tuple[int, str]:
        """Add ``fact`` to the window of ``at`` (never later than now), or as late to the
        window open now when that one is sealed. Returns the window and the member."""
        keys = WindowKeys(ctx.namespace, ctx.origin.partition)
        now = ctx.now().timestamp()
        sealed = await ctx.load(keys.sealed, _Sealed)
        until = sealed.until if sealed else 0
        w = self.config.window_s
        start = self.config.window_of(min(at.timestamp(), now))
        if start < until:
            fact = fact.model_copy(update={"late": True})
            start = max(self.config.window_of(now), -(-until // w) * w)
        member = member_of(fact)
        ctx.index_add(keys.facts(start), member, at.timestamp())
        ctx.index_add(keys.windows, str(start), start + w + self.config.grace_s)
        return start, member

    # -- closing ------------------------------------------------------------------------

    async def close(self, partition: int, start: int, ctx: Context) -> list[Envelope[Any]]:
        """Seal the window ``start`` of ``partition`` and return its ``agent_stats`` events.

        Runs as a job (its mark makes it happen once); the seal is committed on its own,
        before the facts are read, so no fact can be added after the read."""
        keys = WindowKeys(ctx.namespace, partition)
        end = start + self.config.window_s
        await _seal(ctx.store, keys.sealed, end)
        members = await ctx.store.index_range(keys.facts(start), limit=_MAX_FACTS)
        if len(members) >= _MAX_FACTS:
            log.warning("window %d of partition %d has too many facts; some stay", start, partition)
        facts = [StatsFact.model_validate_json(member) for member, _ in members]
        for member, _ in members:
            ctx.index_remove(keys.facts(start), member)
        ctx.index_remove(keys.windows, str(start))
        rows = aggregate(facts)
        return [
            self._event(partition, start, end, dimension, value, rows[(dimension, value)])
            for dimension, value in sorted(rows)
        ]

    def _event(
        self,
        partition: int,
        start: int,
        end: int,
        dimension: StatsDimension,
        value: str,
        row: Row,
    ) -> AgentStats:
        window_start = datetime.fromtimestamp(start, UTC)
        key = stats_key(window_start, dimension, value)
        counts = StatsCounts.model_validate(row.counts)
        return AgentStats(
            id=derive_id(f"agent_stats/{partition}/{start}", f"{dimension}/{value}"),
            source=SOURCE,
            request_id=key,
            conversation_id=key,
            tenant=value if dimension == "tenant" else ALL_TENANTS,
            data=AgentStatsData(
                window_start=window_start,
                window_end=datetime.fromtimestamp(end, UTC),
                dimension=dimension,
                value=value,
                counts=counts,
                errors=counts.failed + counts.timed_out + counts.tool_error,
                latency=LatencyStats.of(row.samples),
                usage=row.usage,
                instances=[self.config.instance],
                partitions=[partition],
            ),
        )


async def _seal(store: StateStore, key: str, until: int) -> None:
    """Move the seal at ``key`` to ``until`` unless it is there already. Only closing jobs
    of the partition write it, one after another in its lane, so the loop ends at once."""
    while True:
        current = await store.get(key)
        if current.value is not None and _Sealed.model_validate_json(current.value).until >= until:
            return
        value = _Sealed(until=until).model_dump_json().encode()
        if await store.commit(expect={key: current.version}, ops=[Put(key, value)]):
            return
