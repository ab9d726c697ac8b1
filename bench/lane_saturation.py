"""The runtime alone under benchmark (b)'s load: how many handlers run while turns queue.

One :class:`agentstream.handlers.runtime.worker.Worker` on the in-process bus and store, with
a handler that only awaits ``--latency`` (the model call, nothing else): ``--conversations``
conversations x ``--turns`` requests published up front, interleaved as in (b). It measures
what the runtime's scheduling allows apart from the agent's CPU cost per request, so it
moves much less than (b) on a busy machine: fraction = steady rate / ideal, where ideal =
min(max_in_flight, conversations) / latency; the mean number of handlers awaiting the
model (sampled every 20 ms while the batch is in its steady part); the peak RSS of the
process. Run it from two checkouts in turn for an A/B (``REPO`` is the checkout it is in).

    python bench/lane_saturation.py [--in-flight 1000] [--conversations 1000] [--turns 5]
        [--latency 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentstream.handlers.runtime.context import Context  # noqa: E402
from agentstream.handlers.runtime.route import Route  # noqa: E402
from agentstream.handlers.runtime.worker import RuntimeConfig, Worker  # noqa: E402
from agentstream.handlers.stores.base import InProcessStore  # noqa: E402
from agentstream.schemas import UserRequest, UserRequestData, encode  # noqa: E402
from agentstream.topics import Catalog, OutgoingRecord, Topic  # noqa: E402
from agentstream.topics.memory import InProcessBus  # noqa: E402
from agentstream.wiring import ensure_topics  # noqa: E402


async def measure(in_flight: int, conversations: int, turns: int, latency: float) -> dict[str, Any]:
    bus = InProcessBus(default_partitions=4)
    await bus.start()
    catalog = Catalog(prefix="lanes.", partitions=4)
    await ensure_topics(bus, catalog, create=True)
    awaiting = 0
    done: list[float] = []
    order: dict[str, list[int]] = {}

    async def handler(event: Any, ctx: Context) -> list[Any]:
        nonlocal awaiting
        awaiting += 1
        await asyncio.sleep(latency)
        awaiting -= 1
        order.setdefault(event.conversation_id, []).append(int(event.data.text))
        done.append(time.monotonic())
        return []

    topic = catalog.name(Topic.USER_REQUEST)

    async def publish(tag: str, conversations: int, turns: int) -> int:
        records = []
        for i in range(conversations * turns):
            conv, turn = i % conversations, i // conversations
            event = UserRequest(
                source="bench",
                request_id=f"{tag}{i}",
                conversation_id=f"{tag}{conv}",
                data=UserRequestData(text=str(turn)),
            )
            key, value, headers = encode(event)
            records.append(OutgoingRecord(topic, value, key, tuple(headers)))
        await bus.publish_many(records)
        return len(records)

    config = RuntimeConfig(group_id="g", source="bench", max_in_flight=in_flight)
    worker = Worker(
        bus, InProcessStore(), catalog, [Route(Topic.USER_REQUEST, handler, "h")], config
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    # A warm-up as (b) has: one turn of as many conversations as the budget.
    warm = await publish("w", min(conversations, max(in_flight, 200)), 1)
    while len(done) < warm:
        await asyncio.sleep(0.02)
    done.clear()
    order.clear()
    total = await publish("c", conversations, turns)
    samples: list[tuple[float, int]] = []
    began = time.monotonic()
    while len(done) < total and time.monotonic() - began < 600:
        await asyncio.sleep(0.02)
        samples.append((time.monotonic(), awaiting))
    stop.set()
    await task
    await bus.stop()
    ends = sorted(done)
    lo, hi = ends[int(0.1 * (len(ends) - 1))], ends[int(0.9 * (len(ends) - 1))]
    steady = 0.8 * (len(ends) - 1) / (hi - lo)
    ideal = min(in_flight, conversations) / latency
    return {
        "in_flight": in_flight,
        "conversations": conversations,
        "latency_s": latency,
        "fraction": round(steady / ideal, 3),
        "awaiting_model_mean": round(statistics.mean(n for t, n in samples if lo <= t <= hi), 1),
        "in_order": all(o == sorted(o) for o in order.values()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_s": round(time.process_time(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.5)
    a = parser.parse_args()
    row = asyncio.run(measure(a.in_flight, a.conversations, a.turns, a.latency))
    print(f"{REPO.name}: {row}", flush=True)


if __name__ == "__main__":
    main()
