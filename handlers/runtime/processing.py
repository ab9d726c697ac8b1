"""Processing one record or one job: decode, dedup, the handler, retries, outputs.

This is the path every consumed record takes once its lane runs it, and the path
:meth:`agentstream.handlers.runtime.worker.Worker.process_record` offers runners without a consumer
loop (the Lambda handler). A retry copy or a replay meant for another consumer group is passed
by first (:mod:`agentstream.handlers.runtime.addressing`). The retry policy
(:mod:`agentstream.handlers.runtime.retries`) decides after each failed attempt: again in
place, to the retry topic (:mod:`agentstream.handlers.runtime.parking`) or to the dead-letter
topic (:mod:`agentstream.handlers.runtime.dead_letters`). What handling produced is
delivered as a whole, then a key parked behind this event is unparked: in that order, so a later
event of the key cannot overtake outputs not yet delivered. Store steps that must not fail the
event wait out outages instead (``until_done``), the record staying in flight meanwhile.

A record that landed after its accept-by deadline (:mod:`agentstream.topics.deadline`) was
answered as refused by its producer: it is not handled, whatever the consumer group, and
only a route's ``on_refused`` (the ingress projection, which records the refusal) sees it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentstream.handlers.runtime.addressing import addressee
from agentstream.handlers.runtime.claims import ClaimCheck
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.dead_letters import DeadLetters
from agentstream.handlers.runtime.delivery import Delivery, Fenced
from agentstream.handlers.runtime.log_fields import log_fields
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.outbox import CommitConflict, Outbox
from agentstream.handlers.runtime.parking import Parking, UntilDone, attempt_of, wait_until_due
from agentstream.handlers.runtime.retries import RetryPolicy, Verdict
from agentstream.handlers.runtime.route import Job, Route
from agentstream.schemas import Envelope, SchemaError, decode
from agentstream.topics import Catalog, Kind, OutgoingRecord, Record, TopicPartition
from agentstream.topics.deadline import landed_late

__all__ = ["Lost", "Processor"]

log = logging.getLogger(__name__)

_MAX_CONFLICTS = 50


class Lost(Exception):
    """The partition was lost to a newer owner (exactly_once fencing)."""


class Processor:
    def __init__(
        self,
        catalog: Catalog,
        metrics: RuntimeMetrics,
        claims: ClaimCheck,
        delivery: Delivery,
        outbox: Outbox,
        parking: Parking,
        dead_letters: DeadLetters,
        until_done: UntilDone,
        *,
        retry: RetryPolicy,
        use_retry_topic: bool,
        lost: set[TopicPartition],
        assignment: Callable[[], set[TopicPartition]],
    ) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.claims = claims
        self.delivery = delivery
        self.outbox = outbox
        self.parking = parking
        self.dead_letters = dead_letters
        self.retry = retry
        self.use_retry_topic = use_retry_topic
        #: The worker's own set of fenced partitions (shared, not copied).
        self.lost = lost
        self._until_done = until_done
        self._assignment = assignment

    async def process(self, record: Record, route: Route) -> None:
        started = time.perf_counter()
        if record.tp in self.lost:
            raise Lost(record.tp)
        out: list[OutgoingRecord] = []
        outcome = await self._decide(record, route, out)
        out = [await self.claims.offload(r) for r in out]
        try:
            await self.delivery.deliver(out, record.tp, record.offset)
        except Fenced as exc:
            log.warning(
                "fenced out of %s[%d], abandoning offset %d and what follows: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            self.lost.add(record.tp)
            raise Lost(record.tp) from exc
        outcome_name, parked_id = outcome
        if parked_id is not None and outcome_name != "retry_later":
            await self._until_done(lambda: self.parking.unpark(route, record, parked_id))
        self.metrics.handler_seconds.labels(route.name, outcome_name).observe(
            time.perf_counter() - started
        )

    async def _decide(
        self, record: Record, route: Route, out: list[OutgoingRecord]
    ) -> tuple[str, str | None]:
        """Handle ``record``, collecting what to publish into ``out``. Returns the outcome
        and, for a record from the retry topic, the parked event id to clear once delivered."""
        from_retry = record.topic == self.catalog.name(route.topic, Kind.RETRY)
        if not await self._meant_for_us(record, route, from_retry):
            return "other_group", None
        if not from_retry and landed_late(record):
            # (A record in the retry topic was admitted when first read from the main one.)
            return await self._refused(record, route, out)
        attempt = attempt_of(record)
        if from_retry:
            await wait_until_due(record)
        try:
            resolved = await self._until_done(lambda: self.claims.resolve(record))
            event = _decode(resolved, record)
        except SchemaError as exc:
            await self.dead_letters.dead_letter(record, route, exc, attempt + 1, None, out)
            return "dead_letter", None
        event_id = event.id
        parked = event_id if from_retry else None
        if not from_retry and await self._until_done(lambda: self.parking.is_parked(route, record)):
            await self.parking.to_retry(record, route, event, attempt, 0.0, out)
            return "parked", None
        # The handler takes the decoded event; this frame keeps only the record's bytes while
        # the handler runs (thousands of handlers await a model at once, ADR 24), and decodes
        # them again, to the same event, for another attempt or a failure's bookkeeping.
        handed = [event]
        del event

        def handle(ctx: Context) -> Awaitable[Sequence[Envelope[Any]]]:
            return route.handler(handed.pop() if handed else _decode(resolved, record), ctx)

        conflicts = 0
        while True:
            attempt += 1
            try:
                await self.outbox.settle(event_id, route.name, record, attempt, handle, out)
                return "ok", parked
            except Exception as exc:
                if isinstance(exc, CommitConflict) and conflicts < _MAX_CONFLICTS:
                    # Ordinary concurrency (two writers of one record): run again at once,
                    # without spending the retry budget.
                    conflicts += 1
                    attempt -= 1
                    await asyncio.sleep(random.uniform(0, 0.005 * conflicts))
                    continue
                event = _decode(resolved, record)
                verdict = self.retry.verdict(exc, attempt)
                if verdict is Verdict.RETRY_IN_PLACE or (
                    verdict is Verdict.RETRY_LATER and not self.use_retry_topic
                ):
                    self.metrics.retries.labels(record.topic, route.name, "in_place").inc()
                    log.warning(
                        "%s failed (attempt %d), retrying: %r",
                        route.name,
                        attempt,
                        exc,
                        extra=log_fields(record, event),
                    )
                    await asyncio.sleep(self.retry.delay(exc, attempt, in_place=True))
                    continue
                if verdict is Verdict.RETRY_LATER:
                    delay = self.retry.delay(exc, attempt, in_place=False)
                    await self.parking.to_retry(record, route, event, attempt, delay, out)
                    return "retry_later", parked
                await self.dead_letters.dead_letter(record, route, exc, attempt, event, out)
                return "dead_letter", parked

    async def _meant_for_us(self, record: Record, route: Route, from_retry: bool) -> bool:
        """Whether this group acts on ``record``: a retry copy or a replay meant for another
        group is passed by at once, without effect (ADR 17). A retry copy that names no
        group (written before the header existed) is ours when our key is parked."""
        group = addressee(record, from_retry=from_retry)
        if group is not None:
            return group == self.parking.group_id
        if not from_retry:
            return True
        return await self._until_done(lambda: self.parking.is_parked(route, record))

    async def _refused(
        self, record: Record, route: Route, out: list[OutgoingRecord]
    ) -> tuple[str, str | None]:
        """A record its producer answered as refused: never handled; ``on_refused`` (when
        the route has one) runs in its place, settled like a handler (once per event id)."""
        hook = route.on_refused
        log.info(
            "%s: record appended after its accept-by deadline, refused: not handled",
            route.name,
            extra=log_fields(record, None),
        )
        if hook is None:
            return "refused", None
        try:
            resolved = await self._until_done(lambda: self.claims.resolve(record))
            event = decode(resolved.value)
        except SchemaError:
            return "refused", None
        for attempt in range(1, 1_000_000):
            try:
                # Its own mark: the event id may still come in time in another record.
                await self.outbox.settle(
                    f"{event.id}:refused",
                    route.name,
                    record,
                    attempt,
                    lambda ctx: hook(event, ctx),
                    out,
                )
                return "refused", None
            except Exception as exc:
                # A refusal record is bookkeeping, not work: retried in place, never parked
                # or dead-lettered.
                log.warning("%s (refused record) failed, retrying: %r", route.name, exc)
                await asyncio.sleep(self.retry.delay(exc, attempt, in_place=True))
        raise AssertionError("unreachable")

    async def run_job(self, job: Job) -> None:
        for attempt in range(1, 1_000_000):
            out: list[OutgoingRecord] = []
            try:
                await self.outbox.settle(
                    job.mark_id, job.name, None, attempt, job.run, out, job.partition
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job %s failed (attempt %d): %r", job.name, attempt, exc)
                await asyncio.sleep(self.retry.delay(exc, attempt, in_place=True))
                continue
            out = [await self.claims.offload(r) for r in out]
            source = next(
                (tp for tp in sorted(self._assignment()) if tp.partition == job.partition), None
            )
            try:
                await self.delivery.deliver(out, source, None)
            except Fenced as exc:
                log.warning("abandoning job %s: %s", job.name, exc)
                return
            if job.delivered is not None:
                await self._until_done(job.delivered)
            return


def _decode(resolved: Record, record: Record) -> Envelope[Any]:
    """The event in ``resolved`` (``record`` with a claim-checked payload fetched back),
    errors naming where ``record`` is."""
    return decode(
        resolved.value, topic=record.topic, partition=record.partition, offset=record.offset
    )
