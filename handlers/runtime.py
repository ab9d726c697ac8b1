"""The handler runtime: consume, schedule per key, run handlers, commit, retry, dead-letter.

One :class:`Worker` is one consumer-group member running a set of routes. What it
guarantees, and how:

- *Many in flight, ordered per key*: every record goes to the lane of its key
  (``conversation_id``); lanes run concurrently, a lane runs its records one at a time.
- *Bounded*: at most ``max_in_flight`` records are held; fetching pauses when the budget is
  full and resumes below three quarters of it.
- *Commit only what is done*: per partition, offsets are committed up to the lowest offset
  still in flight (:mod:`handlers.offsets`), every ``commit_interval_s``.
- *Alive while handlers are slow*: the fetch loop keeps calling the consumer even while all
  partitions are paused, so slow LLM calls never trip ``max.poll.interval.ms``.
- *Rebalance*: revoked partitions get ``drain_timeout_s`` to finish, then their remaining
  work is abandoned (it will be redelivered to the new owner) and what finished is committed.
- *Idempotent*: an event's dedup mark holds its outputs (an outbox); the mark, the handler's
  state writes and the outputs are committed atomically, then published. A redelivered event
  whose mark exists republishes the recorded outputs, byte for byte the same.
- *Retries that keep order*: see :mod:`handlers.retries`; while an event of a key waits in
  the ``.retry`` topic, later events of that key are parked behind it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from handlers.claims import ClaimCheck
from handlers.context import Context, Origin
from handlers.delivery import Delivery, Fenced, PlainDelivery, TransactionalDelivery
from handlers.lanes import Lanes
from handlers.metrics import Metrics
from handlers.offsets import PartitionOffsets
from handlers.retries import RetryPolicy, Verdict
from handlers.route import Job, Route
from handlers.store import StateStore
from schemas import (
    EVENT_TYPES,
    DeadLetter,
    Envelope,
    RetryableError,
    SchemaError,
    SkipEvent,
    dead_letter_headers,
    decode,
    encode,
    header,
)
from topics import Bus, Catalog, Consumer, Kind, OutgoingRecord, Record, TopicPartition

__all__ = ["RuntimeConfig", "Worker"]

log = logging.getLogger(__name__)

_ATTEMPT = "x-retry-attempt"
_DUE = "x-retry-due"
_ORIGIN_TOPIC = "x-retry-origin-topic"
_ORIGIN_PARTITION = "x-retry-origin-partition"
_ORIGIN_OFFSET = "x-retry-origin-offset"
_ORIGIN_TIMESTAMP = "x-retry-origin-timestamp"
_RETRY_HEADERS = (
    _ATTEMPT,
    _DUE,
    _ORIGIN_TOPIC,
    _ORIGIN_PARTITION,
    _ORIGIN_OFFSET,
    _ORIGIN_TIMESTAMP,
)


_MAX_CONFLICTS = 50
_SEP = "\x1f"  # between a key and an event id in the parked index (ids are UUIDs)
T = TypeVar("T")


class _Lost(Exception):
    """The partition was lost to a newer owner (exactly_once fencing)."""


class _CommitConflict(RetryableError):
    """The state the handler read changed, or another member handled the event first."""


@dataclass(frozen=True)
class RuntimeConfig:
    group_id: str
    source: str
    namespace: str = "agentstream"
    max_in_flight: int = 256
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

    @property
    def tp(self) -> TopicPartition | None:
        return self.record.tp if self.record is not None else None


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
        metrics: Metrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bus = bus
        self.store = store
        self.catalog = catalog
        self.config = config
        self.metrics = metrics or Metrics()
        self.now = now
        self._routes: dict[str, Route] = {}
        for route in routes:
            self._routes[catalog.name(route.topic)] = route
            self._routes[catalog.name(route.topic, Kind.RETRY)] = route
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._lanes: Lanes[_Item] = Lanes(self._run_item)
        self._jobs_held = 0
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
        self._parked: dict[tuple[str, int], dict[str, set[str]]] = {}
        self._parked_loads: dict[tuple[str, int], asyncio.Future[dict[str, set[str]]]] = {}
        #: Partitions this member was fenced out of (exactly_once): nothing more of them is
        #: handled or counted as done here until they are assigned again.
        self._lost: set[TopicPartition] = set()
        self._claimed: set[TopicPartition] = set()
        self._skip_below: dict[TopicPartition, int] = {}
        #: Claiming (which awaits the broker) and releasing on revoke never interleave:
        #: aiokafka runs the revoke callback in its coordinator task, concurrently with the
        #: fetch loop, and a claim finishing after a revoke would mark as claimed a
        #: partition whose producer the revoke just closed.
        self._ownership = asyncio.Lock()
        self._paused_for_budget = False
        self._stopping = False
        self.started = asyncio.Event()

    # -- public -------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return sum(len(o) for o in self._offsets.values()) + self._jobs_held

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
        try:
            await self._run_job(job)
        finally:
            self._jobs_held -= 1

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
        await self._process(record, route)

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
        try:
            while not stop.is_set():
                self._apply_backpressure(consumer)
                room = max(1, self.config.max_in_flight - self.held)
                records = await consumer.getmany(
                    timeout_ms=100, max_records=min(room, self.config.max_batch)
                )
                await self._claim(consumer)
                for record in records:
                    self._accept(record)
        finally:
            self._stopping = True
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._shutdown(consumer)

    async def _claim(self, consumer: Consumer) -> None:
        """Claim partitions assigned since the last look, before handling their records."""
        if not consumer.assignment() - self._claimed:
            self._claimed = consumer.assignment()
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
                        self._skip_below[tp] = committed
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
        held = self.held
        if not self._paused_for_budget and held >= self.config.max_in_flight:
            consumer.pause(*consumer.assignment())
            self._paused_for_budget = True
        elif self._paused_for_budget and held < self.config.max_in_flight * 3 // 4:
            consumer.resume(*consumer.assignment())
            self._paused_for_budget = False

    def _accept(self, record: Record) -> None:
        route = self._routes.get(record.topic)
        if route is None:
            log.warning("record of unexpected topic %s dropped", record.topic)
            return
        if record.offset < self._skip_below.get(record.tp, -1):
            return
        tracker = self._offsets.setdefault(record.tp, PartitionOffsets())
        if record.offset <= tracker.highest_seen:
            # Fetched again within one assignment (the client reset its position): the
            # first copy is in flight or done, and a second run would publish its outbox
            # again, outside the order exactly_once commits in.
            log.debug("%s[%d]@%d fetched again, dropped", *record.tp, record.offset)
            return
        self.metrics.consumed.labels(record.topic, self.config.group_id).inc()
        tracker.begin(record.offset)
        key = (
            record.key
            if record.key
            else f"{record.topic}/{record.partition}/{record.offset}".encode()
        )
        self._lanes.submit(key, _Item(route=route, record=record))

    async def _run_item(self, item: _Item) -> None:
        try:
            if item.job is not None:
                await self._run_job(item.job)
            elif item.record is not None and item.route is not None:
                await self._process(item.record, item.route)
        except asyncio.CancelledError:
            raise
        except _Lost:
            return  # not ours any more: its offset must not count as done here
        except Exception:
            # _process handles every failure of the event itself; this is a bug or an
            # infrastructure failure while dead-lettering. The offset stays uncommitted.
            log.exception("unhandled failure while processing; the event will be redelivered")
            if item.record is not None:
                self._stall(item.record.tp)
                return
        finally:
            if item.job is not None:
                self._jobs_held -= 1
        if item.record is not None:
            offsets = self._offsets.get(item.record.tp)
            if offsets is not None:
                offsets.finish(item.record.offset)

    def _stall(self, tp: TopicPartition) -> None:
        # Leaving the offset in flight blocks commits past it; the record is redelivered
        # after the next rebalance or restart. Better than committing past a lost event.
        log.error("partition %s stalls behind an event that could not be settled", tp)

    # -- one record ---------------------------------------------------------------------

    async def _process(self, record: Record, route: Route) -> None:
        started = time.perf_counter()
        if record.tp in self._lost:
            raise _Lost(record.tp)
        out: list[OutgoingRecord] = []
        outcome = await self._decide(record, route, out)
        out = [await self._claims.offload(r) for r in out]
        try:
            await self._delivery.deliver(out, record.tp, record.offset)
        except Fenced as exc:
            log.warning(
                "fenced out of %s[%d], abandoning offset %d and what follows: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            self._lost.add(record.tp)
            raise _Lost(record.tp) from exc
        outcome_name, parked_id = outcome
        if parked_id is not None and outcome_name != "retry_later":
            await self._until_done(lambda: self._unpark(route, record, parked_id))
        self.metrics.handler_seconds.labels(route.name, outcome_name).observe(
            time.perf_counter() - started
        )

    async def _decide(
        self, record: Record, route: Route, out: list[OutgoingRecord]
    ) -> tuple[str, str | None]:
        """Handle ``record``, collecting what to publish into ``out``. Returns the outcome
        and, for a record from the retry topic, the parked event id to clear once delivered."""
        from_retry = record.topic == self.catalog.name(route.topic, Kind.RETRY)
        attempt = int(header(record.headers, _ATTEMPT) or 0)
        if from_retry:
            await self._wait_until_due(record)
        try:
            resolved = await self._until_done(lambda: self._claims.resolve(record))
            event = decode(
                resolved.value,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except SchemaError as exc:
            await self._dead_letter(record, route, exc, attempt + 1, None, out)
            return "dead_letter", None
        parked = event.id if from_retry else None
        if not from_retry and await self._until_done(lambda: self._is_parked(route, record)):
            await self._to_retry(record, route, event, attempt, 0.0, out)
            return "parked", None
        conflicts = 0
        while True:
            attempt += 1
            try:
                await self._settle(
                    event.id,
                    route.name,
                    record,
                    attempt,
                    lambda ctx: route.handler(event, ctx),
                    out,
                )
                return "ok", parked
            except Exception as exc:
                if isinstance(exc, _CommitConflict) and conflicts < _MAX_CONFLICTS:
                    # Ordinary concurrency (two writers of one record): run again at once,
                    # without spending the retry budget.
                    conflicts += 1
                    attempt -= 1
                    await asyncio.sleep(random.uniform(0, 0.005 * conflicts))
                    continue
                verdict = self.config.retry.verdict(exc, attempt)
                if verdict is Verdict.RETRY_IN_PLACE or (
                    verdict is Verdict.RETRY_LATER and not self.config.use_retry_topic
                ):
                    self.metrics.retries.labels(record.topic, route.name, "in_place").inc()
                    log.warning(
                        "%s failed (attempt %d), retrying: %r",
                        route.name,
                        attempt,
                        exc,
                        extra=_fields(record, event),
                    )
                    await asyncio.sleep(self.config.retry.delay(exc, attempt, in_place=True))
                    continue
                if verdict is Verdict.RETRY_LATER:
                    delay = self.config.retry.delay(exc, attempt, in_place=False)
                    await self._to_retry(record, route, event, attempt, delay, out)
                    return "retry_later", parked
                await self._dead_letter(record, route, exc, attempt, event, out)
                return "dead_letter", parked

    async def _settle(
        self,
        mark_id: str,
        handler_name: str,
        record: Record | None,
        attempt: int,
        produce: Callable[[Context], Any],
        out: list[OutgoingRecord],
        partition: int = -1,
    ) -> None:
        """Run ``produce`` once per ``mark_id``: commit its writes with its outbox; add its
        outputs to ``out``. A mark that exists already gives back the recorded outputs."""
        mark_key = self._mark_key(mark_id)
        ctx = self._context(record, attempt, partition)
        # The dedup mark is not read first: the commit checks it anyway, and duplicates are
        # rare, so the mark is read only when the commit (or the handler) fails.
        try:
            try:
                outputs = list(await produce(ctx))
            except SkipEvent:
                outputs = []
        except Exception:
            if await self._replay_if_done(mark_key, handler_name, out):
                return
            raise
        records = self._encode(outputs)
        # The outbox holds the very bytes published: each event is serialised once.
        outbox = b"[" + b",".join(r.value for r in records if r.value is not None) + b"]"
        committed = await self.store.commit(
            expect=ctx.reads, ops=ctx.ops, mark=(mark_key, outbox, self.config.dedup_ttl_s)
        )
        if not committed:
            if await self._replay_if_done(mark_key, handler_name, out):
                return
            raise _CommitConflict(f"state changed while handling {mark_id}; handling again")
        out += records

    async def _replay_if_done(
        self, mark_key: str, handler_name: str, out: list[OutgoingRecord]
    ) -> bool:
        """Whether the event was handled before; if so its recorded outputs go to ``out``
        (the same bytes as the first time, so consumers drop them as duplicates)."""
        stored = await self.store.fetch(mark_key)
        if stored is None:
            return False
        self.metrics.duplicates.labels(handler_name).inc()
        out += self._encode(_outbox_events(stored))
        return True

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

    def _context(self, record: Record | None, attempt: int, partition: int = -1) -> Context:
        origin = Origin(
            topic=record.topic if record else "",
            partition=record.partition if record else partition,
            offset=record.offset if record else -1,
            group=self.config.group_id,
            attempt=attempt,
        )
        return Context(self.store, origin, self.config.namespace, self.now)

    def _encode(self, events: Sequence[Envelope[Any]]) -> list[OutgoingRecord]:
        records = []
        for event in events:
            key, value, headers = encode(event)
            records.append(OutgoingRecord(self.catalog.topic_of(event), value, key, tuple(headers)))
        return records

    def _backoff(self, error: BaseException, attempt: int) -> float:
        return min(5.0, self.config.retry.delay(error, attempt, in_place=True))

    async def _run_job(self, job: Job) -> None:
        for attempt in range(1, 1_000_000):
            out: list[OutgoingRecord] = []
            try:
                await self._settle(
                    job.mark_id, job.name, None, attempt, job.run, out, job.partition
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s failed (attempt %d): %r", job.name, attempt, exc)
                await asyncio.sleep(self.config.retry.delay(exc, attempt, in_place=True))
                continue
            out = [await self._claims.offload(r) for r in out]
            source = next(
                (tp for tp in sorted(self.assignment()) if tp.partition == job.partition), None
            )
            try:
                await self._delivery.deliver(out, source, None)
            except Fenced as exc:
                log.warning("abandoning job %s: %s", job.name, exc)
                return
            if job.delivered is not None:
                await self._until_done(job.delivered)
            return

    # -- retries and dead letters -------------------------------------------------------

    def _mark_key(self, mark_id: str) -> str:
        return f"{self.config.namespace}:done:{self.config.group_id}:{mark_id}"

    def _parked_index(self, route: Route, partition: int) -> str:
        return (
            f"{self.config.namespace}:parked:{self.config.group_id}:{route.topic.value}:{partition}"
        )

    async def _parked_keys(self, route: Route, partition: int) -> dict[str, set[str]]:
        """Keys of ``partition`` with events waiting in the retry topic, loaded from the
        store once per assignment and kept in memory (only this member parks or unparks
        them while it owns the partition)."""
        slot = (route.topic.value, partition)
        parked = self._parked.get(slot)
        if parked is None:
            # One load per slot, however many records of a fresh partition ask at once.
            loading = self._parked_loads.get(slot)
            if loading is None:
                loading = asyncio.ensure_future(self._load_parked(route, partition))
                self._parked_loads[slot] = loading
            parked = self._parked.setdefault(slot, await asyncio.shield(loading))
        return parked

    async def _load_parked(self, route: Route, partition: int) -> dict[str, set[str]]:
        parked: dict[str, set[str]] = {}
        try:
            for member, _ in await self.store.index_range(
                self._parked_index(route, partition), limit=1_000_000
            ):
                key, _, event_id = member.rpartition(_SEP)
                parked.setdefault(key, set()).add(event_id)
        finally:
            self._parked_loads.pop((route.topic.value, partition), None)
        return parked

    async def _is_parked(self, route: Route, record: Record) -> bool:
        parked = await self._parked_keys(route, record.partition)
        return bool(parked.get(_key_text(record)))

    async def _park(self, route: Route, record: Record, event_id: str) -> None:
        key = _key_text(record)
        await self.store.index_add(
            self._parked_index(route, record.partition), f"{key}{_SEP}{event_id}", time.time()
        )
        (await self._parked_keys(route, record.partition)).setdefault(key, set()).add(event_id)

    async def _unpark(self, route: Route, record: Record, event_id: str) -> None:
        key = _key_text(record)
        await self.store.index_remove(
            self._parked_index(route, record.partition), f"{key}{_SEP}{event_id}"
        )
        parked = await self._parked_keys(route, record.partition)
        waiting = parked.get(key, set())
        waiting.discard(event_id)
        if not waiting:
            parked.pop(key, None)

    async def _wait_until_due(self, record: Record) -> None:
        due_ms = int(header(record.headers, _DUE) or 0)
        delay = due_ms / 1000 - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _to_retry(
        self,
        record: Record,
        route: Route,
        event: Envelope[Any],
        attempt: int,
        delay_s: float,
        out: list[OutgoingRecord],
    ) -> None:
        """Move the event to the ``.retry`` topic, parking its key until it is settled."""
        origin = _origin(record)
        headers = [(k, v) for k, v in record.headers if k not in _RETRY_HEADERS]
        headers += [
            (_ATTEMPT, str(attempt).encode()),
            (_DUE, str(int((time.time() + delay_s) * 1000)).encode()),
            (_ORIGIN_TOPIC, origin[0].encode()),
            (_ORIGIN_PARTITION, str(origin[1]).encode()),
            (_ORIGIN_OFFSET, str(origin[2]).encode()),
            (_ORIGIN_TIMESTAMP, str(origin[3]).encode()),
        ]
        # Park before publishing: a crash in between leaves the key parked (safe: later
        # events follow into the retry topic); the other way round one could overtake.
        await self._until_done(lambda: self._park(route, record, event.id))
        retry_topic = self.catalog.name(route.topic, Kind.RETRY)
        out.append(OutgoingRecord(retry_topic, record.value, record.key, tuple(headers)))
        self.metrics.retries.labels(record.topic, route.name, "retry_topic").inc()
        log.info(
            "%s moves to %s (attempt %d, delay %.1fs)",
            event.id,
            retry_topic,
            attempt,
            delay_s,
            extra=_fields(record, event),
        )

    async def _dead_letter(
        self,
        record: Record,
        route: Route,
        error: BaseException,
        attempts: int,
        event: Envelope[Any] | None,
        out: list[OutgoingRecord],
    ) -> None:
        topic, partition, offset, timestamp = _origin(record)
        info = DeadLetter(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=timestamp,
            group=self.config.group_id,
            error_class=type(error).__name__,
            error_message=str(error)[:2000],
            stacktrace="".join(traceback.format_exception(error)),
            attempts=attempts,
            handler=route.name,
            failed_at=datetime.now(UTC),
        )
        original = [(k, v) for k, v in record.headers if k not in _RETRY_HEADERS]
        dlq = self.catalog.name(route.topic, Kind.DLQ)
        out.append(
            OutgoingRecord(
                dlq, record.value, record.key, tuple(dead_letter_headers(original, info))
            )
        )
        self.metrics.dead_letters.labels(topic, route.name, info.error_class).inc()
        log.error(
            "dead letter: %s[%d]@%d to %s after %d attempt(s): %s: %s",
            topic,
            partition,
            offset,
            dlq,
            attempts,
            info.error_class,
            info.error_message,
            extra=_fields(record, event),
        )
        hook = route.on_dead_letter
        if hook is None:
            return
        mark_id = f"dead-letter:{event.id if event else f'{topic}/{partition}/{offset}'}"
        for attempt in range(1, 20):
            try:
                await self._settle(
                    mark_id,
                    route.name,
                    record,
                    attempt,
                    lambda ctx: hook(event, record.value, error, ctx),
                    out,
                )
                return
            except Exception as exc:
                log.warning(
                    "dead-letter hook of %s failed (attempt %d): %r", route.name, attempt, exc
                )
                await asyncio.sleep(self.config.retry.delay(exc, attempt, in_place=True))

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
        self._jobs_held -= sum(
            1 for item in dropped if item.job is not None and item.record is None
        )
        await self._commit(revoked)
        async with self._ownership:
            await self._delivery.release(revoked)
            self._claimed -= revoked
            self._lost -= revoked
            for tp in revoked:
                self._skip_below.pop(tp, None)
        for tp in revoked:
            self._offsets.pop(tp, None)
            route = self._routes.get(tp.topic)
            if route is not None:
                self._parked.pop((route.topic.value, tp.partition), None)

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


def _key_text(record: Record) -> str:
    return (record.key or b"").decode(errors="replace")


def _origin(record: Record) -> tuple[str, int, int, int]:
    """The original topic, partition, offset and timestamp (through retry hops)."""
    topic = header(record.headers, _ORIGIN_TOPIC)
    if topic is None:
        return record.topic, record.partition, record.offset, record.timestamp_ms
    return (
        topic,
        int(header(record.headers, _ORIGIN_PARTITION) or -1),
        int(header(record.headers, _ORIGIN_OFFSET) or -1),
        int(header(record.headers, _ORIGIN_TIMESTAMP) or 0),
    )


def _fields(record: Record, event: Envelope[Any] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if event is not None:
        fields["request_id"] = event.request_id
    return fields


def _outbox_events(raw: bytes) -> list[Envelope[Any]]:
    return [EVENT_TYPES[item["type"]].model_validate(item) for item in json.loads(raw)]
