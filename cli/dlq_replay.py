"""Replaying dead letters: republish the original records to their original topic.

:func:`replay` republishes the original bytes and key to the original topic, so the record
runs through the same handlers again once its cause is fixed. Replayed records carry
``x-replayed-from: <dlq topic>/<partition>/<offset>`` and ``x-replayed-group``, the consumer
group that dead-lettered it: only that group acts on the replay, the others pass it by
(docs/adr/0017-retries-belong-to-their-group.md). They lose the ``x-dlq-*`` and ``x-retry-*``
headers, and the ``x-accept-by`` deadline of a request the ingress accepted (the replay is
appended long after it: kept, it would make the request refused,
:mod:`agentstream.topics.deadline`); the group deduplicates them by event id like any
redelivery, so replaying an event whose processing completed since is a no-op
(docs/adr/0007-dlq-replay.md).
Before replaying, :func:`already_replayed` scans the target topics (from the earliest selected
dead letter on, when that is cheap) for earlier replays of the same dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from agentstream.dlq import DeadLetterEntry, utc_iso
from agentstream.handlers.runtime.addressing import REPLAY_GROUP
from agentstream.schemas import header
from agentstream.schemas.errors import AgentstreamError
from agentstream.topics import (
    Bus,
    Catalog,
    Headers,
    Kind,
    OutgoingRecord,
    RecordMetadata,
    TopicPartition,
)
from agentstream.topics.deadline import ACCEPT_BY

__all__ = [
    "REPLAYED_AT",
    "REPLAYED_FROM",
    "REPLAY_GROUP",
    "SCAN_LIMIT",
    "ReplayFailed",
    "already_replayed",
    "replay",
    "replay_record",
    "target_topic",
]

REPLAYED_FROM = "x-replayed-from"
REPLAYED_AT = "x-replayed-at"
_DROPPED_ON_REPLAY = ("x-dlq-", "x-retry-", "x-replayed-", ACCEPT_BY)
_BATCH = 100
#: The replay check reads the target topics from the earliest selected dead letter on; past
#: this many records it is skipped rather than read a busy topic for minutes.
SCAN_LIMIT = 100_000
#: Producer clocks differ between hosts: the replay check starts this much earlier.
_SKEW = timedelta(minutes=5)


class ReplayFailed(AgentstreamError):
    """Publishing stopped part way; ``done`` says what was replayed before it did."""

    def __init__(self, message: str, done: list[RecordMetadata]) -> None:
        super().__init__(message)
        self.done = done


def target_topic(entry: DeadLetterEntry, catalog: Catalog) -> str:
    """Where a replay goes: ``x-dlq-topic`` when it is a main topic of this deployment, else
    (a ``.retry`` topic, a foreign name, no header) the main topic of the dead letter's topic."""
    spec = catalog.resolve(entry.info.topic) if entry.info else None
    return spec.name if spec is not None and spec.kind is Kind.MAIN else catalog.name(entry.topic)


def replay_record(entry: DeadLetterEntry, catalog: Catalog, *, at: datetime) -> OutgoingRecord:
    """The original bytes, key and headers (minus ``x-dlq-*``, ``x-retry-*``, an earlier
    replay's ``x-replayed-*`` and ``x-accept-by``), plus where it was replayed from, when, and
    for which group (none when the dead letter does not say: then every group of the topic
    gets it)."""
    r = entry.record
    kept = tuple((k, v) for k, v in r.headers if not k.startswith(_DROPPED_ON_REPLAY))
    marks: Headers = (
        (REPLAYED_FROM, entry.coordinates.encode()),
        (REPLAYED_AT, utc_iso(at).encode()),
    )
    if entry.info is not None and entry.info.group:
        marks += ((REPLAY_GROUP, entry.info.group.encode()),)
    return OutgoingRecord(target_topic(entry, catalog), r.value, r.key, kept + marks)


async def replay(
    bus: Bus,
    records: Sequence[OutgoingRecord],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[RecordMetadata]:
    """Publish ``records`` in order, in batches; ``ReplayFailed`` says how far it got."""
    done: list[RecordMetadata] = []
    for i in range(0, len(records), _BATCH):
        try:
            done += await bus.publish_many(records[i : i + _BATCH])
        except Exception as exc:
            raise ReplayFailed(
                f"replay stopped: {len(done)} of {len(records)} record(s) confirmed, up to "
                f"{min(_BATCH, len(records) - len(done))} more may have been published "
                f"(run again with --skip-replayed to go on): {exc}",
                done,
            ) from exc
        progress(len(done), len(records))
    return done


async def already_replayed(
    bus: Bus, catalog: Catalog, entries: Sequence[DeadLetterEntry], *, limit: int = SCAN_LIMIT
) -> set[str] | None:
    """The coordinates of ``entries`` found in an ``x-replayed-from`` header of their target
    topics; None when that would mean reading more than ``limit`` records."""
    since: dict[str, int] = {}
    for e in entries:
        name = target_topic(e, catalog)
        since[name] = min(since.get(name, e.record.timestamp_ms), e.record.timestamp_ms)
    starts: dict[str, dict[int, int]] = {}
    for name, ms in since.items():
        described = await bus.describe_topics([name])
        if name not in described:
            continue
        starts[name] = await _offsets_since(bus, name, described[name].partitions, ms)
        ends = await bus.end_offsets([TopicPartition(name, p) for p in starts[name]])
        limit -= sum(end - starts[name][tp.partition] for tp, end in ends.items())
        if limit < 0:
            return None
    wanted = {e.coordinates for e in entries}
    found: set[str] = set()
    for name, start in starts.items():
        for record in await bus.read(name, start=start):
            source = header(record.headers, REPLAYED_FROM)
            if source in wanted:
                found.add(source)
    return found


async def _offsets_since(bus: Bus, name: str, partitions: int, ms: int) -> dict[int, int]:
    """Per partition, the first offset at or after ``ms`` minus the clock skew (Kafka's time
    index); on other buses, the beginning."""
    from agentstream.topics.kafka import KafkaBus

    if not isinstance(bus, KafkaBus):
        return dict.fromkeys(range(partitions), 0)
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as KafkaTP

    tps = [KafkaTP(name, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **bus.config.client_options())
    await consumer.start()
    try:
        at = max(0, ms - int(_SKEW.total_seconds() * 1000))
        found = await consumer.offsets_for_times(dict.fromkeys(tps, at))
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}
