"""The Kafka bus's producer on a real broker: a burst of sends does not wait on full batches.

aiokafka makes a send to a partition whose batch is full wait until that batch is on its
way (``MessageBatch.wait_drain``); with its 16 KiB default a busy worker spent a tenth of its
CPU in those waits. The bus gathers ``KafkaConfig.batch_bytes`` per partition (ADR 15).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agentstream.topics import KafkaConfig, OutgoingRecord, TopicDescription
from agentstream.topics.kafka import KafkaBus
from aiokafka.producer.message_accumulator import MessageBatch

RECORDS, SIZE = 200, 1024  # 200 KiB for one partition: 13 batches of 16 KiB, 1 of 256 KiB


@pytest.fixture
def drain_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the sends that waited for a full batch to drain."""
    waits: list[int] = []
    original = MessageBatch.wait_drain

    async def counted(self: MessageBatch, *args: Any) -> None:
        waits.append(1)
        await original(self, *args)

    monkeypatch.setattr(MessageBatch, "wait_drain", counted)
    return waits


async def _burst(config: KafkaConfig, topic: str) -> None:
    bus = KafkaBus(config)
    await bus.start()
    try:
        await bus.create_topics([TopicDescription(topic, 1, 1)])
        records = [
            OutgoingRecord(topic, bytes([65 + i % 26]) * SIZE, b"k", ()) for i in range(RECORDS)
        ]
        # One publish per record, all at once: many handlers finishing together.
        results = await asyncio.gather(*(bus.publish_many([r]) for r in records))
        assert [m[0].offset for m in results] == sorted(m[0].offset for m in results)
        assert {m[0].offset for m in results} == set(range(RECORDS))
    finally:
        await bus.stop()


async def test_a_burst_of_sends_fits_the_default_batch(
    kafka_bootstrap: str, prefix: str, drain_waits: list[int]
) -> None:
    await _burst(KafkaConfig(bootstrap_servers=kafka_bootstrap), f"{prefix}burst")
    assert drain_waits == []


async def test_the_client_default_batch_makes_a_burst_wait(
    kafka_bootstrap: str, prefix: str, drain_waits: list[int]
) -> None:
    # The control: what the default above avoids, on the same broker.
    config = KafkaConfig(bootstrap_servers=kafka_bootstrap, batch_bytes=16 * 1024)
    await _burst(config, f"{prefix}burst16k")
    assert len(drain_waits) >= 10
