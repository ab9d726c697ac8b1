"""The Kafka bus: the :class:`~topics.bus.Bus` protocol on aiokafka.

Producer: ``acks="all"`` with the idempotent producer, so a publish that returned is on every
in-sync replica and a retried send never writes twice. Consumers: manual commits only
(``enable_auto_commit=False``), ``auto_offset_reset="earliest"`` so a new group misses
nothing, and a rebalance listener that hands revoked partitions to the runtime before they
move. Broker errors that may pass (unreachable, timeouts) become ``RetryableError``; a topic
that does not exist becomes ``TopicMissing`` at once instead of a long metadata wait. Wrong
SASL credentials and missing ACLs become a ``ConfigError`` that names the user and what it
may not do: retrying cannot fix them, and "cannot reach Kafka" would send operators the wrong
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    ProducerFenced,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import TopicPartition as KafkaTP

from schemas.errors import ConfigError, RetryableError, TopicMissing
from topics.bus import (
    Fenced,
    OutgoingRecord,
    RebalanceInProgress,
    Record,
    RecordMetadata,
    RecordTooLarge,
    RevokeCallback,
    TopicDescription,
    TopicPartition,
)
from topics.config import KafkaConfig

__all__ = ["KafkaBus", "KafkaConsumer", "KafkaTransactions"]

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_TRANSIENT = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
_TOPIC_AUTHORIZATION_FAILED = 29
_CLUSTER_AUTHORIZATION_FAILED = 31
_NOT_AUTHORIZED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


async def _stop_standalone(consumer: AIOKafkaConsumer) -> None:
    # aiokafka's group-less consumer re-raises the CancelledError of its own internal task
    # from stop(); swallow that one, but never a cancellation aimed at us.
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def _missing(topic: str) -> TopicMissing:
    return TopicMissing(
        f"topic {topic!r} does not exist; create it with `agentstream topics create` "
        "(workers never rely on broker auto-creation)"
    )


def _not_authorized(config: KafkaConfig, action: str, exc: object = None) -> ConfigError:
    user = config.sasl_username or "ANONYMOUS"
    detail = f" ({type(exc).__name__})" if isinstance(exc, Exception) else ""
    return ConfigError(
        f"Kafka user {user!r} is not authorized to {action}{detail}: grant it the ACLs "
        "(kafka-acls --add --allow-principal User:...) or connect as another user"
    )


async def _authentication_failure(config: KafkaConfig) -> ConfigError | None:
    """After a failed bootstrap: a ``ConfigError`` when the SASL credentials were refused.

    aiokafka logs the broker's SASL refusal and raises only "unable to bootstrap"; one direct
    connection brings the real cause back, and costs nothing on the success path.
    """
    if not config.security_protocol.startswith("SASL"):
        return None
    options = config.client_options()
    for address in config.bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await create_conn(
                host.strip("[]"),
                int(port),
                client_id=options["client_id"],
                request_timeout_ms=options["request_timeout_ms"],
                ssl_context=options.get("ssl_context"),
                security_protocol=options["security_protocol"],
                sasl_mechanism=options["sasl_mechanism"],
                sasl_plain_username=options["sasl_plain_username"],
                sasl_plain_password=options["sasl_plain_password"],
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError):
            return ConfigError(
                f"Kafka authentication failed for user {config.sasl_username!r} "
                f"({config.sasl_mechanism or 'PLAIN'}): check "
                "AGENTSTREAM_KAFKA__SASL_USERNAME/PASSWORD"
            )
        except (OSError, ValueError, KafkaError, TimeoutError):
            continue
        conn.close()
    return None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # From here until the next assignment the member owns nothing, whatever aiokafka's
        # subscription still lists (it keeps the old partitions during the rejoin).
        self._consumer.rejoining = True
        tps = {TopicPartition(tp.topic, tp.partition) for tp in revoked}
        if tps and self._consumer.on_revoke is not None:
            await self._consumer.on_revoke(tps)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._consumer.rejoining = False
        log.info("%s: assigned %d partition(s)", self._consumer.group_id, len(assigned))
        log.debug("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaConsumer:
    """One consumer-group member on aiokafka (see :class:`topics.bus.Consumer`)."""

    def __init__(
        self,
        bus: KafkaBus,
        group_id: str,
        topics: Sequence[str],
        *,
        on_revoke: RevokeCallback | None,
        read_committed: bool,
    ) -> None:
        self.group_id = group_id
        self.on_revoke = on_revoke
        #: Between a revoke and the next assignment (see :meth:`assignment`).
        self.rejoining = False
        self._assignment_waiter: asyncio.Future[None] | None = None
        self._bus = bus
        self._topics = list(topics)
        config = bus.config
        self._consumer = AIOKafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
            rebalance_timeout_ms=config.max_poll_interval_ms,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            # Range assignment gives a member the same partition numbers of every topic it
            # reads, so all events of one conversation (user_request and tool_result alike)
            # are handled by one member and can be serialised per key.
            partition_assignment_strategy=(RangePartitionAssignor,),
            **config.client_options(),
        )

    async def start(self) -> None:
        try:
            await self._bus.require_topics(self._topics)
        except BaseException:
            await self._consumer.stop()
            raise
        try:
            await self._consumer.start()
        except _TRANSIENT as exc:
            await self._consumer.stop()
            raise await _authentication_failure(self._bus.config) or RetryableError(
                f"cannot reach Kafka to join group {self.group_id!r}: {exc}"
            ) from exc
        except _NOT_AUTHORIZED as exc:
            await self._consumer.stop()
            raise _not_authorized(self._bus.config, f"join group {self.group_id!r}", exc) from exc
        self._consumer.subscribe(self._topics, listener=_Listener(self))

    async def getmany(self, timeout_ms: int = 100, max_records: int = 500) -> list[Record]:
        # aiokafka's getmany waits without a timeout while the group is (re)joining, e.g.
        # for as long as the broker is down. The runtime's fetch loop must keep its pace
        # (to notice SIGTERM, to stay responsive), so wait for the assignment ourselves,
        # bounded, and only call getmany once there is one.
        subscription = self._consumer._subscription
        try:
            if subscription.reassignment_in_progress:
                if self._assignment_waiter is None or self._assignment_waiter.done():
                    self._assignment_waiter = subscription.wait_for_assignment()
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self._assignment_waiter), timeout_ms / 1000
                    )
                except TimeoutError:
                    return []
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except _NOT_AUTHORIZED as exc:
            # Joining the group happens here, not in start(): a missing group ACL shows now.
            raise _not_authorized(
                self._bus.config, f"read as group {self.group_id!r}", exc
            ) from exc
        records: list[Record] = []
        for tp, messages in batches.items():
            for m in messages:
                records.append(
                    Record(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=m.offset,
                        key=m.key,
                        value=m.value,
                        headers=tuple(m.headers or ()),
                        timestamp_ms=m.timestamp,
                    )
                )
        return records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {KafkaTP(tp.topic, tp.partition): o for tp, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            raise RebalanceInProgress(f"commit refused, partitions were reassigned: {exc}") from exc
        except _NOT_AUTHORIZED as exc:
            raise _not_authorized(
                self._bus.config, f"commit offsets of group {self.group_id!r}", exc
            ) from exc
        except _TRANSIENT as exc:
            raise RetryableError(f"commit failed, Kafka unreachable: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        offset = await self._consumer.committed(KafkaTP(tp.topic, tp.partition))
        return None if offset is None or offset < 0 else int(offset)

    def assignment(self) -> set[TopicPartition]:
        # aiokafka keeps listing the revoked partitions until the group has rejoined; a
        # caller that acted on them then (claiming a producer for one, exactly_once) would
        # fence the partition's next owner.
        if self.rejoining:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, *partitions: TopicPartition) -> None:
        owned = self._consumer.assignment()
        tps = [KafkaTP(tp.topic, tp.partition) for tp in partitions]
        self._consumer.pause(*[tp for tp in tps if tp in owned])

    def resume(self, *partitions: TopicPartition) -> None:
        self._consumer.resume(*[KafkaTP(tp.topic, tp.partition) for tp in partitions])

    def highwater(self, tp: TopicPartition) -> int | None:
        value = self._consumer.highwater(KafkaTP(tp.topic, tp.partition))
        return None if value is None else int(value)

    def paused(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    async def stop(self) -> None:
        # Stopping does not commit (auto-commit is off): the group redelivers what is
        # uncommitted to the next owner.
        await self._consumer.stop()


def _retrieve(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Consume the outcome of sends whose transaction failed (no "never retrieved" noise)."""
    for future in futures:
        future.add_done_callback(lambda f: None if f.cancelled() else f.exception())


class KafkaTransactions:
    """A transactional producer: records and consumer offsets committed atomically."""

    def __init__(self, producer: AIOKafkaProducer, transactional_id: str) -> None:
        self._producer = producer
        self.transactional_id = transactional_id

    async def commit(
        self,
        records: Sequence[OutgoingRecord],
        offsets: Mapping[TopicPartition, int],
        group_id: str,
    ) -> None:
        producer = self._producer
        try:
            await producer.begin_transaction()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            raise Fenced(f"{self.transactional_id} was fenced: {exc}") from exc
        futures: list[asyncio.Future[Any]] = []
        try:
            for r in records:
                futures.append(
                    await producer.send(
                        r.topic,
                        value=r.value,
                        key=r.key,
                        partition=r.partition,
                        headers=list(r.headers),
                    )
                )
            if offsets:
                await producer.send_offsets_to_transaction(
                    {KafkaTP(tp.topic, tp.partition): o for tp, o in offsets.items()}, group_id
                )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            _retrieve(futures)
            raise Fenced(f"{self.transactional_id} was fenced: {exc}") from exc
        except BaseException as exc:
            _retrieve(futures)
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            if isinstance(exc, KafkaError | TimeoutError):
                raise RetryableError(f"transaction aborted: {exc!r}") from exc
            raise

    async def close(self) -> None:
        await self._producer.stop()


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
        producer = (
            AIOKafkaProducer(
                acks="all",
                enable_idempotence=True,
                linger_ms=self.config.linger_ms,
                max_request_size=1024 * 1024,
                **self.config.client_options(),
            )
            if produce
            else None
        )
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
            if isinstance(exc, _TRANSIENT):
                raise await _authentication_failure(self.config) or RetryableError(
                    f"cannot reach Kafka at {self.config.bootstrap_servers}: {exc}"
                ) from exc
            if isinstance(exc, _NOT_AUTHORIZED):
                # The idempotent producer needs WRITE on some topic (or IDEMPOTENT_WRITE).
                raise _not_authorized(self.config, "produce (idempotent producer)", exc) from exc
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

    async def require_topics(self, names: Sequence[str]) -> None:
        """Raise ``TopicMissing`` naming the first of ``names`` absent from the cluster."""
        unknown = [n for n in names if n not in self._known_topics]
        if not unknown:
            return
        async with self._topic_lock:
            existing = await self.describe_topics(unknown)
            self._known_topics.update(existing)
        for name in unknown:
            if name not in existing:
                raise _missing(name)

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        return (await self.publish_many([record]))[0]

    async def publish_many(self, records: Sequence[OutgoingRecord]) -> list[RecordMetadata]:
        if not records:
            return []
        await self.require_topics(sorted({r.topic for r in records}))
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
            return list(await asyncio.gather(*futures))

        try:
            # One deadline for enqueueing and acknowledgement alike: send() itself may
            # wait (for metadata, for buffer space) while the broker is away.
            results = await asyncio.wait_for(send_all(), timeout)
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(
                f"a record for {records[0].topic!r} exceeds the broker's size limit: {exc}"
            ) from exc
        except UnknownTopicOrPartitionError:
            self._known_topics.difference_update(r.topic for r in records)
            raise _missing(records[0].topic) from None
        except _NOT_AUTHORIZED as exc:
            topics = ", ".join(sorted({r.topic for r in records}))
            raise _not_authorized(self.config, f"write to topic {topics}", exc) from exc
        except (TimeoutError, *_TRANSIENT) as exc:
            raise RetryableError(
                f"Kafka did not acknowledge {len(records)} record(s) within {timeout:.0f}s: {exc!r}"
            ) from exc
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise RetryableError(f"publish failed: {exc!r}") from exc
            raise
        return [RecordMetadata(m.topic, m.partition, m.offset) for m in results]

    async def transactions(self, transactional_id: str) -> KafkaTransactions:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            transactional_id=transactional_id,
            transaction_timeout_ms=60_000,
            linger_ms=self.config.linger_ms,
            **self.config.client_options(),
        )
        try:
            await producer.start()
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            await producer.stop()
            raise Fenced(f"{transactional_id} was fenced: {exc}") from exc
        except _TRANSIENT as exc:
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
                raise _not_authorized(self.config, f"create topic {name!r}")
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
        if not names:
            return {}
        try:
            raw = await asyncio.wait_for(
                self.admin.describe_topics(list(names)), self.config.request_timeout_ms / 1000
            )
        except (TimeoutError, *_TRANSIENT) as exc:
            raise RetryableError(f"cannot reach Kafka to describe topics: {exc!r}") from exc
        found: dict[str, TopicDescription] = {}
        for topic in raw:
            if topic["error_code"] == _TOPIC_AUTHORIZATION_FAILED:
                raise _not_authorized(self.config, f"describe topic {topic['topic']!r}")
            if topic["error_code"] != 0 or not topic["partitions"]:
                continue
            if any(p["leader"] < 0 for p in topic["partitions"]):
                continue  # just created: not usable until every partition has a leader
            replicas = max(len(p["replicas"]) for p in topic["partitions"])
            found[topic["topic"]] = TopicDescription(
                topic["topic"], len(topic["partitions"]), replicas
            )
        return found

    async def topic_configs(self, name: str) -> dict[str, str]:
        """The non-default configs of topic ``name`` (``retention.ms`` and the like)."""
        response = await self.admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name)]
        )
        configs: dict[str, str] = {}
        for result in response:
            for resource in result.resources:
                for entry in resource[4]:
                    configs[entry[0]] = entry[1]
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
        described = await self.describe_topics([topic])
        if topic not in described:
            raise _missing(topic)
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            **self.config.client_options(),
        )
        await consumer.start()
        try:
            tps = [KafkaTP(topic, p) for p in range(described[topic].partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                if start and tp.partition in start:
                    consumer.seek(tp, start[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            records: list[Record] = []
            loop = asyncio.get_running_loop()
            last_progress = loop.time()
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
                    last_progress = loop.time()
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                if remaining and (loop.time() - last_progress) * 1000 > idle_ms:
                    # read_committed: aborted records and markers sit below the end offset
                    # and are never returned; stop once nothing more arrives.
                    break
            return records
        finally:
            await _stop_standalone(consumer)
