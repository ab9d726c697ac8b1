"""Upstream producers on librdkafka (confluent-kafka): which partitioner keeps the contract.

Every event of a conversation must sit on the partition Kafka's default partitioner picks for
its key, murmur2 (``agentstream.topics.partitioner``): agentstream's own producers put a
conversation's tool calls, results and responses there, range assignment gives one member the
same partition number of every topic, and turns of one conversation from several producers
(the ingress, an upstream system) share one ordered partition only when all hash alike.

librdkafka's default, ``consistent_random``, hashes keys with CRC32 instead. Requests it
publishes are still answered, but most conversations land on another partition than the
ingress would use for them (and than their own responses); with ``partitioner=murmur2_random``
each lands exactly where agentstream's partitioner puts it. The AsyncAPI document tells
upstream producers so (``ConversationKey``).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

import pytest
from agentstream.schemas import UserRequest, UserRequestData, encode
from agentstream.schemas.codec import header
from agentstream.topics import Topic
from agentstream.topics.partitioner import partition_for
from confluent_kafka import Producer

from tests.pipeline_harness import Stack, make_stack, running, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

PARTITIONS = 12
CONVERSATIONS = 150


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str, prefix: str) -> AsyncIterator[Stack]:
    stack = await make_stack(
        "kafka", prefix, kafka=kafka_bootstrap, redis=redis_url, partitions=PARTITIONS
    )
    try:
        yield stack
    finally:
        await stack.bus.stop()
        await stack.store.close()


def _requests() -> list[UserRequest]:
    return [
        UserRequest(
            source="crm",
            request_id=f"r-{i}",
            conversation_id=f"conv-{i}",
            # Every tenth asks for a tool: its tool_call and tool_result are keyed too.
            data=UserRequestData(text=f"What is {i} * 3?" if i % 10 == 0 else f"Hello {i}"),
        )
        for i in range(CONVERSATIONS)
    ]


def _publish(bootstrap: str, topic: str, events: list[UserRequest], **config: str) -> list[int]:
    """Publish ``events`` with a librdkafka producer (idempotent, acks=all, as the contract
    asks) configured with ``config``; the partition each landed on, in order."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", **config}
    )
    landed: dict[str, int] = {}
    errors: list[str] = []

    def delivered(err: object, message: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            landed[message.key().decode()] = message.partition()  # type: ignore[attr-defined]

    for event in events:
        key, value, headers = encode(event)
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    return [landed[e.conversation_id] for e in events]


async def _answers(stack: Stack, events: list[UserRequest]) -> dict[str, int]:
    """Wait until every request has its completed response; the partition of each."""
    wanted = {e.request_id for e in events}

    async def done() -> dict[str, int] | None:
        partitions: dict[str, int] = {}
        for record in await stack.bus.read(stack.catalog.name(Topic.AGENT_RESPONSE)):
            request_id = header(record.headers, "ce_requestid")
            if request_id in wanted:
                partitions[request_id] = record.partition
        return partitions if set(partitions) == wanted else None

    answered: dict[str, int] = await wait_for(done, timeout_s=150, interval_s=1)
    responses = await stack.responses()
    assert {r: [x.data.status for x in responses[r]] for r in wanted} == {
        r: ["completed"] for r in wanted
    }
    return answered


async def test_librdkafka_default_partitioner_answers_but_splits_conversations(
    stack: Stack, kafka_bootstrap: str
) -> None:
    events = _requests()
    keys = [e.conversation_id.encode() for e in events]
    topic = stack.catalog.name(Topic.USER_REQUEST)
    async with running(stack, ["agent", "tool", "memory"]):
        landed = await asyncio.to_thread(_publish, kafka_bootstrap, topic, events)
        answered = await _answers(stack, events)

    # consistent_random: CRC32 of the key, not Kafka's murmur2.
    assert landed == [zlib.crc32(k) % PARTITIONS for k in keys]
    murmur2 = [partition_for(k, PARTITIONS) for k in keys]
    elsewhere = [
        e.conversation_id for e, p, m in zip(events, landed, murmur2, strict=True) if p != m
    ]
    # 11 in 12 by chance: with these keys, 141 of 150 conversations sit on another partition
    # than the ingress (or any Java or aiokafka producer) would publish their next turn to.
    assert len(elsewhere) == 141
    # agentstream answers each on the partition murmur2 picks for its conversation: the
    # request and its response are on different partition numbers, so different members
    # of a group own them.
    assert [answered[e.request_id] for e in events] == murmur2


async def test_librdkafka_with_murmur2_random_lands_where_agentstream_does(
    stack: Stack, kafka_bootstrap: str
) -> None:
    events = _requests()
    keys = [e.conversation_id.encode() for e in events]
    topic = stack.catalog.name(Topic.USER_REQUEST)
    async with running(stack, ["agent", "tool", "memory"]):
        landed = await asyncio.to_thread(
            _publish, kafka_bootstrap, topic, events, partitioner="murmur2_random"
        )
        answered = await _answers(stack, events)

    murmur2 = [partition_for(k, PARTITIONS) for k in keys]
    assert landed == murmur2
    assert [answered[e.request_id] for e in events] == murmur2
    assert len(set(landed)) == PARTITIONS  # spread over every partition, not piled up
