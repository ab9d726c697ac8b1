"""The floor of ``bench/pipeline.py``: a bare consume-then-produce relay chain.

A chain of K hops moves each record through topics ``h0 -> h1 -> ... -> hK``. Every hop is a
consumer-group member that reads a batch (``getmany``), produces the same bytes (key, value,
headers) to the next topic, waits for the acknowledgements and commits the batch: no
decoding, no state store, no per-key scheduling. What it costs is what Kafka itself costs
per hop, so the pipeline's per-hop rate divided by the relay's says how much the runtime,
the handlers and Redis take on top.

On Kafka a relay *process* plays the part of one worker process: one consumer subscribed
to the source topics of its hops, and one producer, configured like the Kafka bus
(``acks="all"``, idempotent, ``linger_ms=2``, range assignment, manual commits). On the
in-process bus the same loop runs as a task on the :class:`topics.Bus` protocol.

    python bench/relay.py --bootstrap HOST:PORT --group G --route h0:h1 [--route h2:h3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from topics import Bus, OutgoingRecord, TopicPartition  # noqa: E402

__all__ = ["relay_bus", "relay_kafka"]

MAX_BATCH = 500


async def relay_kafka(
    bootstrap: str, group: str, routes: Mapping[str, str], stop: asyncio.Event
) -> None:
    """Relay every record of each source topic in ``routes`` to its destination topic."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_request_size=1024 * 1024,
    )
    consumer = AIOKafkaConsumer(
        *routes,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=2 * 1024 * 1024,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_BATCH)
            if not batches:
                continue
            futures = [
                await producer.send(
                    routes[tp.topic], value=m.value, key=m.key, headers=list(m.headers or ())
                )
                for tp, messages in batches.items()
                for m in messages
            ]
            await asyncio.gather(*futures)
            await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
    finally:
        await consumer.stop()
        await producer.stop()


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
    args = parser.parse_args()
    routes = dict(r.split(":", 1) for r in args.route)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await relay_kafka(args.bootstrap, args.group, routes, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
