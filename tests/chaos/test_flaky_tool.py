"""8. A tool that fails transiently k times per call, beside 200 requests.

``flaky`` (see :mod:`tests.chaos.chaos_tools`) fails ``k`` times per call id, with k from 1
to 4, then works. Its attempts are counted in files shared by the two tool worker
processes, so a retry that comes back through the retry topic to either process is seen.
Each call is retried with backoff (in place, then through the retry topic), the tool runs
exactly k + 1 times, succeeds once, and exactly one result is published for the call.

Calls go one after another: the tool's circuit breaker opens after 5 failures in a row,
which overlapping calls would reach, and that is another scenario.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from pathlib import Path

import pytest
from agentstream.schemas import ToolCall, ToolCallData, ToolResult, decode
from agentstream.topics import Topic

from tests.chaos import chaos_tools
from tests.chaos.cluster import Cluster
from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.pipeline_harness import wait_for
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

FAILURES = (1, 2, 3, 4, 3, 2, 1, 4)


async def test_a_tool_failing_transiently_is_retried_and_answered_once(
    kafka_bootstrap: str,
    redis_url: str,
    cluster: ClusterFactory,
    record_result: RecordResult,
    tmp_path: Path,
) -> None:
    state = tmp_path / "tools"
    state.mkdir()
    c = await cluster(
        kafka_bootstrap,
        redis_url,
        AGENTSTREAM_TOOLS_MODULE="tests.chaos.chaos_tools",
        CHAOS_TOOLS_DIR=str(state),
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.1",
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("tool-1", "tool")
    c.spawn("aux-2", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    run = uuid.uuid4().hex[:6]
    timeline = Timeline()
    workload = asyncio.create_task(c.publish(turns))
    keys = []
    for i, k in enumerate(FAILURES):
        key = f"flaky-{run}-{i}"
        keys.append((key, k))
        call = ToolCall(
            source="chaos",
            request_id=f"flaky-request-{run}-{i}",
            conversation_id=f"flaky-conv-{run}-{i}",
            data=ToolCallData(
                call_id=key, step=1, tool="flaky", arguments={"key": key, "failures": k}
            ),
        )
        await c.publish_events([call])
        await wait_for(functools.partial(_results, c, key), timeout_s=60, interval_s=0.3)
    await workload
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    runs = {key: chaos_tools.attempts(state, key) for key, _ in keys}
    record_result("flaky-tool", report, timeline, {"flaky_calls": len(keys), "tool_runs": runs})
    assert report.ok, report.describe() + c.tails()
    for key, k in keys:
        results = await _results(c, key)
        assert len(results) == 1, (key, results)  # one copy: nothing was redelivered
        assert results[0].data.ok, results[0].data.error
        assert results[0].data.output == {"key": key, "attempts": k + 1}
        assert chaos_tools.attempts(state, key) == k + 1, key
        assert chaos_tools.successes(state, key) == 1, key


async def _results(c: Cluster, call_id: str) -> list[ToolResult]:
    records = await c.read(c.catalog.name(Topic.TOOL_RESULT))
    return [
        e
        for r in records
        if isinstance(e := decode(r.value), ToolResult) and e.data.call_id == call_id
    ]
