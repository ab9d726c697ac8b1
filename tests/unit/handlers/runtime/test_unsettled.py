"""A record whose processing fails around the event is processed again in place.

``Processor.process`` settles every failure of the event itself (retries, the retry topic,
dead letters). What escapes it (a publish the broker refused for a reason not known to pass,
a bug) used to leave the record in flight until a rebalance redelivered it: with no
rebalance coming, its conversation stood still and its answer never came. Found by the soak:
right after a broker freeze, a fenced broker described every topic without a leader for a
moment, the bus took that for "topic missing" and the memory worker's publishes failed for
good. Now the record is processed again, in place, with backoff: its lane (its
conversation) waits, nothing overtakes it, and the offset is committed once it is settled.

Also here: work abandoned on a revoke is counted out once (a job running then counted
itself out and was counted out again by the revoke).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Job, Route
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker
from agentstream.handlers.stores.base import InProcessStore
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    Envelope,
    TopicMissing,
    UserRequest,
    UserRequestData,
    decode,
    encode,
)
from agentstream.topics import Catalog, OutgoingRecord, Topic, TopicPartition
from agentstream.topics.bus import RecordMetadata
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import ensure_topics

CATALOG = Catalog(prefix="unsettled.", partitions=1)


class RefusingBus(InProcessBus):
    """Refuses the first ``refusals`` publishes to ``agent_response`` with an error that is
    not retryable, as the Kafka bus did for a leaderless topic."""

    def __init__(self, refusals: int) -> None:
        super().__init__(default_partitions=1)
        self.refusals = refusals

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        answers = CATALOG.name(Topic.AGENT_RESPONSE)
        if self.refusals and any(r.topic == answers for r in records):
            self.refusals -= 1
            raise TopicMissing(f"topic {answers!r} does not exist")
        return await super().publish_many(records)


async def answer(event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
    return [
        AgentResponse(
            source="test",
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            data=AgentResponseData(status="completed", text=event.data.text),
        )
    ]


async def test_a_record_that_could_not_be_settled_is_processed_again_in_place() -> None:
    bus = RefusingBus(refusals=2)
    await bus.start()
    await ensure_topics(bus, CATALOG, create=True)
    requests = [("a", "a:0"), ("a", "a:1"), ("b", "b:0")]
    await bus.publish_many(
        [
            OutgoingRecord(CATALOG.name(Topic.USER_REQUEST), value, key, tuple(headers))
            for key, value, headers in (
                encode(
                    UserRequest(
                        source="test",
                        request_id=text,
                        conversation_id=conversation,
                        data=UserRequestData(text=text),
                    )
                )
                for conversation, text in requests
            )
        ]
    )
    policy = RetryPolicy(base_delay_s=0.01, max_in_place_delay_s=0.05)
    config = RuntimeConfig(group_id="g", source="test", retry=policy, commit_interval_s=0.05)
    worker = Worker(
        bus, InProcessStore(), CATALOG, [Route(Topic.USER_REQUEST, answer, "h")], config
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        answers: list[str] = []
        while len(answers) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            records = await bus.read(CATALOG.name(Topic.AGENT_RESPONSE))
            answers = [decode(r.value).data.text for r in records if r.value is not None]
        # Every request answered once, no rebalance needed, a's turns in their order.
        assert sorted(answers) == ["a:0", "a:1", "b:0"]
        assert [t for t in answers if t.startswith("a")] == ["a:0", "a:1"]
        assert worker.metrics.unsettled.labels("h")._value.get() == 2
        while any(o.committed != 3 for o in worker._offsets.values()) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        assert [o.committed for o in worker._offsets.values()] == [3]
    finally:
        stop.set()
        await task
        await bus.stop()


async def test_jobs_abandoned_on_a_revoke_are_counted_out_once() -> None:
    # A job running when its partition is revoked counts itself out as its run ends; the
    # revoke counted it out a second time, and the worker's in-flight count went below
    # what it held. A job cancelled before it began is counted out by the revoke alone.
    bus = InProcessBus(default_partitions=1)
    await bus.start()
    await ensure_topics(bus, CATALOG, create=True)
    config = RuntimeConfig(group_id="g", source="test", drain_timeout_s=0.05)
    worker = Worker(
        bus, InProcessStore(), CATALOG, [Route(Topic.USER_REQUEST, answer, "h")], config
    )
    hold = asyncio.Event()

    async def slow(ctx: Context) -> list[Envelope[Any]]:
        await hold.wait()
        return []

    def job(key: bytes) -> Job:
        return Job(key=key, partition=0, mark_id=key.decode(), name="sweep", run=slow)

    worker.submit_job(job(b"k1"))
    await asyncio.sleep(0.05)  # k1 runs
    worker.submit_job(job(b"k2"))  # k2 starts, and is revoked in the same turn of the loop
    assert worker._jobs_held == 2
    await worker._on_revoke({TopicPartition(CATALOG.name(Topic.USER_REQUEST), 0)})
    assert (worker._jobs_held, worker.running) == (0, 0)
    await bus.stop()
