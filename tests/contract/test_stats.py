"""Live stats, on both buses: the stats worker counts what the pipeline did, per tenant, per
tool and per model, and emits each window's partials once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from agentstream.schemas import (
    AgentStats,
    AgentStatsData,
    SchemaError,
    UserRequest,
    UserRequestData,
    decode,
    merge_stats,
    stats_key,
)
from agentstream.settings import StatsSettings
from agentstream.topics import OutgoingRecord, Topic

from tests.contract.conftest import StackMaker
from tests.pipeline_harness import Stack, publish_event, running, wait_for

WINDOW_S = 2
GRACE_S = 1.0


@pytest.fixture
async def stack(make_stack_for: StackMaker) -> Stack:
    return await make_stack_for(stats=StatsSettings(window_s=WINDOW_S, grace_s=GRACE_S))


def _request(text: str, rid: str, conv: str, tenant: str) -> UserRequest:
    return UserRequest(
        source="test",
        request_id=rid,
        conversation_id=conv,
        tenant=tenant,
        data=UserRequestData(text=text),
    )


async def _stats(stack: Stack) -> dict[str, AgentStats]:
    """The ``agent_stats`` events by id (copies with one id must be the same event)."""
    out: dict[str, AgentStats] = {}
    for record in await stack.read(stack.catalog.name(Topic.AGENT_STATS)):
        try:
            event = decode(record.value)
        except SchemaError:
            continue
        assert isinstance(event, AgentStats)
        assert record.key == event.conversation_id.encode()
        if event.id in out:
            assert out[event.id].data == event.data, "one id, two different events"
        out[event.id] = event
    return out


def _rows(events: dict[str, AgentStats]) -> dict[tuple[str, str], AgentStatsData]:
    """Every (dimension, value) merged over its partials and windows."""
    parts: dict[tuple[str, str], list[AgentStatsData]] = {}
    for event in events.values():
        parts.setdefault((event.data.dimension, event.data.value), []).append(event.data)
    return {row: merge_stats(p) for row, p in parts.items()}


def _totals(rows: dict[tuple[str, str], AgentStatsData]) -> dict[tuple[str, str], Any]:
    return {
        row: (d.counts.completed, d.counts.rejected, d.counts.tool_ok, d.counts.tool_error)
        for row, d in rows.items()
    }


async def test_stats_count_requests_tools_and_models_once_per_window(stack: Stack) -> None:
    request_topic = stack.catalog.name(Topic.USER_REQUEST)
    async with running(stack, ["agent", "tool", "memory", "stats"]):
        for request in (
            _request("What is 6 * 7?", "acme-1", "acme-c1", "acme"),
            _request("What is 12 * 7?", "acme-2", "acme-c2", "acme"),
            _request("Hello there", "globex-1", "globex-c1", "globex"),
        ):
            await publish_event(stack, request)
        # Wrong schema, but with ids: the router answers it `rejected`.
        await stack.bus.publish(
            OutgoingRecord(
                request_topic,
                b'{"type": "agentstream.user_request.v1", "id": "bad-x", "tenant": "globex", '
                b'"request_id": "globex-bad", "conversation_id": "globex-c2", "source": "up", '
                b'"time": "2026-11-24T10:00:00Z", "data": {"text": 42}}',
                b"globex-c2",
            )
        )
        want = {
            ("tenant", "acme"): (2, 0, 2, 0),
            ("tenant", "globex"): (1, 1, 0, 0),
            ("tool", "calculator"): (0, 0, 2, 0),
            ("model", "offline"): (3, 0, 0, 0),
            ("agent", "assistant"): (3, 0, 0, 0),
        }

        async def counted() -> bool:
            return _totals(_rows(await _stats(stack))) == want

        await wait_for(counted, timeout_s=60, interval_s=0.5)
        # Another window and its grace later, nothing more arrives: nothing counts twice.
        await asyncio.sleep(WINDOW_S + GRACE_S + 1)
        events = await _stats(stack)
    rows = _rows(events)
    assert _totals(rows) == want

    # Each (window, row, partitions) has one event id: every partial is emitted once.
    partials = Counter(
        (e.data.window_start, e.data.dimension, e.data.value, tuple(e.data.partitions))
        for e in events.values()
    )
    assert set(partials.values()) == {1}
    for event in events.values():
        d = event.data
        assert (d.window_end - d.window_start).total_seconds() == WINDOW_S
        assert (
            event.request_id
            == event.conversation_id
            == stats_key(d.window_start, d.dimension, d.value)
        )
        assert event.tenant == (d.value if d.dimension == "tenant" else "*")
        assert len(d.partitions) == 1
        assert d.errors == d.counts.failed + d.counts.timed_out + d.counts.tool_error

    # Latency: request to response for the requests the stats worker saw start (not the
    # one that never decoded), tool durations for the tool.
    acme, globex = rows[("tenant", "acme")], rows[("tenant", "globex")]
    assert acme.latency.count == 2
    assert globex.latency.count == 1
    assert rows[("model", "offline")].latency.count == 3
    assert rows[("tool", "calculator")].latency.count == 2
    for row in rows.values():
        lat = row.latency
        assert lat.p50_ms is not None
        assert lat.p99_ms is not None
        assert lat.max_ms is not None
        assert 0 <= lat.p50_ms <= lat.p99_ms <= lat.max_ms < 30_000
        assert sum(lat.buckets) == lat.count
    assert rows[("model", "offline")].usage.model_calls >= 3
    assert acme.usage.total_tokens > 0
