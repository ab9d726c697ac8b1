"""A consumer-group member on aiokafka, and the rebalance listener that serves it.

Manual commits only (``enable_auto_commit=False``), ``auto_offset_reset="earliest"`` so a new
group misses nothing, range assignment so one member reads all events of a conversation, and
a rebalance listener that hands revoked partitions to the runtime before they move. Created
by :meth:`agentstream.topics.kafka.KafkaBus.consumer`, which it asks for its config and for the
topics it must find before joining.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from agentstream.schemas.errors import RetryableError
from agentstream.topics.bus import RebalanceInProgress, Record, RevokeCallback, TopicPartition
from agentstream.topics.config import KafkaConfig
from agentstream.topics.kafka_errors import (
    NOT_AUTHORIZED,
    TRANSIENT,
    authentication_failure,
    not_authorized,
)
from agentstream.topics.kafka_membership import leave_as_static_member
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import TopicPartition as KafkaTP

__all__ = ["ConsumerHost", "KafkaConsumer"]

log = logging.getLogger(__name__)


class ConsumerHost(Protocol):
    """What a consumer asks of the bus that made it: :class:`agentstream.topics.kafka.KafkaBus`
    (a protocol, so this module does not import the bus that imports it)."""

    @property
    def config(self) -> KafkaConfig: ...

    @property
    def admin(self) -> Any: ...

    async def require_topics(self, names: Iterable[str]) -> None: ...


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
    """One consumer-group member on aiokafka (see :class:`agentstream.topics.bus.Consumer`)."""

    def __init__(
        self,
        bus: ConsumerHost,
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
            group_instance_id=config.group_instance_id,
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
        except TRANSIENT as exc:
            await self._consumer.stop()
            raise await authentication_failure(self._bus.config) or RetryableError(
                f"cannot reach Kafka to join group {self.group_id!r}: {exc}"
            ) from exc
        except NOT_AUTHORIZED as exc:
            await self._consumer.stop()
            raise not_authorized(self._bus.config, f"join group {self.group_id!r}", exc) from exc
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
        except NOT_AUTHORIZED as exc:
            # Joining the group happens here, not in start(): a missing group ACL shows now.
            raise not_authorized(self._bus.config, f"read as group {self.group_id!r}", exc) from exc
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
        except NOT_AUTHORIZED as exc:
            raise not_authorized(
                self._bus.config, f"commit offsets of group {self.group_id!r}", exc
            ) from exc
        except TRANSIENT as exc:
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
        instance_id = self._bus.config.group_instance_id
        # aiokafka's coordinator forgets the member id when it stops; read it before.
        coordinator = getattr(self._consumer, "_coordinator", None)
        member_id = getattr(coordinator, "member_id", "") if instance_id else ""
        await self._consumer.stop()
        if instance_id and member_id:
            # A static member does not leave by itself (see kafka_membership): a planned stop
            # hands its partitions over now rather than after the session timeout.
            await leave_as_static_member(self._bus.admin, self.group_id, member_id, instance_id)
