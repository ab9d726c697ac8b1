"""When the broker dies, Kafka operations fail within their timeouts instead of hanging,
and work again once it is back."""

from __future__ import annotations

import asyncio
import time

import pytest
from agentstream.schemas import RetryableError
from agentstream.topics import KafkaConfig, OutgoingRecord, TopicDescription
from agentstream.topics.kafka import KafkaBus

from tests.services import KafkaFactory

pytestmark = pytest.mark.kafka


async def test_operations_fail_fast_while_the_broker_is_dead_and_recover(
    private_kafka: KafkaFactory, prefix: str
) -> None:
    broker = private_kafka()
    config = KafkaConfig(
        bootstrap_servers=broker.bootstrap,
        request_timeout_ms=3000,
        delivery_timeout_ms=4000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    bus = KafkaBus(config)
    await bus.start()
    topic = f"{prefix}events"
    try:
        await bus.create_topics([TopicDescription(topic, 1, 1)])
        await bus.publish(OutgoingRecord(topic, b"before", b"k"))
        consumer = bus.consumer(f"{prefix}g", [topic])
        await consumer.start()
        broker.kill()

        started = time.monotonic()
        with pytest.raises(RetryableError):
            await bus.publish(OutgoingRecord(topic, b"during", b"k"))
        assert time.monotonic() - started < 10, "publish must fail within its delivery timeout"

        started = time.monotonic()
        with pytest.raises(RetryableError):
            await asyncio.wait_for(bus.describe_topics([topic]), 15)
        assert time.monotonic() - started < 10

        started = time.monotonic()
        records = await consumer.getmany(timeout_ms=500)
        assert time.monotonic() - started < 5, "a fetch never blocks past its timeout"
        assert all(r.value != b"during" for r in records)
        await consumer.stop()

        broker.restart()
        deadline = time.monotonic() + 60
        while True:
            try:
                await bus.publish(OutgoingRecord(topic, b"after", b"k"))
                break
            except RetryableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        values = [r.value for r in await bus.read(topic)]
    finally:
        await bus.stop()
    assert values[0] == b"before"
    assert values[-1] == b"after"
