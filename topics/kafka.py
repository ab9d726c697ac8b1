"""The Kafka bus: the :class:`~agentstream.topics.bus.Bus` protocol on aiokafka.

Producer: ``acks="all"`` with the idempotent producer, so a publish that returned is on every
in-sync replica and a retried send never writes twice. Consumers: manual commits only
(``enable_auto_commit=False``), ``auto_offset_reset="earliest"`` so a new group misses
nothing, and a rebalance listener that hands revoked partitions to the runtime before they
move. Broker errors that may pass (unreachable, timeouts) become ``RetryableError``; a topic
that does not exist becomes ``TopicMissing`` at once instead of a long metadata wait. Wrong
SASL credentials and missing ACLs become a ``ConfigError`` that names the user and what it
may not do: retrying cannot fix them, and "cannot reach Kafka" would send operators the wrong
way.

The consumer, the transactional producer and the error mapping have their own modules
(:mod:`agentstream.topics.kafka_consumer`, :mod:`agentstream.topics.kafka_transactions`,
:mod:`agentstream.topics.kafka_errors`); this one keeps the bus itself and re-exports
``KafkaConsumer`` and ``KafkaTransactions``. Importing it turns off topic auto-creation in
every Metadata request aiokafka sends from this process
(:mod:`agentstream.topics.kafka_metadata`, ADR 20).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agentstream.schemas.errors import RetryableError
from agentstream.topics.bus import (
    Fenced,
    OutgoingRecord,
    Record,
    RecordMetadata,
    RecordTooLarge,
    RevokeCallback,
    TopicDescription,
    TopicPartition,
)
from agentstream.topics.config import KafkaConfig
from agentstream.topics.kafka_consumer import KafkaConsumer
from agentstream.topics.kafka_errors import (
    NOT_AUTHORIZED,
    TRANSIENT,
    authentication_failure,
    missing,
    not_authorized,
    unreachable,
)
from agentstream.topics.kafka_metadata import forbid_auto_topic_creation
from agentstream.topics.kafka_transactions import KafkaTransactions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import TopicPartition as KafkaTP

__all__ = ["KafkaBus", "KafkaConsumer", "KafkaTransactions"]

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_INVALID_TOPIC = 17
_TOPIC_AUTHORIZATION_FAILED = 29
_CLUSTER_AUTHORIZATION_FAILED = 31

# No Metadata request of this process may make a broker auto-create a topic (ADR 20).
forbid_auto_topic_creation()


async def _stop_standalone(consumer: AIOKafkaConsumer) -> None:
    # aiokafka's group-less consumer re-raises the CancelledError of its own internal task
    # from stop(); swallow that one, but never a cancellation aimed at us.
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class KafkaBus:
    """Publishing, consuming and topic admin on a Kafka cluster."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()

    async def start(self, *, produce: bool = True) -> None:
        """Connect. ``produce=False`` starts no producer (``status``, ``tail``): read-only
        credentials then suffice, as the idempotent producer needs WRITE on some topic."""
        producer = AIOKafkaProducer(**self.config.producer_options()) if produce else None
        admin = AIOKafkaAdminClient(**self.config.client_options())
        try:
            if producer is not None:
                await producer.start()
            await admin.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                if producer is not None:
                    await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            if isinstance(exc, TRANSIENT):
                raise await authentication_failure(self.config) or await unreachable(
                    self.config, exc
                ) from exc
            if isinstance(exc, NOT_AUTHORIZED):
                # The idempotent producer needs WRITE on some topic (or IDEMPOTENT_WRITE).
                raise not_authorized(self.config, "produce (idempotent producer)", exc) from exc
            raise
        self._producer, self._admin = producer, admin

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus is not started")
        return self._producer

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise RuntimeError("KafkaBus is not started")
        return self._admin

    async def require_topics(self, names: Iterable[str]) -> None:
        """Raise ``TopicMissing`` naming the first (by name) of ``names`` absent from the
        cluster. Topics seen before cost no call to the broker."""
        known = self._known_topics
        unknown = sorted({n for n in names if n not in known})
        if not unknown:
            return
        async with self._topic_lock:
            existing, leaderless = await self._describe(unknown)  # known from now on
        for name in unknown:
            if name in leaderless:
                # It exists, but its partitions have no leader this instant: a broker the
                # controller fenced (paused past broker.session.timeout.ms, restarting)
                # comes back leaderless for a moment. That passes; a missing topic does not.
                raise RetryableError(f"topic {name!r} has no leader yet; retrying")
            if name not in existing:
                raise missing(name)

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        return (await self.publish_many([record]))[0]

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        if not records:
            return []
        await self.require_topics(r.topic for r in records)
        producer = self.producer
        timeout = self.config.delivery_timeout_ms / 1000

        async def send_all() -> list[Any]:
            futures = [
                await producer.send(
                    r.topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    headers=list(r.headers),
                )
                for r in records
            ]
            if len(futures) == 1:  # the common case: no gathering future
                return [await futures[0]]
            return list(await asyncio.gather(*futures))

        try:
            # One deadline for enqueueing and acknowledgement alike: send() itself may
            # wait (for metadata, for buffer space) while the broker is away.
            # (asyncio.timeout, not wait_for: no task per publish.)
            async with asyncio.timeout(timeout):
                results = await send_all()
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(
                f"a record for {records[0].topic!r} exceeds the broker's size limit: {exc}"
            ) from exc
        except UnknownTopicOrPartitionError as exc:
            # Missing, or only unknown to a broker catching up: ask again, which tells.
            self._known_topics.difference_update(r.topic for r in records)
            await self.require_topics(r.topic for r in records)
            raise RetryableError(f"publish failed: {exc!r}") from exc
        except NOT_AUTHORIZED as exc:
            topics = ", ".join(sorted({r.topic for r in records}))
            raise not_authorized(self.config, f"write to topic {topics}", exc) from exc
        except (TimeoutError, *TRANSIENT) as exc:
            raise RetryableError(
                f"Kafka did not acknowledge {len(records)} record(s) within {timeout:.0f}s: {exc!r}"
            ) from exc
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise RetryableError(f"publish failed: {exc!r}") from exc
            raise
        return [
            RecordMetadata(m.topic, m.partition, m.offset, m.timestamp, m.timestamp_type == 1)
            for m in results
        ]

    async def transactions(self, transactional_id: str) -> KafkaTransactions:
        producer = AIOKafkaProducer(
            transactional_id=transactional_id,
            transaction_timeout_ms=60_000,
            **self.config.producer_options(),
        )
        try:
            await producer.start()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            await producer.stop()
            raise Fenced(f"{transactional_id} was fenced: {exc}") from exc
        except TRANSIENT as exc:
            await producer.stop()
            raise RetryableError(f"cannot start transactional producer: {exc}") from exc
        return KafkaTransactions(producer, transactional_id)

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None = None,
        read_committed: bool = False,
    ) -> KafkaConsumer:
        return KafkaConsumer(
            self, group_id, topics, on_revoke=on_revoke, read_committed=read_committed
        )

    async def create_topics(self, specs: Sequence[TopicDescription]) -> list[str]:
        existing = await self.describe_topics([s.name for s in specs])
        wanted = [s for s in specs if s.name not in existing]
        if not wanted:
            return []
        response = await self.admin.create_topics(
            [
                NewTopic(
                    name=s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    topic_configs=dict(s.configs),
                )
                for s in wanted
            ]
        )
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code in (_TOPIC_AUTHORIZATION_FAILED, _CLUSTER_AUTHORIZATION_FAILED):
                raise not_authorized(self.config, f"create topic {name!r}")
            elif code != _TOPIC_ALREADY_EXISTS:
                message = rest[0] if rest else ""
                raise RuntimeError(f"cannot create topic {name!r}: error {code} {message}")
        await self._wait_for_metadata([s.name for s in wanted])
        self._known_topics.update(s.name for s in wanted)
        return created

    async def _wait_for_metadata(self, names: Sequence[str], timeout_s: float = 30) -> None:
        # CreateTopics returns before every broker serves the new metadata; publishing or
        # joining a group right away would race it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            found = await self.describe_topics(names)
            if len(found) == len(names) and all(d.partitions > 0 for d in found.values()):
                return
            await asyncio.sleep(0.1)
        raise RetryableError(f"topics {list(names)} not visible in metadata after {timeout_s}s")

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        """The usable topics among ``names`` (each partition has a leader)."""
        return (await self._describe(names))[0]

    async def _describe(self, names: Sequence[str]) -> tuple[dict[str, TopicDescription], set[str]]:
        """The usable topics among ``names``, and those that exist but are not usable this
        instant (a partition without a leader: just created, or a fenced broker's)."""
        if not names:
            return {}, set()
        try:
            raw = await asyncio.wait_for(
                self.admin.describe_topics(list(names)), self.config.request_timeout_ms / 1000
            )
        except (TimeoutError, *TRANSIENT) as exc:
            raise RetryableError(f"cannot reach Kafka to describe topics: {exc!r}") from exc
        found: dict[str, TopicDescription] = {}
        leaderless: set[str] = set()
        for topic in raw:
            code = topic["error_code"]
            if code == _TOPIC_AUTHORIZATION_FAILED:
                raise not_authorized(self.config, f"describe topic {topic['topic']!r}")
            if code in (_UNKNOWN_TOPIC, _INVALID_TOPIC):
                continue
            if code != 0 or not topic["partitions"]:
                leaderless.add(topic["topic"])  # e.g. LEADER_NOT_AVAILABLE
                continue
            if any(p["leader"] < 0 for p in topic["partitions"]):
                leaderless.add(topic["topic"])
                continue
            replicas = max(len(p["replicas"]) for p in topic["partitions"])
            found[topic["topic"]] = TopicDescription(
                topic["topic"], len(topic["partitions"]), replicas
            )
        # Seen to exist: joining a group on them (require_topics) asks the broker no more.
        self._known_topics.update(found)
        return found, leaderless

    async def topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """The effective configs (``retention.ms`` and the like, defaults included) of each
        of the existing topics ``names``, in one DescribeConfigs request."""
        if not names:
            return {}
        try:
            response = await asyncio.wait_for(
                self.admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
                ),
                self.config.request_timeout_ms / 1000,
            )
        except (TimeoutError, *TRANSIENT) as exc:
            raise RetryableError(f"cannot reach Kafka to describe topic configs: {exc!r}") from exc
        configs: dict[str, dict[str, str]] = {}
        for result in response:
            for error_code, _message, _type, name, entries, *_ in result.resources:
                if error_code == _TOPIC_AUTHORIZATION_FAILED:
                    raise not_authorized(self.config, f"describe the configs of topic {name!r}")
                if error_code == 0:
                    configs[name] = {entry[0]: entry[1] for entry in entries}
        return configs

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **self.config.client_options())
        await consumer.start()
        try:
            raw = await consumer.end_offsets([KafkaTP(tp.topic, tp.partition) for tp in tps])
        finally:
            await _stop_standalone(consumer)
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in raw.items()}

    async def read(
        self,
        topic: str,
        *,
        start: Mapping[int, int] | None = None,
        read_committed: bool = True,
        idle_ms: int = 500,
    ) -> list[Record]:
        described, leaderless = await self._describe([topic])
        if topic in leaderless:
            raise RetryableError(f"topic {topic!r} has no leader yet; retrying")
        if topic not in described:
            raise missing(topic)
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            **self.config.client_options(),
        )
        await consumer.start()
        try:
            tps = [KafkaTP(topic, p) for p in range(described[topic].partitions)]
            # Where each partition begins and ends, by two ListOffsets requests: only the
            # partitions with records in range are read, and an empty topic is never
            # fetched from (seek_to_beginning would wait for a fetch round per partition).
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            wanted = start or {}
            firsts = {tp: max(begins[tp], wanted.get(tp.partition, 0)) for tp in tps}
            remaining = {tp for tp in tps if firsts[tp] < ends[tp]}
            if remaining:
                consumer.assign(sorted(remaining))
                for tp in remaining:
                    consumer.seek(tp, firsts[tp])
            records: list[Record] = []
            loop = asyncio.get_running_loop()
            last_progress = loop.time()
            positions = dict(firsts)
            # The first fetch also finds the leaders and connects to them: it gets the
            # client's request timeout, the later silences only ``idle_ms``.
            patience_ms = max(idle_ms, self.config.request_timeout_ms)
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=100)
                for tp, messages in batches.items():
                    for m in messages:
                        if m.offset < ends[tp]:
                            records.append(
                                Record(
                                    topic,
                                    tp.partition,
                                    m.offset,
                                    m.key,
                                    m.value,
                                    tuple(m.headers or ()),
                                    m.timestamp,
                                )
                            )
                for tp in list(remaining):
                    position = await consumer.position(tp)
                    if position != positions[tp]:
                        positions[tp], last_progress, patience_ms = position, loop.time(), idle_ms
                    if position >= ends[tp]:
                        remaining.discard(tp)
                if remaining and (loop.time() - last_progress) * 1000 > patience_ms:
                    # read_committed: aborted records and markers sit below the end offset
                    # and are never returned; stop once nothing more arrives.
                    break
            return records
        finally:
            await _stop_standalone(consumer)
