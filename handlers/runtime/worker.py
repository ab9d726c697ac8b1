"""The handler runtime: consume, schedule per key, run handlers, commit, retry, dead-letter.

One :class:`Worker` is one consumer-group member running a set of routes. What it
guarantees, and how:

- *Many in flight, ordered per key*: every record goes to the lane of its key
  (``conversation_id``); lanes run concurrently, a lane runs its records one at a time.
- *Bounded*: at most ``max_in_flight`` records run at once; fetched records wait for a
  slot in :mod:`agentstream.handlers.runtime.admission`, which starts them at a paced rate (so a
  backlog is taken up without synchronised waves), and fetching pauses while half the budget waits
  there. A record whose conversation has a turn running waits in its lane without a slot, up
  to ``max_waiting`` records; fetching pauses too while that many wait (ADR 24).
- *Commit only what is done*: per partition, offsets are committed up to the lowest offset
  still in flight (:mod:`agentstream.handlers.runtime.offsets`), every ``commit_interval_s``.
- *Alive while handlers are slow*: the fetch loop keeps calling the consumer even while all
  partitions are paused, so slow LLM calls never trip ``max.poll.interval.ms``.
- *Rebalance*: revoked partitions get ``drain_timeout_s`` to finish, then their remaining
  work is abandoned (it will be redelivered to the new owner) and what finished is committed.
- *Idempotent*: an event's dedup mark holds its outputs (an outbox); the mark, the handler's
  state writes and the outputs are committed atomically, then published. A redelivered event
  whose mark exists republishes the recorded outputs, byte for byte the same
  (:mod:`agentstream.handlers.runtime.outbox`).
- *Retries that keep order*: see :mod:`agentstream.handlers.runtime.retries`; while an event
  of a key waits in the ``.retry`` topic, later events of that key are parked behind it there
  (:mod:`agentstream.handlers.runtime.parking`); what cannot be handled goes to
  :mod:`agentstream.handlers.runtime.dead_letters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from agentstream.handlers.runtime.admission import PacedAdmission
from agentstream.handlers.runtime.claims import ClaimCheck
from agentstream.handlers.runtime.dead_letters import DeadLetters
from agentstream.handlers.runtime.delivery import Delivery, PlainDelivery, TransactionalDelivery
from agentstream.handlers.runtime.lanes import Lanes
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.offsets import PartitionOffsets
from agentstream.handlers.runtime.outbox import Outbox
from agentstream.handlers.runtime.parking import RETRY_HEADERS as _RETRY_HEADERS  # noqa: F401 (tests read it here)
from agentstream.handlers.runtime.parking import Parking
from agentstream.handlers.runtime.processing import Lost, Processor
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Job, Route
from agentstream.handlers.stores.base import StateStore
from agentstream.schemas import RetryableError
from agentstream.topics import Bus, Catalog, Consumer, Kind, Record, TopicPartition

__all__ = ["RuntimeConfig", "Worker"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RuntimeConfig:
    group_id: str
    source: str
    namespace: str = "agentstream"
    max_in_flight: int = 256
    #: Records waiting in their conversation's lane behind a running one, at most (they
    #: hold no running slot); None: twice ``max_in_flight``.
    max_waiting: int | None = None
    max_batch: int = 500
    drain_timeout_s: float = 20.0
    commit_interval_s: float = 0.2
    dedup_ttl_s: int = 7 * 24 * 3600
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    use_retry_topic: bool = True
    read_committed: bool = False
    #: Kafka transactions: outputs and input offsets committed atomically (implies
    #: read_committed consumers).
    exactly_once: bool = False
    #: Outputs larger than this are claim-checked (payload in the store, a stub on Kafka).
    claim_check_bytes: int = 512 * 1024
    claim_ttl_s: int = 8 * 24 * 3600


@dataclass(slots=True)
class _Item:
    route: Route | None
    record: Record | None = None
    job: Job | None = None
    started: float = 0.0
    #: Whether its run began (a lane cancelled in the same turn of the loop as its start
    #: never runs it: nothing of ``_run_item`` ran, its ``finally`` included).
    entered: bool = False

    @property
    def tp(self) -> TopicPartition | None:
        return self.record.tp if self.record is not None else None


def _key(record: Record) -> bytes:
    """The lane of ``record``: its key (the conversation), or its own lane without one."""
    return (
        record.key if record.key else f"{record.topic}/{record.partition}/{record.offset}".encode()
    )


class Worker:
    """One consumer-group member running ``routes`` (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        store: StateStore,
        catalog: Catalog,
        routes: Sequence[Route],
        config: RuntimeConfig,
        *,
        metrics: RuntimeMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bus = bus
        self.store = store
        self.catalog = catalog
        self.config = config
        self.metrics = metrics or RuntimeMetrics()
        self.now = now
        self._routes: dict[str, Route] = {}
        for route in routes:
            self._routes[catalog.name(route.topic)] = route
            self._routes[catalog.name(route.topic, Kind.RETRY)] = route
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._admission = PacedAdmission(config.max_in_flight, max_waiting=config.max_waiting)
        self._lanes: Lanes[_Item] = Lanes(self._run_item, on_ready=self._admission.ready)
        self._jobs_held = 0
        self._jobs_outside = 0
        self._consumer: Consumer | None = None
        self._delivery: Delivery = (
            TransactionalDelivery(
                bus,
                config.group_id,
                self._offsets,
                self.metrics,
                self._backoff,
                owns=lambda tp: tp in self.assignment() and tp not in self._lost,
            )
            if config.exactly_once
            else PlainDelivery(bus, self.metrics, self._backoff)
        )
        self._claims = ClaimCheck(
            store,
            config.namespace,
            threshold_bytes=config.claim_check_bytes,
            ttl_s=config.claim_ttl_s,
        )
        self._outbox = Outbox(
            store,
            catalog,
            self.metrics,
            group_id=config.group_id,
            namespace=config.namespace,
            dedup_ttl_s=config.dedup_ttl_s,
            now=lambda: self.now(),
        )
        self._parking = Parking(
            store,
            catalog,
            self.metrics,
            self._until_done,
            group_id=config.group_id,
            namespace=config.namespace,
        )
        self._dead_letters = DeadLetters(
            catalog, self.metrics, self._outbox, config.retry, group_id=config.group_id
        )
        #: Partitions this member was fenced out of (exactly_once): nothing more of them is
        #: handled or counted as done here until they are assigned again.
        self._lost: set[TopicPartition] = set()
        self._claimed: set[TopicPartition] = set()
        #: Claiming (which awaits the broker) and releasing on revoke never interleave:
        #: aiokafka runs the revoke callback in its coordinator task, concurrently with the
        #: fetch loop, and a claim finishing after a revoke would mark as claimed a
        #: partition whose producer the revoke just closed.
        self._ownership = asyncio.Lock()
        self._paused_for_budget = False
        self._stopping = False
        self.started = asyncio.Event()
        self._processor = Processor(
            catalog,
            self.metrics,
            self._claims,
            self._delivery,
            self._outbox,
            self._parking,
            self._dead_letters,
            self._until_done,
            retry=config.retry,
            use_retry_topic=config.use_retry_topic,
            lost=self._lost,
            assignment=self.assignment,
        )

    # -- public -------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Records and jobs whose handler runs now: what the budget counts."""
        return self._lanes.running + self._jobs_outside

    @property
    def waiting(self) -> int:
        """Records and jobs queued in their lane behind a running one."""
        return self._lanes.waiting

    @property
    def in_flight(self) -> int:
        """Records begun and not finished (running or waiting in their lane), and jobs."""
        return sum(len(o) for o in self._offsets.values()) + self._jobs_held

    @property
    def held(self) -> int:
        """Everything in memory: in flight, and fetched records waiting to start."""
        return self.in_flight + len(self._admission)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns now (empty before it joined its group)."""
        return set() if self._consumer is None else self._consumer.assignment()

    def owned_partitions(self, topic_name: str) -> set[int]:
        if self._consumer is None:
            return set()
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == topic_name}

    async def run_job(self, job: Job) -> None:
        """Run ``job`` now, outside the lanes (for runners without a consumer loop)."""
        self._jobs_held += 1
        self._jobs_outside += 1
        try:
            await self._processor.run_job(job)
        finally:
            self._jobs_held -= 1
            self._jobs_outside -= 1

    def submit_job(self, job: Job) -> None:
        """Run ``job`` in the lane of its key, after the events already queued there."""
        self._jobs_held += 1
        self._lanes.submit(job.key, _Item(route=None, job=job))

    async def process_record(self, record: Record) -> None:
        """Run one record through the same path as a consumed one (decode, dedup, handler,
        retries, retry topic or dead letter, outputs), outside the consumer loop. For
        runners that receive batches from elsewhere, like the Lambda handler."""
        route = self._routes.get(record.topic)
        if route is None:
            raise KeyError(f"no route for topic {record.topic!r}")
        await self._processor.process(record, route)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, commit and leave the group."""
        consumer = self.bus.consumer(
            self.config.group_id,
            sorted(self._routes),
            on_revoke=self._on_revoke,
            read_committed=self.config.read_committed or self.config.exactly_once,
        )
        await consumer.start()
        self._consumer = consumer
        self.started.set()
        committer = asyncio.create_task(self._commit_loop(), name="commit-loop")
        admitter = asyncio.create_task(
            self._admission.run(
                lambda: self.running,
                self._accept,
                self._lanes.resume,
                lambda: self._lanes.waiting,
                lambda record: self._lanes.busy(_key(record)),
            ),
            name="admission",
        )
        try:
            while not stop.is_set():
                if len(self._admission) >= self._admission.prefetch:
                    # Let the admission start what it can before judging the backlog: a
                    # fetch fills it to the threshold, and a pause is not free (see
                    # _apply_backpressure).
                    await asyncio.sleep(0)
                self._apply_backpressure(consumer)
                room = max(1, self._admission.prefetch - len(self._admission))
                records = await consumer.getmany(
                    timeout_ms=100, max_records=min(room, self.config.max_batch)
                )
                await self._claim(consumer)
                self._admission.offer(records)
        finally:
            self._stopping = True
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            # Fetched but never started: not counted, so fetched again after a restart.
            self._admission.purge()
            try:
                # The admission keeps running while in-flight work drains: it starts the
                # records waiting in their lanes (it is offered nothing new).
                await self._shutdown(consumer)
            finally:
                admitter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await admitter

    async def _claim(self, consumer: Consumer) -> None:
        """Claim partitions assigned since the last look, before handling their records."""
        assigned = consumer.assignment()
        if not assigned - self._claimed:
            self._claimed = assigned
            return
        async with self._ownership:
            await self._claim_new(consumer)

    async def _claim_new(self, consumer: Consumer) -> None:
        assigned = consumer.assignment()
        new = assigned - self._claimed
        if new:
            started = time.monotonic()
            self._lost -= new
            await self._delivery.acquire(new)
            if self._delivery.commits_offsets:
                # Claiming waited for the previous owner's open transaction to end; if it
                # committed, the group's offset moved past where this member started to
                # fetch. Records below it are done: skip them, never handle them twice.
                # The previous owner's last commit may still be settling into the group's
                # offsets (the offset fetch aiokafka sends cannot ask for stable offsets,
                # KIP-447): read until two reads half a second apart agree.
                before: dict[TopicPartition, int | None] = {}
                for _ in range(8):
                    await asyncio.sleep(0.5)
                    now = {tp: await consumer.committed(tp) for tp in sorted(new)}
                    if now == before:
                        break
                    before = now
                for tp, committed in before.items():
                    if committed is not None:
                        self._offsets.setdefault(tp, PartitionOffsets()).start_at(committed)
                log.info(
                    "claimed %d partition(s) in %.1fs, previous owners fenced; starting at %s",
                    len(new),
                    time.monotonic() - started,
                    ", ".join(
                        f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(before.items())
                    ),
                )
        self._claimed = assigned

    # -- scheduling ---------------------------------------------------------------------

    def _apply_backpressure(self, consumer: Consumer) -> None:
        """Pause fetching while the backlog or the lanes' waiting room is full, resume
        below three quarters of both.
        The Kafka client drops what it has buffered for a paused partition and fetches it
        again on resume: a worker that paused after every fetch (a fetch fills the backlog
        to the threshold before the admission takes any) ran in lock-step, one fetch of
        records at a time, with fast handlers (ADR 14 update)."""
        backlog, prefetch = len(self._admission), self._admission.prefetch
        waiting, max_waiting = self._lanes.waiting, self._admission.max_waiting
        if not self._paused_for_budget and (backlog >= prefetch or waiting >= max_waiting):
            consumer.pause(*consumer.assignment())
            self._paused_for_budget = True
        elif (
            self._paused_for_budget
            and backlog < prefetch * 3 // 4
            and waiting < max_waiting * 3 // 4
        ):
            consumer.resume(*consumer.assignment())
            self._paused_for_budget = False

    def _accept(self, record: Record) -> bool:
        """Begin ``record``: True if it runs now, False if it waits in its lane or is
        dropped (neither takes a running slot)."""
        route = self._routes.get(record.topic)
        if route is None:
            log.warning("record of unexpected topic %s dropped", record.topic)
            return False
        if record.tp not in self._claimed:
            # Fetched before its partition was revoked: the next owner handles it.
            return False
        tracker = self._offsets.get(record.tp)
        if tracker is None:
            tracker = self._offsets[record.tp] = PartitionOffsets()
        if record.offset <= tracker.highest_seen:
            # Below where the claim started (done by the previous owner), or fetched again
            # within one assignment (the client reset its position): the first copy is in
            # flight or done, and a second run would publish its outbox again, outside the
            # order exactly_once commits in.
            log.debug("%s[%d]@%d done or in flight already, dropped", *record.tp, record.offset)
            return False
        self.metrics.consumed.labels(record.topic, self.config.group_id).inc()
        tracker.begin(record.offset)
        item = _Item(route=route, record=record, started=time.monotonic())
        return self._lanes.submit(_key(record), item)

    async def _run_item(self, item: _Item) -> None:
        item.entered = True
        began = time.monotonic()
        try:
            if item.job is not None:
                await self._processor.run_job(item.job)
            elif item.record is not None and item.route is not None:
                await self._process(item.record, item.route)
        except asyncio.CancelledError:
            raise
        except Lost:
            return  # not ours any more: its offset must not count as done here
        finally:
            if item.job is not None:
                self._jobs_held -= 1
                self._admission.wake()
        if item.record is not None:
            offsets = self._offsets.get(item.record.tp)
            if offsets is not None:
                offsets.finish(item.record.offset)
            # The hold of a running slot: a wait in the lane before it held none.
            self._admission.finished(time.monotonic() - began)

    async def _process(self, record: Record, route: Route) -> None:
        """Process ``record`` until it is settled. ``Processor.process`` handles every
        failure of the event itself (retries, the retry topic, dead letters); what escapes
        it is a failure around the event: a publish the broker refused for a reason not
        known to pass, a bug. Processing is idempotent (the outbox), so the record is
        processed again in place, with backoff, its offset uncommitted and its lane held
        meanwhile (order kept); a revoke or shutdown cancels the wait. Leaving it for a
        redelivery instead waited for a rebalance that may never come: its conversation
        stood still, and its answer with it."""
        for attempt in range(1, 1_000_000):
            try:
                await self._processor.process(record, route)
                return
            except (asyncio.CancelledError, Lost):
                raise
            except Exception as exc:
                self.metrics.unsettled.labels(route.name).inc()
                log.exception(
                    "%s[%d]@%d could not be settled (attempt %d); processing it again",
                    record.topic,
                    record.partition,
                    record.offset,
                    attempt,
                )
                await asyncio.sleep(self._backoff(exc, attempt))
        raise AssertionError("unreachable")

    # -- store outages ------------------------------------------------------------------

    async def _until_done(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run a store step that must not fail the event: a passing outage (Redis down) is
        waited out with backoff, the record staying in flight meanwhile."""
        for attempt in range(1, 1_000_000):
            try:
                return await step()
            except RetryableError as exc:
                log.warning("store step failed (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(self._backoff(exc, attempt))
        raise AssertionError("unreachable")

    def _backoff(self, error: BaseException, attempt: int) -> float:
        return min(5.0, self.config.retry.delay(error, attempt, in_place=True))

    # -- commits, rebalance, shutdown ---------------------------------------------------

    async def _commit_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.config.commit_interval_s)
            await self._commit(set(self._offsets))
            ticks += 1
            if ticks % 5 == 0:
                self._observe_lag()

    def _observe_lag(self) -> None:
        """Lag per partition (end offset minus committed offset) and records held."""
        consumer = self._consumer
        group = self.config.group_id
        self.metrics.in_flight.labels(group).set(self.held)
        if consumer is None:
            return
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            tracker = self._offsets.get(tp)
            if end is None:
                continue
            committed = tracker.committed if tracker and tracker.committed is not None else None
            if committed is None:
                continue
            self.metrics.lag.labels(tp.topic, str(tp.partition), group).set(max(0, end - committed))

    async def _commit(self, tps: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or self._delivery.commits_offsets:
            return
        offsets = {}
        for tp in tps:
            tracker = self._offsets.get(tp)
            if tracker is not None and (offset := tracker.to_commit()) is not None:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except RetryableError as exc:
            log.warning("commit failed, will retry: %s", exc)
            return
        for tp, offset in offsets.items():
            tracker = self._offsets.get(tp)
            if tracker is not None:
                tracker.committed = offset

    async def _on_revoke(self, revoked: set[TopicPartition]) -> None:
        self._admission.purge(revoked)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while loop.time() < deadline and any(len(self._offsets.get(tp, ())) for tp in revoked):
            await asyncio.sleep(0.02)
        revoked_partitions = {(tp.topic, tp.partition) for tp in revoked}
        dropped = await self._lanes.abandon(
            lambda item: (
                (item.tp is not None and item.tp in revoked)
                or (item.job is not None and self._job_revoked(item.job, revoked_partitions))
            )
        )
        if dropped:
            log.warning("abandoned %d in-flight item(s) of revoked partitions", len(dropped))
        # A job whose run began counted itself out (``_run_item``'s finally).
        self._jobs_held -= sum(1 for item in dropped if item.job is not None and not item.entered)
        await self._commit(revoked)
        async with self._ownership:
            await self._delivery.release(revoked)
            self._claimed -= revoked
            self._lost -= revoked
            for tp in revoked:
                self._offsets.pop(tp, None)
        for tp in revoked:
            route = self._routes.get(tp.topic)
            if route is not None:
                self._parking.forget(route, tp.partition)
        self._admission.wake()  # what was abandoned freed its slots

    def _job_revoked(self, job: Job, revoked: set[tuple[str, int]]) -> bool:
        return any(p == job.partition for _, p in revoked)

    async def _shutdown(self, consumer: Consumer) -> None:
        with contextlib.suppress(Exception):
            consumer.pause(*consumer.assignment())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self.held and loop.time() < deadline:
            await asyncio.sleep(0.02)
        dropped = await self._lanes.abandon(lambda item: True)
        if dropped:
            log.warning("shutdown deadline: abandoned %d in-flight item(s)", len(dropped))
        with contextlib.suppress(Exception):
            await self._commit(set(self._offsets))
        await self._delivery.close()
        await consumer.stop()
        self._consumer = None
