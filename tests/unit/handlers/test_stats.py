"""Live stats: histogram buckets and percentiles, merging partials, and the stats handlers
(facts, late facts, sealing, closing) called directly on the in-process store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.runtime.route import Job
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stats.routes import StatsConfig, StatsHandlers, WindowCloser
from agentstream.handlers.stores.base import InProcessStore
from agentstream.schemas import (
    LATENCY_BOUNDS_MS,
    AgentResponse,
    AgentResponseData,
    AgentStats,
    AgentStatsData,
    AgentTask,
    AgentTaskData,
    Envelope,
    LatencyStats,
    ResponseStatus,
    StatsCounts,
    ToolResult,
    ToolResultData,
    Usage,
    UserRequest,
    UserRequestData,
    merge_stats,
    stats_key,
)
from agentstream.topics import Inbox, Topic

NS = "agentstream:test."
T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)  # a window start for 60 s windows


# -- histogram and merge --------------------------------------------------------------------


def test_latencies_fall_into_the_fixed_buckets() -> None:
    stats = LatencyStats.of([-3, 0.5, 1, 1.0001, 300_000, 400_000])
    assert len(stats.buckets) == len(LATENCY_BOUNDS_MS) + 1
    assert stats.bounds_ms == list(LATENCY_BOUNDS_MS)
    assert stats.buckets[0] == 3, "up to 1 ms, bound included, negatives as 0"
    assert stats.buckets[1] == 1
    assert stats.buckets[-2] == 1, "300 s is the last bound"
    assert stats.buckets[-1] == 1, "above it: the overflow bucket"
    assert stats.count == 6
    assert (stats.min_ms, stats.max_ms) == (0, 400_000)
    assert stats.sum_ms == pytest.approx(0.5 + 1 + 1.0001 + 300_000 + 400_000)


def test_percentiles_interpolate_within_a_bucket() -> None:
    stats = LatencyStats.of(range(1, 101))
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms, stats.max_ms) == (50, 95, 99, 100)
    one = LatencyStats.of([42.0])
    assert one.p50_ms == one.p99_ms == one.min_ms == one.max_ms == 42.0, "never smeared"
    overflow = LatencyStats.of([500_000, 600_000])
    assert overflow.p99_ms is not None
    assert 300_000 < overflow.p99_ms <= 600_000
    empty = LatencyStats.of([])
    assert (empty.count, empty.p50_ms, empty.max_ms) == (0, None, None)


def _partial(
    samples: Sequence[float], partitions: list[int], instance: str, **counts: int
) -> AgentStatsData:
    return AgentStatsData(
        window_start=T0,
        window_end=T0 + timedelta(seconds=60),
        dimension="tenant",
        value="acme",
        counts=StatsCounts(**counts),
        errors=counts.get("failed", 0),
        latency=LatencyStats.of(samples),
        usage=Usage(total_tokens=10, cost_usd=0.25, model_calls=1),
        instances=[instance],
        partitions=partitions,
    )


def test_merge_adds_partials_up_as_one_instance_would_have_counted() -> None:
    a = _partial([1, 5, 90, 1200], [0], "a/1", completed=3, failed=1)
    b = _partial([7, 2500], [3, 1], "b/2", completed=2, late=1)
    later = _partial([10], [0], "a/1", completed=1).model_copy(
        update={
            "window_start": T0 + timedelta(seconds=60),
            "window_end": T0 + timedelta(seconds=120),
        }
    )
    merged = merge_stats([a, b])
    assert merged.counts == StatsCounts(completed=5, failed=1, late=1)
    assert merged.errors == 1
    assert merged.latency == LatencyStats.of([1, 5, 90, 1200, 7, 2500])
    assert merged.usage == Usage(total_tokens=20, cost_usd=0.5, model_calls=2)
    assert merged.partitions == [0, 1, 3]
    assert merged.instances == ["a/1", "b/2"]
    # Across windows too: the window spans them, partition 0 may appear once per window.
    span = merge_stats([a, b, later])
    assert (span.window_start, span.window_end) == (T0, later.window_end)
    assert span.counts.completed == 6


def test_merge_refuses_what_does_not_add_up() -> None:
    a = _partial([1], [0], "a/1", completed=1)
    with pytest.raises(ValueError, match="nothing"):
        merge_stats([])
    with pytest.raises(ValueError, match="deduplicate"):
        merge_stats([a, a])
    with pytest.raises(ValueError, match="different rows"):
        merge_stats([a, a.model_copy(update={"value": "globex", "partitions": [1]})])
    odd = a.latency.model_copy(update={"bounds_ms": [1.0], "buckets": [1, 0]})
    with pytest.raises(ValueError, match="bounds"):
        merge_stats([a, a.model_copy(update={"latency": odd, "partitions": [1]})])


def test_the_stats_key_names_the_row_and_fits_an_id() -> None:
    assert stats_key(T0, "tool", "calculator") == "stats:2026-03-01T10:00:00Z:tool:calculator"
    long = stats_key(T0, "model", "m" * 200)
    assert len(long) <= 200
    assert long.startswith("stats:2026-03-01T10:00:00Z:model:#")
    assert long != stats_key(T0, "model", "m" * 199 + "n")


# -- handlers -------------------------------------------------------------------------------


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


Produce = Callable[[Context], Awaitable[Sequence[Envelope[Any]]]]


async def settle(
    store: InProcessStore, clock: Clock, produce: Produce, partition: int = 0
) -> list[Envelope[Any]] | None:
    """Run ``produce`` and commit like the runtime does; None when the commit is refused."""
    ctx = Context(store, Origin("t", partition, 0, "g"), NS, clock)
    out = list(await produce(ctx))
    return out if await store.commit(expect=ctx.reads, ops=ctx.ops) else None


async def feed(
    store: InProcessStore,
    clock: Clock,
    handler: Callable[[Any, Context], Awaitable[Sequence[Envelope[Any]]]],
    event: Envelope[Any],
    partition: int = 0,
) -> list[Envelope[Any]] | None:
    """Handle ``event`` with ``handler`` and commit."""
    return await settle(store, clock, lambda ctx: handler(event, ctx), partition)


def request(rid: str, at: datetime, tenant: str = "acme") -> UserRequest:
    return UserRequest(
        id=f"{rid}-req",
        source="test",
        time=at,
        request_id=rid,
        conversation_id=f"c-{rid}",
        tenant=tenant,
        data=UserRequestData(text="What is 6 * 7?"),
    )


def response(
    rid: str,
    at: datetime,
    status: ResponseStatus = "completed",
    tenant: str = "acme",
    agent: str | None = None,
) -> AgentResponse:
    return AgentResponse(
        id=f"{rid}-resp",
        source="test",
        time=at,
        request_id=rid,
        conversation_id=f"c-{rid}",
        tenant=tenant,
        data=AgentResponseData(
            status=status,
            model=None if status == "rejected" else "offline",
            agent=agent,
            usage=Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, cost_usd=0.01),
        ),
    )


def result(
    rid: str, at: datetime, ok: bool = True, reply_to: str | None = None, tool: str = "calculator"
) -> ToolResult:
    return ToolResult(
        id=f"{rid}-res-{ok}",
        source="test",
        time=at,
        request_id=rid,
        conversation_id=f"c-{rid}",
        tenant="acme",
        data=ToolResultData(
            call_id="call-1",
            step=0,
            tool=tool,
            ok=ok,
            duration_ms=4.0 if ok else None,
            reply_to=reply_to,
        ),
    )


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def rows(events: Sequence[Envelope[Any]]) -> dict[tuple[str, str], AgentStatsData]:
    out: dict[tuple[str, str], AgentStatsData] = {}
    for event in events:
        assert isinstance(event, AgentStats)
        out[(event.data.dimension, event.data.value)] = event.data
    return out


async def test_a_window_counts_requests_and_tools_per_tenant_tool_and_model() -> None:
    store, clock = InProcessStore(), Clock(T0 + timedelta(seconds=30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=10, instance="host/1"))
    for rid in ("r1", "r2"):
        assert await feed(store, clock, stats.on_user_request, request(rid, T0 + seconds(1))) == []
    await feed(store, clock, stats.on_tool_result, result("r1", T0 + seconds(2)))
    await feed(store, clock, stats.on_tool_result, result("r1", T0 + seconds(2), ok=False))
    ended = T0 + seconds(2.5)
    await feed(store, clock, stats.on_agent_response, response("r1", ended))
    await feed(store, clock, stats.on_agent_response, response("r2", ended, "failed"))
    # Never saw its request start: counted, without a latency sample, and with no model.
    rejected = response("r3", ended, "rejected", tenant="globex")
    await feed(store, clock, stats.on_agent_response, rejected)

    start = int(T0.timestamp())
    # A closing job that died after its seal, before its commit: the rerun emits the same.
    died = await stats.close(0, start, Context(store, Origin("t", 0, 0, "g"), NS, clock))
    events = await settle(store, clock, lambda ctx: stats.close(0, start, ctx))
    assert events is not None
    assert [(e.id, e.data) for e in events] == [(e.id, e.data) for e in died]
    got = rows(events)
    assert set(got) == {
        ("tenant", "acme"),
        ("tenant", "globex"),
        ("model", "offline"),
        ("tool", "calculator"),
    }
    acme = got[("tenant", "acme")]
    assert acme.counts == StatsCounts(completed=1, failed=1, tool_ok=1, tool_error=1)
    assert acme.errors == 2
    assert (acme.latency.count, acme.latency.max_ms) == (2, 1500.0)
    assert acme.usage.total_tokens == 20
    assert (acme.window_start, acme.window_end) == (T0, T0 + timedelta(seconds=60))
    assert (acme.partitions, acme.instances) == ([0], ["host/1"])
    tool = got[("tool", "calculator")]
    assert tool.counts == StatsCounts(tool_ok=1, tool_error=1)
    assert (tool.latency.count, tool.latency.max_ms, tool.usage.total_tokens) == (1, 4.0, 0)
    assert got[("model", "offline")].counts == StatsCounts(completed=1, failed=1)
    globex = got[("tenant", "globex")]
    assert (globex.counts.rejected, globex.latency.count) == (1, 0)

    by_row = {(e.data.dimension, e.data.value): e for e in events}
    event = by_row[("tool", "calculator")]
    assert event.request_id == event.conversation_id == stats_key(T0, "tool", "calculator")
    assert event.tenant == "*"
    assert by_row[("tenant", "acme")].tenant == "acme"
    # The facts went with the window's commit: nothing is left to count twice.
    again = await settle(store, clock, lambda ctx: stats.close(0, start, ctx))
    assert again == []
    assert await store.index_range(f"{NS}:stats:0:facts:{start}") == []
    assert await store.index_range(f"{NS}:stats:0:windows") == []


async def test_a_fact_for_a_sealed_window_counts_late_in_the_open_one() -> None:
    store, clock = InProcessStore(), Clock(T0 + timedelta(seconds=30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=10))
    await feed(store, clock, stats.on_agent_response, response("r1", T0))
    start = int(T0.timestamp())
    # A handler read the seal before the window closed; its commit comes after: refused.
    stale = Context(store, Origin("t", 0, 0, "g"), NS, clock)
    await stats.on_agent_response(response("r2", T0 + seconds(5)), stale)
    clock.at = T0 + seconds(75)
    assert await settle(store, clock, lambda ctx: stats.close(0, start, ctx))
    assert not await store.commit(expect=stale.reads, ops=stale.ops)
    # Run again (as the runtime does), it sees the window sealed: late, in the window now.
    await feed(store, clock, stats.on_agent_response, response("r2", T0 + seconds(5)))
    # An event time in the future counts now, not in a window that would wait for it.
    await feed(store, clock, stats.on_agent_response, response("r3", T0 + timedelta(hours=5)))
    windows = await store.index_range(f"{NS}:stats:0:windows")
    assert [int(m) for m, _ in windows] == [start + 60]
    assert windows[0][1] == start + 60 + 60 + 10, "due at its end plus the grace"
    later = await settle(store, clock, lambda ctx: stats.close(0, start + 60, ctx))
    assert later is not None
    acme = rows(later)[("tenant", "acme")]
    assert acme.counts == StatsCounts(completed=2, late=1)


async def test_a_request_seen_after_its_response_still_gives_the_latency() -> None:
    store, clock = InProcessStore(), Clock(T0 + seconds(30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=10))
    # The topics are read side by side: a fast answer may be handled before its request.
    await feed(store, clock, stats.on_agent_response, response("r1", T0 + seconds(3)), 1)
    await feed(store, clock, stats.on_user_request, request("r1", T0 + seconds(1)), 1)
    # Too late for this one: its window was emitted in between, so it stays without one.
    await feed(store, clock, stats.on_agent_response, response("r2", T0 + seconds(50)), 1)
    start = int(T0.timestamp())
    clock.at = T0 + seconds(75)
    events = await settle(store, clock, lambda ctx: stats.close(1, start, ctx), 1)
    await feed(store, clock, stats.on_user_request, request("r2", T0 + seconds(40)), 1)
    assert events is not None
    acme = rows(events)[("tenant", "acme")]
    assert acme.counts.completed == 2
    assert (acme.latency.count, acme.latency.max_ms) == (1, 2000.0)
    assert await store.index_range(f"{NS}:stats:1:windows") == []
    assert (await store.get(f"{NS}:stats:answered:r2")).value is None, "cleaned up"


async def test_partitions_keep_their_windows_apart() -> None:
    store, clock = InProcessStore(), Clock(T0 + timedelta(seconds=30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=0))
    for partition, rid in ((0, "a"), (1, "b"), (1, "c")):
        await feed(store, clock, stats.on_agent_response, response(rid, T0), partition)
    start = int(T0.timestamp())
    zero = await settle(store, clock, lambda ctx: stats.close(0, start, ctx), 0)
    one = await settle(store, clock, lambda ctx: stats.close(1, start, ctx), 1)
    assert zero is not None
    assert one is not None
    assert rows(zero)[("tenant", "acme")].counts.completed == 1
    assert rows(one)[("tenant", "acme")].counts.completed == 2
    assert {e.id for e in zero}.isdisjoint(e.id for e in one)
    merged = merge_stats([rows(zero)[("tenant", "acme")], rows(one)[("tenant", "acme")]])
    assert (merged.counts.completed, merged.partitions) == (3, [0, 1])


async def test_a_window_counts_requests_per_agent_and_tools_from_the_agents_inboxes() -> None:
    """Tool results addressed to an agent come on its input topic ``agent.<name>``: the
    stats worker reads every agent's, counting results and passing over tasks."""
    store, clock = InProcessStore(), Clock(T0 + timedelta(seconds=30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=10), agents=("triage", "billing"))
    inboxes = {r.topic: r for r in stats.routes() if isinstance(r.topic, Inbox)}
    assert list(inboxes) == [Inbox("triage"), Inbox("billing")]
    assert {r.name for r in inboxes.values()} == {"stats.agent.triage", "stats.agent.billing"}
    on_billing = inboxes[Inbox("billing")].handler
    await feed(store, clock, stats.on_user_request, request("r1", T0 + seconds(1)))
    task = AgentTask(
        source="test",
        time=T0 + seconds(1.5),
        request_id="r1",
        conversation_id="c-r1",
        tenant="acme",
        data=AgentTaskData(
            agent="billing",
            kind="handoff",
            from_agent="triage",
            request=UserRequestData(text="refund INV-1"),
            requested_at=T0 + seconds(1),
        ),
    )
    assert await feed(store, clock, on_billing, task) == []
    lookup = result("r1", T0 + seconds(2), reply_to="billing", tool="lookup_invoice")
    await feed(store, clock, on_billing, lookup)
    await feed(
        store, clock, stats.on_agent_response, response("r1", T0 + seconds(3), agent="billing")
    )
    await feed(
        store, clock, stats.on_agent_response, response("r2", T0 + seconds(3), agent="triage")
    )
    await feed(store, clock, stats.on_agent_response, response("r3", T0 + seconds(3), "rejected"))

    start = int(T0.timestamp())
    events = await settle(store, clock, lambda ctx: stats.close(0, start, ctx))
    assert events is not None
    got = rows(events)
    assert {key for key in got if key[0] == "agent"} == {("agent", "billing"), ("agent", "triage")}
    billing = got[("agent", "billing")]
    assert billing.counts == StatsCounts(completed=1)
    assert (billing.latency.count, billing.latency.max_ms) == (1, 2000.0)
    assert billing.usage.total_tokens == 10
    assert got[("agent", "triage")].counts == StatsCounts(completed=1)
    assert got[("tool", "lookup_invoice")].counts == StatsCounts(tool_ok=1)
    assert got[("tenant", "acme")].counts == StatsCounts(completed=2, rejected=1, tool_ok=1)
    by_row = {(e.data.dimension, e.data.value): e for e in events}
    assert by_row[("agent", "billing")].request_id == stats_key(T0, "agent", "billing")
    assert by_row[("agent", "billing")].tenant == "*"


def test_the_stats_worker_reads_the_input_topic_of_every_declared_agent() -> None:
    from agentstream.settings import Settings
    from agentstream.workers import WORKERS

    consumed = WORKERS.get("stats").declared(Settings(app="examples.support")).consumes()
    inboxes = {t.agent for t in consumed if isinstance(t, Inbox)}
    assert inboxes == {"triage", "billing", "math", "quote"}
    assert Topic.TOOL_RESULT in consumed


# -- the closer -----------------------------------------------------------------------------


class FakeWorker:
    """What the closer uses of a Worker: its clock, store, partitions and job lanes."""

    def __init__(self, store: InProcessStore, clock: Clock) -> None:
        self.store = store
        self.now = clock
        self.submitted: list[Job] = []

    def owned_partitions(self, topic_name: str) -> set[int]:
        return {0, 1}

    def submit_job(self, job: Job) -> None:
        self.submitted.append(job)

    async def run_job(self, job: Job) -> None:
        await settle(self.store, self.now, job.run, job.partition)


async def test_the_closer_submits_each_due_window_once_and_again_when_abandoned() -> None:
    store, clock = InProcessStore(), Clock(T0 + timedelta(seconds=30))
    stats = StatsHandlers(StatsConfig(window_s=60, grace_s=10))
    await feed(store, clock, stats.on_agent_response, response("r1", T0), 1)
    worker = FakeWorker(store, clock)
    closer = WindowCloser(cast(Worker, worker), stats, NS, "agent_response", resubmit_after_s=0.2)
    assert await closer.sweep() == 0, "not due before its end plus the grace"
    clock.at = T0 + seconds(70)
    assert await closer.sweep() == 1
    [job] = worker.submitted
    start = int(T0.timestamp())
    assert (job.key, job.partition, job.mark_id) == (b"stats:1", 1, f"stats:1:{start}")
    await closer.sweep()
    assert len(worker.submitted) == 1, "submitted once while it waits in its lane"
    await asyncio.sleep(0.25)  # never started (abandoned on a rebalance, say)
    await closer.sweep()
    assert len(worker.submitted) == 2
    events = await settle(store, clock, worker.submitted[-1].run, 1)
    assert events is not None
    assert rows(events)[("tenant", "acme")].counts.completed == 1
    assert await closer.sweep() == 0, "a closed window is no longer due"
    # wait=True runs the jobs one by one (a runner without a consumer loop).
    await feed(store, clock, stats.on_agent_response, response("r2", T0), 0)
    clock.at = T0 + seconds(200)
    assert await closer.sweep([0], wait=True) == 1
    assert await closer.sweep([0]) == 0
