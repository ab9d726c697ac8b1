"""The real servers of tests/services/: Kafka answers, Redis answers, data survives crashes."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.services import KafkaFactory, RedisFactory


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _read_one(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=_unique("svc-group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=30_000, max_records=1)
        records = [record for records in batch.values() for record in records]
        assert records, f"no record read back from {topic}"
        return records[0].key, records[0].value
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_kafka_broker_creates_and_lists_topics(kafka_bootstrap: str) -> None:
    topic = _unique("svc-topic")
    await _create_topic(kafka_bootstrap, topic)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.kafka
async def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = _unique("svc-roundtrip")
    await _create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v1", key=b"k1")
    finally:
        await producer.stop()

    assert await _read_one(kafka_bootstrap, topic) == (b"k1", b"v1")


@pytest.mark.redis
async def test_redis_answers_ping(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping()
        key = _unique("svc-key")
        await client.set(key, "v", ex=60)
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


@pytest.mark.kafka
@pytest.mark.slow
async def test_record_survives_broker_kill_and_restart(private_kafka: KafkaFactory) -> None:
    broker = private_kafka()
    topic = _unique("svc-crash")
    await _create_topic(broker.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"survivor", key=b"k")
    finally:
        await producer.stop()
    port = broker.port

    broker.kill()
    assert not broker.running
    broker.restart()

    assert broker.running
    assert broker.port == port
    assert await _read_one(broker.bootstrap, topic) == (b"k", b"survivor")


@pytest.mark.redis
@pytest.mark.slow
async def test_redis_append_only_data_survives_restart(private_redis: RedisFactory) -> None:
    server = private_redis(appendonly=True)
    client = aioredis.from_url(server.url)
    try:
        await client.set("durable", "yes")
    finally:
        await client.aclose()

    server.restart()

    client = aioredis.from_url(server.url)
    try:
        assert await client.get("durable") == b"yes"
    finally:
        await client.aclose()
