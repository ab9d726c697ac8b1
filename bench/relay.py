"""The floors of ``bench/pipeline.py``: a bare consume-then-produce relay chain, and a
guarded one that does the least any pipeline keeping agentstream's guarantees must do.

A chain of K hops moves each record through topics ``h0 -> h1 -> ... -> hK``. Every hop is a
consumer-group member that reads a batch (``getmany``), produces the same bytes (key, value,
headers) to the next topic, waits for the acknowledgements and commits the batch: no
decoding, no state store, no per-key scheduling. What it costs is what Kafka itself costs
per hop, so the pipeline's per-hop rate divided by the relay's says how much the runtime,
the handlers and Redis take on top.

On Kafka a relay *process* plays the part of one worker process: one consumer subscribed
to the source topics of its hops, and one producer, configured like the Kafka bus
(``acks="all"``, idempotent, the bus's ``linger_ms`` and ``batch_bytes``, range assignment,
manual commits). On the in-process bus the same loop runs as a task on the
:class:`topics.Bus` protocol.

The *guarded* relay (``--guarded --redis URL``, Kafka only) adds, per fetched batch, what
the guarantees cost at the least: every record decoded and validated as an event
(``schemas.decode``), the state of its conversation read (one pipelined Redis round trip for
the batch), its dedup mark with its outbox and its new state committed atomically and
version-checked by the state store's own commit script (one more round trip for the batch),
and a derived event with a deterministic id encoded and produced. The acknowledgements and
offset commit of a batch overlap the next batches (up to ``OVERLAP``, committed in order),
so the floor is bound by its work, not by the waits of a serial loop (on chat in
``bench/pipeline.py``, 2026-12-02: 0.41 of the bare relay serial, 0.47 overlapped). No
per-key scheduling, no handler, no model: a pipeline that keeps the guarantees cannot cost
less per hop.

    python bench/relay.py --bootstrap HOST:PORT --group G --route h0:h1 [--route h2:h3]
        [--guarded --redis redis://HOST:PORT/0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentstream.topics import Bus, OutgoingRecord, TopicPartition  # noqa: E402

__all__ = ["relay_bus", "relay_guarded_kafka", "relay_kafka"]

MAX_BATCH = 500
#: Batches of the guarded relay whose acknowledgement and offset commit may be pending.
OVERLAP = 4


def _clients(bootstrap: str, group: str, routes: Mapping[str, str]) -> tuple[Any, Any]:
    """A producer and a consumer configured like the Kafka bus (acks=all, idempotent, its
    linger and batch size, range assignment, manual commits)."""
    from agentstream.topics import KafkaConfig
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    producer = AIOKafkaProducer(**KafkaConfig(bootstrap_servers=bootstrap).producer_options())
    consumer = AIOKafkaConsumer(
        *routes,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=2 * 1024 * 1024,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    return producer, consumer


async def _produce_then_commit(
    producer: Any, consumer: Any, batches: Mapping[Any, list[Any]], outputs: list[Any]
) -> None:
    """Produce ``outputs`` (topic, key, value, headers), wait for every acknowledgement,
    then commit the fetched ``batches``."""
    await asyncio.gather(*await _send_all(producer, outputs))
    await consumer.commit(_next_offsets(batches))


async def _send_all(producer: Any, outputs: list[Any]) -> list[Any]:
    """Hand ``outputs`` (topic, key, value, headers) to the producer; their ack futures."""
    return [
        await producer.send(topic, value=value, key=key, headers=headers)
        for topic, key, value, headers in outputs
    ]


def _next_offsets(batches: Mapping[Any, list[Any]]) -> dict[Any, int]:
    return {tp: batch[-1].offset + 1 for tp, batch in batches.items()}


async def relay_kafka(
    bootstrap: str, group: str, routes: Mapping[str, str], stop: asyncio.Event
) -> None:
    """Relay every record of each source topic in ``routes`` to its destination topic."""
    producer, consumer = _clients(bootstrap, group, routes)
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_BATCH)
            if not batches:
                continue
            outputs = [
                (routes[tp.topic], m.key, m.value, list(m.headers or ()))
                for tp, messages in batches.items()
                for m in messages
            ]
            await _produce_then_commit(producer, consumer, batches, outputs)
    finally:
        await consumer.stop()
        await producer.stop()


async def relay_guarded_kafka(
    bootstrap: str, redis_url: str, group: str, routes: Mapping[str, str], stop: asyncio.Event
) -> None:
    """The guarded relay (see the module docstring): the floor of a guaranteed hop."""
    from agentstream.handlers.stores.redis_store import _COMMIT
    from agentstream.handlers.stores.redis_wire import RedisWire
    from agentstream.schemas import decode, derive_id, encode

    wire = RedisWire(redis_url)
    (sha,) = await wire.send([("SCRIPT", "LOAD", _COMMIT)])
    producer, consumer = _clients(bootstrap, group, routes)
    await producer.start()
    await consumer.start()
    in_flight: deque[asyncio.Future[None]] = deque()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_BATCH)
            if not batches:
                continue
            messages = [m for batch in batches.values() for m in batch]
            events = [
                decode(m.value, topic=m.topic, partition=m.partition, offset=m.offset)
                for m in messages
            ]
            states = [f"relay:{group}:state:{e.conversation_id}" for e in events]
            versions = await wire.send([("HGET", key, "v") for key in states])
            # Scripts of one pipeline run in order: an event sees the writes of the events
            # of its conversation before it in the batch.
            earlier: dict[str, int] = {}
            commits, outputs = [], []
            for m, event, key, version in zip(messages, events, states, versions, strict=True):
                expect = int(version or 0) + earlier.get(key, 0)
                earlier[key] = earlier.get(key, 0) + 1
                out_key, value, headers = encode(
                    event.model_copy(update={"id": derive_id(event.id, "relay")})
                )
                mark = f"relay:{group}:done:{event.id}"
                # KEYS: the mark, the key expected, the key put; ARGV: has_mark, the outbox,
                # its ttl, one expected version, then the put (kind, value, ttl).
                keys = (mark, key, key)
                argv = ("1", b"[" + value + b"]", 3600, 1, expect, "put", value, 3600)
                commits.append(("EVALSHA", sha, len(keys), *keys, *argv))
                outputs.append((routes[m.topic], out_key, value, headers))
            for reply in await wire.send(commits):
                if isinstance(reply, Exception):
                    raise reply
            # The acknowledgement and the offset commit of this batch overlap the next
            # batches (at most OVERLAP behind, committed in order): the floor is what the
            # work costs, not the waits of a serial loop.
            acks = await _send_all(producer, outputs)
            offsets = _next_offsets(batches)
            previous = in_flight[-1] if in_flight else None
            in_flight.append(
                asyncio.ensure_future(_commit_after(previous, acks, consumer, offsets))
            )
            while len(in_flight) > OVERLAP or (in_flight and in_flight[0].done()):
                await in_flight.popleft()
        for task in in_flight:
            await task
    finally:
        await consumer.stop()
        await producer.stop()
        await wire.aclose()


async def _commit_after(
    previous: asyncio.Future[None] | None,
    acks: list[Any],
    consumer: Any,
    offsets: Mapping[Any, int],
) -> None:
    """Commit ``offsets`` once every ack is in and the batch before has committed."""
    await asyncio.gather(*acks)
    if previous is not None:
        await asyncio.shield(previous)
    await consumer.commit(dict(offsets))


async def relay_bus(bus: Bus, group: str, routes: Mapping[str, str], stop: asyncio.Event) -> None:
    """The same relay on any :class:`topics.Bus` (the in-process bus, here)."""
    consumer = bus.consumer(group, list(routes))
    await consumer.start()
    try:
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=100, max_records=MAX_BATCH)
            if not records:
                continue
            await bus.publish_many(
                [OutgoingRecord(routes[r.topic], r.value, r.key, r.headers) for r in records]
            )
            last: dict[TopicPartition, int] = {}
            for r in records:
                last[r.tp] = max(last.get(r.tp, -1), r.offset + 1)
            await consumer.commit(last)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--route", action="append", required=True, help="SOURCE:DESTINATION")
    parser.add_argument("--guarded", action="store_true", help="the guarded relay (needs --redis)")
    parser.add_argument("--redis", help="Redis URL of the guarded relay's state")
    args = parser.parse_args()
    routes = dict(r.split(":", 1) for r in args.route)
    if args.guarded and not args.redis:
        parser.error("--guarded needs --redis URL")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.guarded:
            await relay_guarded_kafka(args.bootstrap, args.redis, args.group, routes, stop)
        else:
            await relay_kafka(args.bootstrap, args.group, routes, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
