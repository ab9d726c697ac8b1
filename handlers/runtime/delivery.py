"""Delivery: how the records that handling one event produced reach the broker.

- :class:`PlainDelivery` (``at_least_once``): publish with acks=all; offsets are committed
  separately by the runtime, up to the lowest unfinished offset of each partition.
- :class:`TransactionalDelivery` (``exactly_once``): outputs and the partition's new
  committed offset go into one Kafka transaction, so a read_committed reader sees the
  outputs exactly when the input counts as consumed, and never twice. Transactions of a
  partition commit in offset order (events finish out of order, their outputs wait for the
  events before them), so the group's committed offset splits the partition exactly into
  "committed in Kafka" and "not": the next owner redoes only what never became visible.
  One transactional producer per input partition, with a ``transactional.id`` derived from
  the group and the partition: the next owner of the partition fences the previous one, so
  a paused zombie cannot commit after a rebalance (see docs/adr/0010-exactly-once.md).

State writes in the store happen before delivery and are idempotent (the dedup mark holds
the outputs), so a delivery that fails is retried as a whole with the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.offsets import PartitionOffsets
from agentstream.schemas.errors import RetryableError
from agentstream.topics import Bus, OutgoingRecord, TopicPartition
from agentstream.topics.bus import Fenced, Transactions

__all__ = ["Delivery", "Fenced", "PlainDelivery", "TransactionalDelivery"]

log = logging.getLogger(__name__)

Backoff = Callable[[BaseException, int], float]


class Delivery(Protocol):
    #: True when delivery also commits the input offsets (the runtime then does not).
    commits_offsets: bool

    async def deliver(
        self, out: list[OutgoingRecord], source: TopicPartition | None, offset: int | None
    ) -> None:
        """Deliver ``out``, produced by handling ``offset`` of ``source`` (None for jobs)."""

    async def acquire(self, partitions: set[TopicPartition]) -> None:
        """The partitions were just assigned: claim them before handling any record."""

    async def release(self, partitions: set[TopicPartition]) -> None:
        """The partitions are gone (revoked): drop what belongs to them."""

    async def close(self) -> None: ...


class PlainDelivery:
    commits_offsets = False

    def __init__(self, bus: Bus, metrics: RuntimeMetrics, backoff: Backoff) -> None:
        self.bus = bus
        self.metrics = metrics
        self.backoff = backoff

    async def deliver(
        self, out: list[OutgoingRecord], source: TopicPartition | None, offset: int | None
    ) -> None:
        # The record stays in flight (its offset uncommitted) until this works.
        if not out:
            return
        for attempt in range(1, 1_000_000):
            try:
                await self.bus.publish_many(out)
                break
            except RetryableError as exc:
                log.warning(
                    "publishing %d record(s) failed (attempt %d): %s", len(out), attempt, exc
                )
                await asyncio.sleep(self.backoff(exc, attempt))
        for record in out:
            self.metrics.produced.labels(record.topic).inc()

    async def acquire(self, partitions: set[TopicPartition]) -> None:
        return None

    async def release(self, partitions: set[TopicPartition]) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class _Ready:
    """Outputs of one handled event, waiting for the events before it in its partition."""

    out: list[OutgoingRecord]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TransactionalDelivery:
    """Kafka transactions per input partition, committed in offset order.

    Why in order: with events of one partition in flight concurrently, committing each
    event's outputs as soon as it finishes (with the group offset held at the lowest event
    still running) makes outputs above the committed offset visible. When the partition
    then moves, its next owner redelivers those events, and republishing their recorded
    outputs shows them twice. Committed in order, everything below the group's offset is
    visible and nothing at or above it is, so a redelivered event's outbox is published
    exactly once. Handlers still run concurrently; only the commit waits, and every event
    that became ready behind a slow one goes into the same transaction (fewer, larger
    transactions under load).
    """

    commits_offsets = True

    def __init__(
        self,
        bus: Bus,
        group_id: str,
        offsets: dict[TopicPartition, PartitionOffsets],
        metrics: RuntimeMetrics,
        backoff: Backoff,
        owns: Callable[[TopicPartition], bool],
    ) -> None:
        self.bus = bus
        self.group_id = group_id
        self.offsets = offsets
        self.metrics = metrics
        self.backoff = backoff
        self.owns = owns
        self._producers: dict[TopicPartition, Transactions] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._ready: dict[TopicPartition, dict[int, _Ready]] = {}

    def _id(self, tp: TopicPartition) -> str:
        return f"{self.group_id}.{tp.topic}.{tp.partition}"

    async def acquire(self, partitions: set[TopicPartition]) -> None:
        # Starting the producer fences the previous owner's at once, before this member
        # handles a single record of the partition: a thawed zombie cannot commit anything
        # the new owner also commits.
        for tp in sorted(partitions):
            if tp not in self._producers:
                self._producers[tp] = await self.bus.transactions(self._id(tp))

    async def _reset(self, tp: TopicPartition) -> None:
        producer = self._producers.pop(tp, None)
        if producer is not None:
            try:
                await producer.close()
            except Exception as exc:  # a broken producer may fail to close; drop it anyway
                log.debug("closing producer %s: %r", self._id(tp), exc)

    async def _renew(self, tp: TopicPartition) -> Transactions:
        """A fresh producer after a failed transaction, only while the partition is ours:
        a member that lost it must never start one (it would fence the new owner)."""
        await self._reset(tp)
        if not self.owns(tp):
            raise Fenced(f"{self._id(tp)}: the partition is no longer assigned here")
        producer = self._producers[tp] = await self.bus.transactions(self._id(tp))
        return producer

    async def deliver(
        self, out: list[OutgoingRecord], source: TopicPartition | None, offset: int | None
    ) -> None:
        if source is None:
            raise Fenced("no partition of this member to deliver through")
        tracker = self.offsets.get(source) if offset is not None else None
        if tracker is None or offset is None or not tracker.is_pending(offset):
            # A job's outputs, or a record outside the consumer loop: no offset to order by.
            async with self._locks.setdefault(source, asyncio.Lock()):
                await self._commit(source, out, {})
            return
        ready = _Ready(list(out))
        waiting = self._ready.setdefault(source, {})
        waiting[offset] = ready
        try:
            async with self._locks.setdefault(source, asyncio.Lock()):
                if not ready.done.done():
                    await self._flush(source, tracker)
            await ready.done
        finally:
            if waiting.get(offset) is ready:
                del waiting[offset]

    async def _flush(self, source: TopicPartition, tracker: PartitionOffsets) -> None:
        """Commit every ready event below the first one still running, in one transaction
        with the offset after them; again while more became ready meanwhile."""
        waiting = self._ready.get(source, {})
        while True:
            batch = tracker.ready_prefix(waiting)
            if not batch:
                return
            out = [record for offset in batch for record in waiting[offset].out]
            commit = {source: tracker.committable_without(*batch)}
            try:
                await self._commit(source, out, commit)
            except BaseException as exc:
                # Fenced: the partition is gone, and nothing after the batch can commit
                # either. Anything else (cancelled): the callers decide, nothing is lost.
                failed = list(waiting) if isinstance(exc, Fenced) else batch
                for offset in failed:
                    entry = waiting.pop(offset)
                    if not entry.done.done():
                        entry.done.set_exception(
                            exc if isinstance(exc, Exception) else Fenced("delivery cancelled")
                        )
                        entry.done.exception()  # retrieved: a waiter may be gone already
                raise
            for offset in batch:
                tracker.finish(offset)
                entry = waiting.pop(offset)
                if not entry.done.done():
                    entry.done.set_result(None)
            tracker.committed = commit[source]

    async def _commit(
        self,
        source: TopicPartition,
        out: list[OutgoingRecord],
        commit: dict[TopicPartition, int],
    ) -> None:
        producer = self._producers.get(source)
        if producer is None:
            raise Fenced(f"{self._id(source)}: the partition is not claimed by this member")
        for attempt in range(1, 1_000_000):
            try:
                await producer.commit(out, commit, self.group_id)
                break
            except Fenced:
                await self._reset(source)
                raise
            except RetryableError as exc:
                log.warning(
                    "transaction for %s failed (attempt %d): %s", self._id(source), attempt, exc
                )
                await asyncio.sleep(self.backoff(exc, attempt))
                # A transaction that timed out may leave the producer unusable.
                producer = await self._renew(source)
        for record in out:
            self.metrics.produced.labels(record.topic).inc()

    async def release(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            for entry in self._ready.pop(tp, {}).values():
                if not entry.done.done():
                    entry.done.set_exception(Fenced(f"{self._id(tp)}: the partition was revoked"))
                    entry.done.exception()
            await self._reset(tp)
            self._locks.pop(tp, None)

    async def close(self) -> None:
        await self.release(set(self._producers) | set(self._ready))
