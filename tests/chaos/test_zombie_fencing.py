"""11. ``exactly_once`` mode: aborted transactions stay invisible, a zombie is fenced.

Every worker runs with ``AGENTSTREAM_RUNTIME__DELIVERY=exactly_once``: the outputs of an
event and its input offset are committed in one Kafka transaction, by a transactional
producer per input partition whose id the next owner of the partition reuses (fencing the
previous one). Under 200 requests, one agent worker is frozen (SIGSTOP) for longer than the
session timeout, the group gives its partitions to the other agent worker, and the frozen
one is thawed (SIGCONT) right after the handover, with handlers in flight that it resumes
where they stopped. A read_committed reader must then see exactly one copy of every event
on every topic, and one answer per request.

An aborted transaction is checked directly too: a forged, conflicting answer for a request
that was answered is written in a transaction that is then aborted. A read_uncommitted
reader sees it on the log; a read_committed reader never does.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from agentstream.schemas import AgentResponse, AgentResponseData, decode, derive_id, encode
from agentstream.topics import Topic
from aiokafka import AIOKafkaProducer

from tests.chaos.cluster import Cluster
from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.workload import Turn, make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

#: user_request, tool_result and their retry topics, 4 partitions each.
AGENT_PARTITIONS = 16


async def test_a_paused_zombie_agent_is_fenced_in_exactly_once_mode(
    kafka_bootstrap: str, redis_url: str, cluster: ClusterFactory, record_result: RecordResult
) -> None:
    c = await cluster(
        kafka_bootstrap,
        redis_url,
        AGENTSTREAM_RUNTIME__DELIVERY="exactly_once",
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.5",
    )
    c.spawn("agent-1", "router", "agent")
    c.spawn("agent-2", "router", "agent")
    c.spawn("aux-1", "tool", "memory")
    await c.ready()
    turns = make_turns(50)
    timeline = Timeline()
    await c.publish(turns)
    await c.wait_answered(turns, 0.25)
    before = len(c.assignments("agent-2"))
    fault = timeline.fault("SIGSTOP agent-1 until agent-2 took its partitions, then SIGCONT")
    c.pause("agent-1")
    try:
        handover = await _handover(c, "agent-2", before, timeout_s=45)
    finally:
        c.resume("agent-1")
    timeline.end(fault)
    responses = await c.collect(turns, timeout_s=60, settle_s=3)
    forged = await _abort_a_forged_answer(c, turns[0])
    report = await verify(c, c.catalog, turns, exactly_once=True, responses=responses)
    uncommitted = await c.read(c.catalog.name(Topic.AGENT_RESPONSE), read_committed=False)
    seen_forged = any(r.value == forged for r in uncommitted)
    record_result(
        "exactly-once-zombie-fenced",
        report,
        timeline,
        {
            "handover_s": round(handover, 1),
            "committed_responses": len(responses),
            "uncommitted_responses": len(uncommitted),
            "aborted_forgery_visible_uncommitted": seen_forged,
        },
    )
    # The forgery really is on the log, and only read_committed readers are spared it.
    assert seen_forged
    assert not any(r.value == forged for r in await c.responses())
    # Nothing lost, no conflicting answer, order kept, exactly one copy of every event on
    # every topic (read_committed), and the thawed zombie was fenced.
    assert not report.violations, report.describe() + c.tails()
    assert report.duplicates == 0
    assert "fenced" in c.tail("agent-1", 1_000_000), "the zombie's transactions were refused"


async def _handover(c: Cluster, survivor: str, before: int, timeout_s: float) -> float:
    """Seconds until ``survivor`` was assigned every agent partition (after ``before``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        fresh = c.assignments(survivor)[before:]
        if any(n == AGENT_PARTITIONS for _, _, n in fresh):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{survivor} never took over the partitions{c.tails()}")


async def _abort_a_forged_answer(c: Cluster, turn: Turn) -> bytes:
    """Write a conflicting answer to ``turn`` in a transaction, then abort it."""
    forged = AgentResponse(
        id=derive_id(turn.request_id, "response"),
        source="forger",
        request_id=turn.request_id,
        conversation_id=turn.conversation_id,
        data=AgentResponseData(status="completed", text="forged: 0"),
    )
    key, value, headers = encode(forged)
    producer = AIOKafkaProducer(
        bootstrap_servers=c.bootstrap,
        transactional_id=f"{c.prefix}chaos-forger",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(
            c.catalog.name(Topic.AGENT_RESPONSE), value, key=key, headers=headers
        )
        await producer.abort_transaction()
    finally:
        await producer.stop()
    assert decode(value).request_id == turn.request_id
    return value
