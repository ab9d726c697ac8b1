"""Exactly-once on Kafka: a transactional producer that commits records and offsets together.

Created by :meth:`agentstream.topics.kafka.KafkaBus.transactions`. A fenced producer (a newer
instance took its ``transactional_id``) raises ``Fenced``; any other failure aborts the transaction,
and broker errors and timeouts become ``RetryableError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from agentstream.schemas.errors import RetryableError
from agentstream.topics.bus import Fenced, OutgoingRecord, TopicPartition
from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced
from aiokafka.structs import TopicPartition as KafkaTP

__all__ = ["KafkaTransactions"]


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
