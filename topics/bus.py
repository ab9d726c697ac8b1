"""The one small protocol every bus implements: the Kafka bus and the in-process bus.

The handler runtime, the ingress and the CLI see only these types. Semantics the runtime
relies on, and that both implementations hold (the contract tests in ``tests/contract/``
check them on both):

- ``publish`` returns only once the broker acknowledged the record (acks=all); the record's
  partition is the one Kafka's default partitioner picks for its key (murmur2).
- A consumer joins a group; the group splits the topics' partitions among its members; a
  member reads a partition from the group's committed offset (or the earliest offset when
  nothing was committed yet).
- ``commit`` stores, per partition, the offset of the *next* record to read, as Kafka does.
- A member that leaves (or dies) without committing has its uncommitted records delivered
  again to whichever member gets the partition next.
- ``pause`` stops fetching from partitions without leaving the group; ``resume`` restarts it.
- ``on_revoke`` gets at least the partitions being lost (on Kafka, with the eager protocol,
  all of them) while the member still owns them: commits made inside it succeed. After the
  handover, ``commit`` for a lost partition raises :class:`RebalanceInProgress`, so a zombie
  cannot move the group's offsets. ``stop`` does not call ``on_revoke``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from agentstream.schemas.errors import PermanentError, RetryableError

__all__ = [
    "Bus",
    "Consumer",
    "Headers",
    "OutgoingRecord",
    "RebalanceInProgress",
    "Record",
    "RecordMetadata",
    "RecordTooLarge",
    "RevokeCallback",
    "TopicDescription",
    "TopicPartition",
]

Headers = tuple[tuple[str, bytes], ...]


class RebalanceInProgress(RetryableError):
    """A commit for partitions this member no longer owns: the group moved on without it."""


class Fenced(PermanentError):
    """A newer instance took over this transactional id: this one is a zombie and must stop
    working on the partition (its transaction was not committed)."""


class RecordTooLarge(PermanentError):
    """A record bigger than the broker accepts; large payloads go aside (claim check)."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """A record read from a topic. ``timestamp_ms``: the broker's append time on a
    ``LogAppendTime`` topic, else the producer's."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to publish. ``partition`` None: chosen from ``key`` by the default partitioner."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where the broker stored a published record. ``timestamp_ms`` is the record's
    timestamp; ``log_append_time`` says whether it is the broker's append time (a
    ``LogAppendTime`` topic, and the in-process bus) or the producer's (``CreateTime``)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    log_append_time: bool = False


@dataclass(frozen=True, slots=True)
class TopicDescription:
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


#: Called with the partitions a member is about to lose, before they are reassigned. The
#: runtime drains or abandons their in-flight work and commits what finished in it.
RevokeCallback = Callable[[set[TopicPartition]], Awaitable[None]]


@runtime_checkable
class Consumer(Protocol):
    """One member of a consumer group."""

    group_id: str

    async def start(self) -> None:
        """Join the group. Raises ``TopicMissing`` when a subscribed topic does not exist."""

    async def getmany(self, timeout_ms: int = 100, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` records of the assigned, unpaused partitions, in offset order
        per partition; an empty list when nothing arrives within ``timeout_ms``."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store ``offsets`` (next offset to read) for the group."""

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp``, None when nothing was committed."""

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns now."""

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as last seen by this member (for the lag metric),
        None when not known yet. Never a broker round trip."""

    async def stop(self) -> None:
        """Leave the group without committing anything more."""


@runtime_checkable
class Transactions(Protocol):
    """One transactional producer (``exactly_once`` mode).

    The Kafka bus keeps one per input partition, with a stable ``transactional.id`` derived
    from the group and the partition: when the partition moves, the new owner's producer
    fences the old one, so a paused zombie can never commit (Kafka Streams' design before
    KIP-447, which aiokafka's ``send_offsets_to_transaction`` cannot use).
    """

    async def commit(
        self,
        records: Sequence[OutgoingRecord],
        offsets: Mapping[TopicPartition, int],
        group_id: str,
    ) -> None:
        """Publish ``records`` and commit ``offsets`` for ``group_id`` in one transaction.
        Raises :class:`Fenced` when a newer producer took over, ``RetryableError`` when the
        transaction was aborted for a passing reason (it may be retried as a whole)."""

    async def close(self) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """Publishing, consuming and topic admin, on Kafka or in process."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        """Publish one record; returns once acknowledged. ``TopicMissing`` if the topic is
        absent, ``RetryableError`` when the broker cannot be reached in time."""

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        """Publish records concurrently; returns once every one is acknowledged."""

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None = None,
        read_committed: bool = False,
    ) -> Consumer:
        """A new, not yet started, member of ``group_id`` subscribed to ``topics``."""

    async def transactions(self, transactional_id: str) -> Transactions:
        """A started transactional producer; starting it fences older ones of the same id.
        ``ConfigError`` on a bus without transactions."""

    async def create_topics(
        self,
        specs: Sequence[TopicDescription],
    ) -> list[str]:
        """Create the topics that do not exist yet; return the names created. Idempotent."""

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        """Descriptions of the named topics that exist (absent ones are left out)."""

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next published record of each partition will get (high watermark)."""

    async def read(
        self,
        topic: str,
        *,
        start: Mapping[int, int] | None = None,
        read_committed: bool = True,
        idle_ms: int = 500,
    ) -> list[Record]:
        """Every record of ``topic`` from ``start`` (partition to offset; default earliest)
        up to the end offsets at call time, outside any consumer group. For tools and tests
        (``tail``, ``dlq list``, invariant checks)."""
