"""The broker fails under load while the worker processes keep running, on a private broker.

3. SIGKILL of the broker, restarted a few seconds later on the same data dir and ports: the
   workers reconnect by themselves, nothing accepted before or after is lost.
4. SIGSTOP of the broker for longer than the clients' request timeout (5 s), then SIGCONT:
   requests time out, connections are dropped and re-made, the groups rebalance; the
   pipeline recovers without losing or doubling an answer.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.services import KafkaFactory
from tests.workload import make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

REQUEST_TIMEOUT_MS = 5000


async def test_broker_sigkill_and_restart(
    private_kafka: KafkaFactory,
    redis_url: str,
    cluster: ClusterFactory,
    record_result: RecordResult,
) -> None:
    broker = private_kafka()
    c = await cluster(broker.bootstrap, redis_url, AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.2")
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns[:100])
    await c.wait_answered(turns[:100], 0.2)
    fault = timeline.fault("broker SIGKILL, restart after 3 s")
    broker.kill()
    await asyncio.sleep(3)
    await asyncio.to_thread(broker.restart)
    timeline.end(fault)
    # Accepted after the restart: the second half of every conversation.
    await c.publish(turns[100:])
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    details = {"broker_restart_s": round((fault.end or 0) - fault.start - 3, 1)}
    record_result("broker-sigkill-restart", report, timeline, details)
    assert report.ok, report.describe() + c.tails()
    assert all(c.alive(n) for n in c.procs), "a worker process died with the broker"


async def test_broker_paused_longer_than_the_request_timeout(
    private_kafka: KafkaFactory,
    redis_url: str,
    cluster: ClusterFactory,
    record_result: RecordResult,
) -> None:
    broker = private_kafka()
    c = await cluster(
        broker.bootstrap,
        redis_url,
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.2",
        AGENTSTREAM_KAFKA__REQUEST_TIMEOUT_MS=str(REQUEST_TIMEOUT_MS),
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns)
    await c.wait_answered(turns, 0.2)
    fault = timeline.fault("broker SIGSTOP for 8 s")
    broker.pause()
    try:
        await asyncio.sleep(REQUEST_TIMEOUT_MS / 1000 + 3)
    finally:
        broker.resume()
    timeline.end(fault)
    responses = await c.collect(turns, timeout_s=120)
    report = await verify(c, c.catalog, turns, responses=responses)
    record_result("broker-sigstop-beyond-request-timeout", report, timeline)
    assert report.ok, report.describe() + c.tails()
    assert all(c.alive(n) for n in c.procs), "a worker process died while the broker hung"
