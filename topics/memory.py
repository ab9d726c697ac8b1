"""The in-process bus: the embedded default behind ``agentstream up``, Kafka's semantics in memory.

It exists so the whole pipeline runs with no broker at all, and so the runtime's guarantees
can be tested fast; it is held to Kafka's behaviour by the contract tests in
``tests/contract/``, which run every case on both buses. Topics have partitions and offsets;
keyed records land on the partition Kafka's default partitioner picks; consumer groups
split partitions, rebalance on join and leave, and redeliver what was not committed (see
:mod:`agentstream.topics.memory_group`). Like a worker on Kafka, it never creates topics behind the
caller's back unless ``auto_create`` is on: publishing to or subscribing to a missing topic
raises :class:`~agentstream.schemas.errors.TopicMissing`.

Not simulated: transactions (``read_committed`` is accepted and ignored), retention,
replication, and the delay before a group notices a dead member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agentstream.schemas.errors import ConfigError, TopicMissing
from agentstream.topics.bus import (
    OutgoingRecord,
    RebalanceInProgress,
    Record,
    RecordMetadata,
    RecordTooLarge,
    RevokeCallback,
    TopicDescription,
    TopicPartition,
    Transactions,
)
from agentstream.topics.memory_group import Group, GroupSnapshot, InProcessConsumer
from agentstream.topics.memory_log import TopicLog
from agentstream.topics.partitioner import Partitioner

__all__ = [
    "GroupSnapshot",
    "InProcessBus",
    "InProcessConsumer",
    "RebalanceInProgress",
    "RecordTooLarge",
]

#: What the Kafka bus lets its producer send (``max_request_size``), so an event that
#: would not fit on Kafka does not pass unnoticed in process either.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024


def _missing(topic: str) -> TopicMissing:
    return TopicMissing(
        f"topic {topic!r} does not exist; create it with `agentstream topics create` "
        "(workers never rely on broker auto-creation)"
    )


class InProcessBus:
    """The :class:`agentstream.topics.bus.Bus` protocol in one asyncio process.

    ``default_partitions`` is used for topics created by ``auto_create`` (off by default,
    as on a production Kafka cluster). ``max_record_bytes`` bounds key, value and headers of
    one record, like the broker's ``message.max.bytes``.
    """

    def __init__(
        self,
        *,
        default_partitions: int = 12,
        auto_create: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if default_partitions < 1:
            raise ValueError(f"default_partitions must be at least 1, not {default_partitions}")
        self.default_partitions = default_partitions
        self.auto_create = auto_create
        self.max_record_bytes = max_record_bytes
        self._logs: dict[str, TopicLog] = {}
        self._groups: dict[str, Group] = {}
        self._partitioner = Partitioner()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        """Refuse further publishing; the logs and committed offsets are kept."""
        self._started = False

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        return (await self.publish_many([record]))[0]

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        # Checked before anything is appended, so a missing topic or an oversized record
        # publishes none of the batch.
        self._require_topics(sorted({r.topic for r in records}))
        for record in records:
            self._check_size(record)
        return [self._append(record) for record in records]

    def _append(self, record: OutgoingRecord) -> RecordMetadata:
        log = self._logs[record.topic]
        partition = record.partition
        if partition is None:
            partition = self._partitioner(record.topic, record.key, log.partitions)
        stored = log.append(partition, record.key, record.value, record.headers)
        for group in self._groups.values():
            group.notify(stored.tp)
        # Stamped at the append, as a LogAppendTime topic is (topics/deadline.py).
        return RecordMetadata(
            stored.topic, stored.partition, stored.offset, stored.timestamp_ms, True
        )

    def _check_size(self, record: OutgoingRecord) -> None:
        size = len(record.key or b"") + len(record.value or b"")
        size += sum(len(name.encode()) + len(value) for name, value in record.headers)
        if size > self.max_record_bytes:
            raise RecordTooLarge(
                f"record of {size} bytes for topic {record.topic!r} exceeds the limit of "
                f"{self.max_record_bytes} bytes; store large payloads aside and send a reference"
            )

    # -- consuming --------------------------------------------------------------------------

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None = None,
        read_committed: bool = False,
    ) -> InProcessConsumer:
        if not topics:
            raise ValueError("a consumer subscribes to at least one topic")
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = Group(group_id, self._logs)
        return InProcessConsumer(
            group, topics, on_revoke=on_revoke, require_topics=self._require_topics
        )

    def describe_group(self, group_id: str) -> GroupSnapshot | None:
        """Members, assignments and committed offsets of ``group_id``; None if never used."""
        group = self._groups.get(group_id)
        return None if group is None else group.snapshot()

    def groups(self) -> list[str]:
        return sorted(self._groups)

    # -- topics -----------------------------------------------------------------------------

    async def transactions(self, transactional_id: str) -> Transactions:
        raise ConfigError(
            "exactly_once delivery needs Kafka transactions; the in-process bus runs "
            "at_least_once (set AGENTSTREAM_RUNTIME__DELIVERY=at_least_once)"
        )

    async def create_topics(self, specs: Sequence[TopicDescription]) -> list[str]:
        self._check_started()
        created: list[str] = []
        for spec in specs:
            if spec.name not in self._logs:
                self._logs[spec.name] = TopicLog(spec)
                created.append(spec.name)
        return created

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        self._check_started()
        return {n: self._logs[n].description for n in names if n in self._logs}

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self._require_topics(sorted({tp.topic for tp in tps}))
        return {tp: self._logs[tp.topic].end_offset(tp.partition) for tp in tps}

    async def read(
        self,
        topic: str,
        *,
        start: Mapping[int, int] | None = None,
        read_committed: bool = True,
        idle_ms: int = 500,
    ) -> list[Record]:
        self._require_topics([topic])
        log = self._logs[topic]
        start = start or {}
        return [
            record
            for partition in range(log.partitions)
            for record in log.read(partition, start.get(partition, 0))
        ]

    def _require_topics(self, names: Sequence[str]) -> None:
        self._check_started()
        for name in names:
            if name in self._logs:
                continue
            if not self.auto_create:
                raise _missing(name)
            self._logs[name] = TopicLog(TopicDescription(name, self.default_partitions, 1))

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("InProcessBus is not started")
