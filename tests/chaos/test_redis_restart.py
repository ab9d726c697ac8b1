"""10. Redis restarted under load (append-only file, so it comes back with its data).

The state store goes away for about a second (``stop()``: SIGTERM, Redis writes its
append-only file and exits; then ``start()`` on the same port and dir, which is what
``restart()`` does, with the outage a real restart has between the two) while 200 requests
are in flight. Store calls fail as ``RetryableError`` meanwhile; every request must still
get exactly one distinct answer, none lost, none conflicting.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.services import RedisFactory
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

OUTAGE_S = 1.0


async def test_redis_restart_under_load(
    kafka_bootstrap: str,
    private_redis: RedisFactory,
    cluster: ClusterFactory,
    record_result: RecordResult,
) -> None:
    redis = private_redis(appendonly=True)
    c = await cluster(kafka_bootstrap, redis.url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.2")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns)
    await c.wait_answered(turns, 0.25)
    fault = timeline.fault(f"Redis stopped, started again after {OUTAGE_S:g} s")
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(redis.start)
    timeline.end(fault)
    responses = await c.collect(turns, timeout_s=45)
    report = await verify(c, c.catalog, turns, responses=responses)
    stalled = sum(
        1
        for name in c.procs
        for entry in c.log_entries(name)
        if "could not be settled" in str(entry.get("message", ""))
    )
    record_result("redis-restart", report, timeline, {"partition_stalls_logged": stalled})
    assert report.ok, report.describe() + c.tails()
    # The runtime waits a store outage out; it never gives up on an event and leaves its
    # partition stuck until the next rebalance.
    assert stalled == 0, c.tails()
