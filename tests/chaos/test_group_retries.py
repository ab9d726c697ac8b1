"""12. Another group's retries, beside 200 requests: nothing killed, turns stay in order.

Every group that reads ``user_request`` shares ``user_request.retry``. Here a consumer group of
its own (like the memory worker or the ingress projection, run in the test's process) fails
the third turn of every conversation once, transiently (Redis blinking, say): each of those
turns goes through ``user_request.retry``. The agent processes are still working through
their backlog on the main topic when those copies come due. They must leave them alone
(ADR 17): before, the agent group answered each third turn as soon as its copy was due, ahead
of the conversation's first two turns, without the number the first turn asked to remember.
The invariant checker finds out-of-order and wrong answers; there must be none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agentstream.handlers.runtime.addressing import RETRY_GROUP
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.schemas import Envelope, RetryableError, UserRequest, header
from agentstream.topics import Kind, Topic
from agentstream.wiring import build_store

from tests.chaos.conftest import ClusterFactory, RecordResult
from tests.chaos.invariants import verify
from tests.chaos.results import Timeline
from tests.workload import Turn, make_turns

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(240)]

CONVERSATIONS = 50
FAILING_TURN = 2  # "What is my number times 2?": it needs the first turn's memory


class FlakyGroup:
    """Handles every ``user_request``; the first attempt at each conversation's third turn
    fails with a ``RetryableError``, so that turn leaves for the retry topic at once."""

    def __init__(self, turns: list[Turn]) -> None:
        self.index = {t.request_id: t.index for t in turns}
        self.attempts: dict[str, int] = {}

    async def handle(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        n = self.attempts[event.request_id] = self.attempts.get(event.request_id, 0) + 1
        if self.index.get(event.request_id) == FAILING_TURN and n == 1:
            raise RetryableError("the store blinked")
        return []


async def test_another_groups_retries_leave_the_agent_groups_order_alone(
    kafka_bootstrap: str,
    redis_url: str,
    cluster: ClusterFactory,
    record_result: RecordResult,
) -> None:
    c = await cluster(
        kafka_bootstrap,
        redis_url,
        # A backlog that lasts: few in flight per agent process, a model that takes a moment.
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S="0.05",
        AGENTSTREAM_RUNTIME__MAX_IN_FLIGHT="2",
    )
    turns = make_turns(CONVERSATIONS)
    flaky = FlakyGroup(turns)
    config = RuntimeConfig(
        group_id=f"{c.prefix}test-flaky",
        source="flaky",
        namespace=c.settings.namespace,
        retry=RetryPolicy(in_place_attempts=1, retry_topic_delay_s=0.3),
    )
    store = build_store(c.settings)
    route = Route(Topic.USER_REQUEST, flaky.handle, "flaky.user_request")
    worker = Worker(c.bus, store, c.catalog, [route], config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.started.wait(), 30)
        c.spawn("agent-1", "router", "agent")
        c.spawn("agent-2", "router", "agent")
        c.spawn("aux-1", "tool", "memory")
        await c.ready()
        timeline = Timeline()
        await c.publish(turns)
        responses = await c.collect(turns, timeout_s=150)
    finally:
        stop.set()
        await task
        await store.close()
    report = await verify(c, c.catalog, turns, responses=responses)
    retried = [
        r
        for r in await c.read(c.catalog.name(Topic.USER_REQUEST, Kind.RETRY))
        if header(r.headers, RETRY_GROUP) == config.group_id
    ]
    record_result(
        "another-groups-retries",
        report,
        timeline,
        {"retried_by_another_group": len(retried)},
    )
    assert report.ok, report.describe() + c.tails()
    assert report.out_of_order == []
    assert report.wrong == []
    # The other group did fail every third turn once (the turns behind it were parked and
    # followed it through the retry topic: its own order held too), and handled every turn.
    index = {t.request_id: t.index for t in turns}
    went = [index[header(r.headers, "ce_requestid") or ""] for r in retried]
    assert went.count(FAILING_TURN) == CONVERSATIONS
    assert all(i >= FAILING_TURN for i in went)
    assert set(flaky.attempts) == {t.request_id for t in turns}
    assert sum(flaky.attempts.values()) == len(turns) + CONVERSATIONS
