"""``exactly_once`` delivery commits the transactions of a partition in offset order.

The real transactions are tested on Kafka (tests/integration/test_exactly_once.py and the
chaos suite's zombie scenario); here a recording stand-in for our own ``Transactions``
protocol checks the ordering rule itself: an event that finishes before an earlier one of
its partition waits, and its outputs go out with the earlier one's, in offset order, with
the offset after both, so the committed offset never has visible outputs above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from agentstream.handlers.runtime.delivery import Fenced, TransactionalDelivery
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.offsets import PartitionOffsets
from agentstream.topics import OutgoingRecord, TopicPartition

TP = TopicPartition("user_request", 0)


class RecordingTransactions:
    def __init__(self, fence_after: int | None = None) -> None:
        self.commits: list[tuple[list[bytes | None], dict[TopicPartition, int]]] = []
        self.fence_after = fence_after
        self.gate = asyncio.Event()
        self.gate.set()

    async def commit(
        self,
        records: Sequence[OutgoingRecord],
        offsets: Mapping[TopicPartition, int],
        group_id: str,
    ) -> None:
        await self.gate.wait()
        if self.fence_after is not None and len(self.commits) >= self.fence_after:
            raise Fenced("a newer producer took over")
        self.commits.append(([r.value for r in records], dict(offsets)))

    async def close(self) -> None:
        return None


class OneProducerBus:
    def __init__(self, producer: RecordingTransactions) -> None:
        self.producer = producer

    async def transactions(self, transactional_id: str) -> RecordingTransactions:
        return self.producer


async def claimed(
    *in_flight: int, fence_after: int | None = None
) -> tuple[RecordingTransactions, PartitionOffsets, TransactionalDelivery]:
    """A delivery that claimed ``TP``, with ``in_flight`` offsets begun on it."""
    producer = RecordingTransactions(fence_after)
    tracker = PartitionOffsets()
    for offset in in_flight:
        tracker.begin(offset)
    bus: Any = OneProducerBus(producer)
    delivery = TransactionalDelivery(
        bus, "g", {TP: tracker}, RuntimeMetrics(), backoff=lambda exc, n: 0.0, owns=lambda tp: True
    )
    await delivery.acquire({TP})
    return producer, tracker, delivery


def out(name: str) -> list[OutgoingRecord]:
    return [OutgoingRecord("tool_call", name.encode(), b"k")]


async def test_a_later_event_waits_for_the_earlier_one_and_shares_its_transaction() -> None:
    producer, tracker, delivery = await claimed(10, 11, 12)

    later = asyncio.create_task(delivery.deliver(out("twelve"), TP, 12))
    middle = asyncio.create_task(delivery.deliver(out("eleven"), TP, 11))
    await asyncio.sleep(0.05)
    assert producer.commits == []  # offset 10 still runs: nothing may be visible yet
    assert not later.done()
    assert not middle.done()

    await delivery.deliver(out("ten"), TP, 10)
    await asyncio.gather(later, middle)
    assert producer.commits == [([b"ten", b"eleven", b"twelve"], {TP: 13})]
    assert tracker.committed == 13
    assert len(tracker) == 0


async def test_in_order_events_commit_one_by_one_with_the_next_offset() -> None:
    producer, tracker, delivery = await claimed(0, 1, 2)
    await delivery.deliver(out("a"), TP, 0)
    await delivery.deliver([], TP, 1)  # no outputs: still moves the offset, in order
    assert producer.commits == [([b"a"], {TP: 1}), ([], {TP: 2})]
    assert tracker.committable() == 2


async def test_events_that_become_ready_during_a_commit_go_in_the_next_one() -> None:
    producer, _tracker, delivery = await claimed(0, 1, 2)
    producer.gate.clear()
    first = asyncio.create_task(delivery.deliver(out("a"), TP, 0))
    await asyncio.sleep(0.01)
    rest = [
        asyncio.create_task(delivery.deliver(out("b"), TP, 1)),
        asyncio.create_task(delivery.deliver(out("c"), TP, 2)),
    ]
    await asyncio.sleep(0.01)
    producer.gate.set()
    await asyncio.gather(first, *rest)
    assert producer.commits == [([b"a"], {TP: 1}), ([b"b", b"c"], {TP: 3})]


async def test_fencing_fails_the_batch_and_everything_waiting_behind_it() -> None:
    producer, tracker, delivery = await claimed(0, 1, 2, fence_after=0)
    waiting = asyncio.create_task(delivery.deliver(out("c"), TP, 2))
    await asyncio.sleep(0.01)
    with pytest.raises(Fenced):
        await delivery.deliver(out("a"), TP, 0)
    with pytest.raises(Fenced):
        await waiting
    assert producer.commits == []
    # Not done: the next owner redoes them.
    assert tracker.is_pending(0)
    assert tracker.is_pending(2)


async def test_revoking_the_partition_releases_waiting_events() -> None:
    producer, _tracker, delivery = await claimed(0, 1)
    waiting = asyncio.create_task(delivery.deliver(out("b"), TP, 1))
    await asyncio.sleep(0.01)
    await delivery.release({TP})
    with pytest.raises(Fenced):
        await waiting
    assert producer.commits == []


async def test_jobs_without_an_offset_commit_at_once() -> None:
    producer, _tracker, delivery = await claimed(5)
    await delivery.deliver(out("timed_out"), TP, None)
    assert producer.commits == [([b"timed_out"], {})]
