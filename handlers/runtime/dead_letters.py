"""Dead letters: an event that cannot be handled goes to its topic's ``.dlq`` sibling.

The dead letter carries the original bytes, key and headers (minus the ``x-retry-*`` ones)
plus ``x-dlq-*`` headers describing the failure (:class:`schemas.DeadLetter`: where the event
was first read, however many retry hops it took, the group, the handler, the error and its
stack trace, the attempts). A route may have an ``on_dead_letter`` hook (to tell the user
their request failed, say); it runs once per dead letter like a handler, through the outbox,
and is retried in place until it works or its attempts run out.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

from agentstream.handlers.runtime.log_fields import log_fields
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.outbox import Outbox
from agentstream.handlers.runtime.parking import RETRY_HEADERS, origin
from agentstream.handlers.runtime.retries import RetryPolicy, is_permanent
from agentstream.handlers.runtime.route import Route
from agentstream.schemas import DeadLetter, Envelope, RetryableError, dead_letter_headers
from agentstream.topics import Catalog, Kind, OutgoingRecord, Record

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)

#: Attempts of a hook failing for a passing reason (about 30 s with the in-place backoff).
_HOOK_ATTEMPTS = 19


class DeadLetters:
    def __init__(
        self,
        catalog: Catalog,
        metrics: RuntimeMetrics,
        outbox: Outbox,
        retry: RetryPolicy,
        *,
        group_id: str,
    ) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.outbox = outbox
        self.retry = retry
        self.group_id = group_id

    async def dead_letter(
        self,
        record: Record,
        route: Route,
        error: BaseException,
        attempts: int,
        event: Envelope[Any] | None,
        out: list[OutgoingRecord],
    ) -> None:
        """Add the dead letter of ``record`` to ``out``, then run the route's hook, if any."""
        topic, partition, offset, timestamp = origin(record)
        info = DeadLetter(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=timestamp,
            group=self.group_id,
            error_class=type(error).__name__,
            error_message=str(error)[:2000],
            stacktrace="".join(traceback.format_exception(error)),
            attempts=attempts,
            handler=route.name,
            failed_at=datetime.now(UTC),
        )
        original = [(k, v) for k, v in record.headers if k not in RETRY_HEADERS]
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
            extra=log_fields(record, event),
        )
        hook = route.on_dead_letter
        if hook is None:
            return
        mark_id = f"dead-letter:{event.id if event else f'{topic}/{partition}/{offset}'}"
        for attempt in range(1, _HOOK_ATTEMPTS + 1):
            try:
                await self.outbox.settle(
                    mark_id,
                    route.name,
                    record,
                    attempt,
                    lambda ctx: hook(event, record.value, error, ctx),
                    out,
                )
                return
            except Exception as exc:
                if self._gives_up(exc, attempt):
                    log.error(
                        "dead-letter hook of %s failed for good (attempt %d), the dead letter "
                        "is all there is: %r",
                        route.name,
                        attempt,
                        exc,
                        extra=log_fields(record, event),
                    )
                    return
                log.warning(
                    "dead-letter hook of %s failed (attempt %d): %r", route.name, attempt, exc
                )
                await asyncio.sleep(self.retry.delay(exc, attempt, in_place=True))

    def _gives_up(self, error: BaseException, attempt: int) -> bool:
        if is_permanent(error) or attempt >= _HOOK_ATTEMPTS:
            return True
        return not isinstance(error, RetryableError) and attempt >= self.retry.max_attempts
