"""The retry topic, and the keys parked behind it so that retries keep order per key.

An event that fails past its in-place attempts moves to its topic's ``.retry`` sibling with
``x-retry-*`` headers: the attempt count, when it is due, where it was first read (so a
dead letter names the original position, however many hops it took) and the consumer group
it is for (only that group acts on it: :mod:`agentstream.handlers.runtime.addressing`). While
an event of a key waits there, its key is *parked*: later events of that key follow it into
the retry topic instead of overtaking it, and the key is unparked once the retried event is
settled and delivered. Parking is per consumer group: the parked keys of a group's partition live in
a store index of that group (so the next owner of the partition knows them) and in memory
while this member owns the partition; another group's retries never park or unpark them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from agentstream.handlers.runtime.addressing import RETRY_GROUP
from agentstream.handlers.runtime.log_fields import log_fields
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.route import Route
from agentstream.handlers.stores.base import StateStore
from agentstream.schemas import Envelope, header
from agentstream.topics import Catalog, Kind, OutgoingRecord, Record

__all__ = ["RETRY_HEADERS", "Parking", "UntilDone", "attempt_of", "origin", "wait_until_due"]

log = logging.getLogger(__name__)

_ATTEMPT = "x-retry-attempt"
_DUE = "x-retry-due"
_ORIGIN_TOPIC = "x-retry-origin-topic"
_ORIGIN_PARTITION = "x-retry-origin-partition"
_ORIGIN_OFFSET = "x-retry-origin-offset"
_ORIGIN_TIMESTAMP = "x-retry-origin-timestamp"
RETRY_HEADERS = (
    _ATTEMPT,
    _DUE,
    _ORIGIN_TOPIC,
    _ORIGIN_PARTITION,
    _ORIGIN_OFFSET,
    _ORIGIN_TIMESTAMP,
    RETRY_GROUP,
)

_SEP = "\x1f"  # between a key and an event id in the parked index (ids are UUIDs)
T = TypeVar("T")


class UntilDone(Protocol):
    """Runs a store step that must not fail the event, waiting out store outages."""

    def __call__(self, step: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


class Parking:
    def __init__(
        self,
        store: StateStore,
        catalog: Catalog,
        metrics: RuntimeMetrics,
        until_done: UntilDone,
        *,
        group_id: str,
        namespace: str,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.group_id = group_id
        self.namespace = namespace
        self._until_done = until_done
        self._parked: dict[tuple[str, int], dict[str, set[str]]] = {}
        self._parked_loads: dict[tuple[str, int], asyncio.Future[dict[str, set[str]]]] = {}

    def _parked_index(self, route: Route, partition: int) -> str:
        return f"{self.namespace}:parked:{self.group_id}:{route.topic.value}:{partition}"

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

    def forget(self, route: Route, partition: int) -> None:
        """The partition was revoked: its parked keys are loaded again if it comes back."""
        self._parked.pop((route.topic.value, partition), None)

    async def is_parked(self, route: Route, record: Record) -> bool:
        parked = await self._parked_keys(route, record.partition)
        return bool(parked.get(_key_text(record)))

    async def _park(self, route: Route, record: Record, event_id: str) -> None:
        key = _key_text(record)
        await self.store.index_add(
            self._parked_index(route, record.partition), f"{key}{_SEP}{event_id}", time.time()
        )
        (await self._parked_keys(route, record.partition)).setdefault(key, set()).add(event_id)

    async def unpark(self, route: Route, record: Record, event_id: str) -> None:
        key = _key_text(record)
        await self.store.index_remove(
            self._parked_index(route, record.partition), f"{key}{_SEP}{event_id}"
        )
        parked = await self._parked_keys(route, record.partition)
        waiting = parked.get(key, set())
        waiting.discard(event_id)
        if not waiting:
            parked.pop(key, None)

    async def to_retry(
        self,
        record: Record,
        route: Route,
        event: Envelope[Any],
        attempt: int,
        delay_s: float,
        out: list[OutgoingRecord],
    ) -> None:
        """Move the event to the ``.retry`` topic, parking its key until it is settled."""
        first = origin(record)
        headers = [(k, v) for k, v in record.headers if k not in RETRY_HEADERS]
        headers += [
            (_ATTEMPT, str(attempt).encode()),
            (_DUE, str(int((time.time() + delay_s) * 1000)).encode()),
            (_ORIGIN_TOPIC, first[0].encode()),
            (_ORIGIN_PARTITION, str(first[1]).encode()),
            (_ORIGIN_OFFSET, str(first[2]).encode()),
            (_ORIGIN_TIMESTAMP, str(first[3]).encode()),
            (RETRY_GROUP, self.group_id.encode()),
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
            extra=log_fields(record, event),
        )


def attempt_of(record: Record) -> int:
    """Attempts the event had before this delivery (0 unless it comes from the retry topic)."""
    return int(header(record.headers, _ATTEMPT) or 0)


async def wait_until_due(record: Record) -> None:
    due_ms = int(header(record.headers, _DUE) or 0)
    delay = due_ms / 1000 - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def origin(record: Record) -> tuple[str, int, int, int]:
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


def _key_text(record: Record) -> str:
    return (record.key or b"").decode(errors="replace")
