"""What every bus guarantees, checked on the in-process bus and on Kafka alike.

These are the semantics the runtime builds on (see ``topics/bus.py``): per-key order on the
default partitioner's partition, partitions split within a group, redelivery of what was not
committed, resumption from the committed offset, fast failure on missing topics, zombies
that cannot commit. Waits are polls bounded by deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from agentstream.schemas import decode
from agentstream.schemas.errors import RetryableError, SchemaError, TopicMissing
from agentstream.topics.bus import (
    Bus,
    Consumer,
    OutgoingRecord,
    Record,
    RevokeCallback,
    TopicPartition,
)
from agentstream.topics.partitioner import partition_for

Batches = list[list[Record]]
TopicMaker = Callable[[str, int], Awaitable[str]]


@contextlib.asynccontextmanager
async def member(
    bus: Bus, group: str, topics: Sequence[str], on_revoke: RevokeCallback | None = None
) -> AsyncIterator[Consumer]:
    """A started group member, stopped (without committing) on exit."""
    consumer = bus.consumer(group, topics, on_revoke=on_revoke)
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def poll_until(
    consumers: Sequence[Consumer],
    done: Callable[[Batches], bool],
    what: str,
    timeout_s: float = 8.0,
) -> Batches:
    """Poll every consumer in turn until ``done(records so far per consumer)``."""
    got: Batches = [[] for _ in consumers]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done(got):
        if loop.time() > deadline:
            pytest.fail(
                f"no {what} within {timeout_s}s: got {[len(g) for g in got]} records, "
                f"assignments {[sorted(c.assignment()) for c in consumers]}"
            )
        for consumer, records in zip(consumers, got, strict=True):
            records.extend(await consumer.getmany(timeout_ms=50))
    return got


async def poll_once(consumers: Sequence[Consumer], timeout_ms: int = 300) -> list[Record]:
    """One bounded fetch round: what arrives within ``timeout_ms`` (to catch extras)."""
    extra: list[Record] = []
    for consumer in consumers:
        extra.extend(await consumer.getmany(timeout_ms=timeout_ms))
    return extra


def tps_of(topic: str, partitions: int) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in range(partitions)}


def splits(consumers: Sequence[Consumer], everything: set[TopicPartition]) -> Callable[..., bool]:
    """True once each consumer owns some partitions, none twice, all of them covered."""

    def check(_: Batches) -> bool:
        owned = [c.assignment() for c in consumers]
        return (
            all(owned)
            and sum(len(o) for o in owned) == len(everything)
            and set().union(*owned) == everything
        )

    return check


def offsets_of(records: Sequence[Record], tp: TopicPartition) -> list[int]:
    return [r.offset for r in records if r.tp == tp]


async def test_records_of_one_key_keep_order_on_the_default_partitioners_partition(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("order", 4)
    keys = [f"conversation-{i}".encode() for i in range(24)]
    assert len({partition_for(k, 4) for k in keys}) > 1
    rounds = [
        [OutgoingRecord(topic, f"{k.decode()}#{n}".encode(), key=k) for k in keys] for n in range(8)
    ]
    published = []
    for sent in rounds[0]:  # one by one, then in batches
        published.append((sent, await bus.publish(sent)))
    for batch in rounds[1:]:
        published.extend(zip(batch, await bus.publish_many(batch), strict=True))
    for sent, meta in published:
        assert sent.key is not None
        assert (meta.topic, meta.partition) == (topic, partition_for(sent.key, 4))

    async with member(bus, f"{prefix}g", [topic]) as consumer:
        (got,) = await poll_until([consumer], lambda g: len(g[0]) >= 8 * len(keys), "records")
        got += await poll_once([consumer])

    assert len(got) == 8 * len(keys)
    by_key: dict[bytes, list[Record]] = defaultdict(list)
    for record in got:
        assert record.key is not None
        assert record.partition == partition_for(record.key, 4)
        by_key[record.key].append(record)
    for key in keys:
        assert [r.value for r in by_key[key]] == [f"{key.decode()}#{n}".encode() for n in range(8)]
        offsets = [r.offset for r in by_key[key]]
        assert offsets == sorted(offsets)


async def test_two_members_split_the_partitions_and_each_event_reaches_one(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("split", 4)
    group = f"{prefix}g"
    async with member(bus, group, [topic]) as a, member(bus, group, [topic]) as b:
        await poll_until([a, b], splits([a, b], tps_of(topic, 4)), "split of the partitions")
        owned_a, owned_b = a.assignment(), b.assignment()
        assert not owned_a & owned_b

        values = {f"event-{i}".encode() for i in range(40)}
        await bus.publish_many([OutgoingRecord(topic, v, key=v) for v in sorted(values)])
        got_a, got_b = await poll_until(
            [a, b], lambda g: len(g[0]) + len(g[1]) >= len(values), "events"
        )
        for consumer, got in ((a, got_a), (b, got_b)):
            await consumer.commit({r.tp: r.offset + 1 for r in got})
        extra = await poll_once([a, b])
        assert (a.assignment(), b.assignment()) == (owned_a, owned_b), "group rebalanced"

    assert extra == []
    assert Counter(r.value for r in got_a + got_b) == Counter(values)
    assert got_a
    assert got_b
    assert {r.tp for r in got_a} <= owned_a
    assert {r.tp for r in got_b} <= owned_b


async def test_a_member_leaving_without_commit_has_its_rest_redelivered(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("handover", 2)
    group = f"{prefix}g"
    async with member(bus, group, [topic]) as a, member(bus, group, [topic]) as b:
        await poll_until([a, b], splits([a, b], tps_of(topic, 2)), "split of the partitions")
        (tp_a,) = a.assignment()
        (tp_b,) = b.assignment()
        await bus.publish_many(
            [
                OutgoingRecord(topic, b"a%d" % i, key=b"k", partition=tp_a.partition)
                for i in range(20)
            ]
            + [
                OutgoingRecord(topic, b"b%d" % i, key=b"k", partition=tp_b.partition)
                for i in range(5)
            ]
        )
        got_a, _ = await poll_until(
            [a, b], lambda g: len(offsets_of(g[0], tp_a)) >= 20, "records of A's partition"
        )
        assert offsets_of(got_a, tp_a) == list(range(20))
        await a.commit({tp_a: 8})
        await a.stop()  # without committing the other 12

        (got_b,) = await poll_until(
            [b],
            lambda g: tp_a in b.assignment() and len(offsets_of(g[0], tp_a)) >= 12,
            "redelivery to B",
        )
        got_b += await poll_once([b])
        assert offsets_of(got_b, tp_a) == list(range(8, 20))
        assert await b.committed(tp_a) == 8


async def test_a_restarted_member_resumes_from_the_committed_offset(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("restart", 2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    group = f"{prefix}g"

    def publish(start: int, count: int) -> list[OutgoingRecord]:
        return [
            OutgoingRecord(topic, b"%d" % i, key=b"k", partition=p)
            for p in (0, 1)
            for i in range(start, start + count)
        ]

    await bus.publish_many(publish(0, 10))
    async with member(bus, group, [topic]) as first:
        await poll_until([first], lambda g: len(g[0]) >= 20, "first records")
        await first.commit({tp0: 6, tp1: 10})
    await bus.publish_many(publish(10, 5))

    async with member(bus, group, [topic]) as second:
        (got,) = await poll_until(
            [second],
            lambda g: 14 in offsets_of(g[0], tp0) and 14 in offsets_of(g[0], tp1),
            "records after the restart",
        )
        got += await poll_once([second])
        assert await second.committed(tp0) == 6
    assert offsets_of(got, tp0) == list(range(6, 15))
    assert offsets_of(got, tp1) == list(range(10, 15))


async def test_publishing_to_a_missing_topic_fails_fast_naming_it(bus: Bus, prefix: str) -> None:
    missing = f"{prefix}missing"
    with pytest.raises(TopicMissing, match=re.escape(repr(missing))) as info:
        async with asyncio.timeout(5):
            await bus.publish(OutgoingRecord(missing, b"x", key=b"k"))
    assert "agentstream topics create" in str(info.value)
    assert await bus.describe_topics([missing]) == {}


async def test_subscribing_to_a_missing_topic_fails_fast_naming_it(bus: Bus, prefix: str) -> None:
    missing = f"{prefix}missing"
    consumer = bus.consumer(f"{prefix}g", [missing])
    try:
        with pytest.raises(TopicMissing, match=re.escape(repr(missing))):
            async with asyncio.timeout(5):
                await consumer.start()
    finally:
        await consumer.stop()


async def test_undecodable_bytes_raise_schema_error_saying_where(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("garbage", 2)
    garbage = [b"\xff\xfe not utf-8", b"[1, 2, 3]", b'{"no": "type"}', None]
    for value in garbage:
        await bus.publish(OutgoingRecord(topic, value, key=b"k", partition=1))
    async with member(bus, f"{prefix}g", [topic]) as consumer:
        (got,) = await poll_until([consumer], lambda g: len(g[0]) >= len(garbage), "records")

    assert [r.value for r in got] == garbage
    for record in got:
        with pytest.raises(SchemaError) as info:
            decode(
                record.value, topic=record.topic, partition=record.partition, offset=record.offset
            )
        message = str(info.value)
        assert f"{topic}[1]@{record.offset}" in message
        assert (info.value.topic, info.value.partition, info.value.offset) == (
            topic,
            1,
            record.offset,
        )
    assert [r.offset for r in got] == [0, 1, 2, 3]


async def test_a_paused_partition_delivers_nothing_until_resumed(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("pause", 2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    async with member(bus, f"{prefix}g", [topic]) as consumer:
        await poll_until([consumer], lambda _: consumer.assignment() == {tp0, tp1}, "assignment")
        consumer.pause(tp0)
        assert consumer.paused() == {tp0}
        await bus.publish_many(
            [
                OutgoingRecord(topic, b"%d" % i, key=b"k", partition=p)
                for p in (0, 1)
                for i in range(5)
            ]
        )
        (got,) = await poll_until([consumer], lambda g: len(g[0]) >= 5, "the unpaused partition")
        got += await poll_once([consumer])
        assert {r.tp for r in got} == {tp1}
        assert len(got) == 5

        consumer.resume(tp0)
        assert consumer.paused() == set()
        (later,) = await poll_until([consumer], lambda g: len(g[0]) >= 5, "the resumed partition")
        assert offsets_of(later, tp0) == list(range(5))
        assert {r.tp for r in later} == {tp0}


async def test_end_offsets_and_read_agree_with_what_was_published(
    bus: Bus, make_topic: TopicMaker
) -> None:
    topic = await make_topic("offsets", 3)
    tps = [TopicPartition(topic, p) for p in range(3)]
    assert await bus.end_offsets(tps) == dict.fromkeys(tps, 0)
    before_ms = time.time() * 1000
    records = [
        OutgoingRecord(topic, b"v%d" % i, key=b"k%d" % i, headers=(("ce_id", b"id-%d" % i),))
        for i in range(12)
    ]
    metadata = await bus.publish_many(records)
    counts = Counter(m.partition for m in metadata)
    assert await bus.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}

    read = await bus.read(topic)
    by_place = {(r.partition, r.offset): r for r in read}
    assert len(read) == len(records)
    assert set(by_place) == {(m.partition, m.offset) for m in metadata}
    for sent, meta in zip(records, metadata, strict=True):
        got = by_place[meta.partition, meta.offset]
        assert (got.topic, got.key, got.value, got.headers) == (
            topic,
            sent.key,
            sent.value,
            sent.headers,
        )
        assert before_ms - 60_000 < got.timestamp_ms < time.time() * 1000 + 60_000

    first = metadata[0].partition
    later = await bus.read(topic, start={first: 1})
    assert {(r.partition, r.offset) for r in later} == {
        (m.partition, m.offset) for m in metadata if m.partition != first or m.offset >= 1
    }


async def test_on_revoke_may_commit_before_handover_and_zombies_cannot_commit(
    bus: Bus, make_topic: TopicMaker, prefix: str
) -> None:
    topic = await make_topic("revoke", 2)
    group = f"{prefix}g"
    revocations: list[set[TopicPartition]] = []
    holder: list[Consumer] = []

    owned_while_revoking: list[set[TopicPartition]] = []

    async def on_revoke(tps: set[TopicPartition]) -> None:
        # The runtime's pattern: commit finished work of the partitions about to move.
        revocations.append(set(tps))
        owned_while_revoking.append(holder[0].assignment() & tps)
        await holder[0].commit(dict.fromkeys(tps, 4))

    await bus.publish_many(
        [OutgoingRecord(topic, b"%d" % i, key=b"k", partition=p) for p in (0, 1) for i in range(10)]
    )
    async with member(bus, group, [topic], on_revoke=on_revoke) as a:
        holder.append(a)
        await poll_until([a], lambda g: len(g[0]) >= 20, "A reading both partitions")
        async with member(bus, group, [topic]) as b:
            everything = tps_of(topic, 2)
            _, got_b = await poll_until(
                [a, b],
                lambda g: splits([a, b], everything)(g) and 9 in offsets_of(g[1], *b.assignment()),
                "B taking over a partition",
            )
            (tp_b,) = b.assignment()
            assert any(tp_b in revoked for revoked in revocations)
            # Once revoked, a partition is not listed as owned (a member acting on it then,
            # e.g. claiming its transactional producer, would fence the next owner).
            assert owned_while_revoking
            assert all(not owned for owned in owned_while_revoking)
            assert offsets_of(got_b, tp_b) == list(range(4, 10))

            with pytest.raises(RetryableError):
                await a.commit({tp_b: 10})
            assert await b.committed(tp_b) == 4
