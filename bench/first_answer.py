"""Start to first answer of one agent worker process on Kafka + Redis (issue 17).

Each round makes topics of a fresh prefix, then (``--mode agent``, the default) starts a
router process, publishes one chat request and waits until the router has forwarded it to
the agent's input topic; only then is the agent worker spawned, so the clock (process
spawned -> the record timestamp of its ``agent_response``) times that one process: imports,
settings, connecting to Kafka and Redis, the topic check, joining the group, the first
fetch, the handler and the publish. ``--mode both`` spawns the router and the agent together
and publishes as they start, as ``bench/pipeline.py`` (b) does for its ``1st s`` column.
The model answers at once (``--latency`` 0), so nothing of the figure is the model's.

The worker logs when its group assigned it partitions; the line splits the figure into
``join`` (spawn -> assigned) and ``serve`` (assigned -> answer). Rounds of two checkouts
can be interleaved by running this file from each (``REPO`` is the checkout it is in; a
``PYTHONPATH`` given in the environment comes first in the workers'), and
``--rebalance-delay`` names the broker's ``group.initial.rebalance.delay.ms`` in the output
only (it is a broker setting: the test broker sets 0, a stock broker 3000).

    python bench/first_answer.py [--rounds 5] [--mode agent|both] [--latency 0] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench.pipeline_services as services  # noqa: E402
from bench.pipeline_batch import sink_reader, usage  # noqa: E402
from bench.pipeline_workload import make_requests  # noqa: E402


def _assigned_at(log: Path) -> float | None:
    """Wall time of the worker's first "assigned N partition(s)" log line (JSON logs)."""
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "assigned" in entry.get("message", "") and "partition" in entry["message"]:
            return datetime.fromisoformat(entry["time"]).timestamp()
    return None


async def _first(consumer: Any, request_id: str, timeout_s: float) -> float:
    """Record timestamp (s) of the first record on ``consumer`` for ``request_id``."""
    from bench.pipeline_workload import request_id_of

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for messages in (await consumer.getmany(timeout_ms=50)).values():
            for m in messages:
                if request_id_of(m.headers) == request_id:
                    return float(m.timestamp) / 1000
    raise TimeoutError(f"no record for {request_id} within {timeout_s:.0f}s")


async def one_round(
    bootstrap: str, redis_url: str, mode: str, latency: float, logs: Path, profile: Path | None
) -> dict[str, Any]:
    from agentstream.schemas import DEFAULT_AGENT
    from agentstream.topics import Inbox, Topic
    from agentstream.wiring import build_bus, ensure_topics
    from aiokafka import AIOKafkaProducer

    partitions = 4
    settings = services.bench_settings("kafka", partitions, bootstrap, redis_url)
    catalog = settings.catalog()
    bus = build_bus(settings)
    await bus.start()
    try:
        await ensure_topics(bus, catalog, create=True)
    finally:
        await bus.stop()
    env = services.worker_env(
        bootstrap, redis_url, settings.topics.prefix, partitions, latency, 256
    )
    procs = services.Procs(logs, profile)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    source = catalog.name(Topic.USER_REQUEST)
    inbox = catalog.name(Inbox(DEFAULT_AGENT))
    answers = await sink_reader(bootstrap, catalog.name(Topic.AGENT_RESPONSE), partitions)
    (request,) = make_requests(1, 1, "chat", f"f{uuid.uuid4().hex[:6]}")
    try:
        if mode == "agent":
            forwarded = await sink_reader(bootstrap, inbox, partitions)
            try:
                procs.worker("router", "router", env)
                await producer.send_and_wait(
                    source, value=request.value, key=request.key, headers=list(request.headers)
                )
                await _first(forwarded, request.request_id, 60)
            finally:
                await forwarded.stop()
            spawned = time.time()
            procs.worker("agent", "agent", env)
        else:
            spawned = time.time()
            procs.worker("router", "router", env)
            procs.worker("agent", "agent", env)
            await producer.send_and_wait(
                source, value=request.value, key=request.key, headers=list(request.headers)
            )
        answered = await _first(answers, request.request_id, 60)
        # What the worker spent to get there: CPU, and time runnable without a core.
        used = usage([procs.procs["agent"].pid])
    finally:
        await answers.stop()
        await producer.stop()
        procs.close()
    assigned = _assigned_at(logs / "agent.log")
    return {
        "first_answer_s": round(answered - spawned, 3),
        "join_s": None if assigned is None else round(assigned - spawned, 3),
        "serve_s": None if assigned is None else round(answered - assigned, 3),
        "cpu_s": None if used is None else round(used[0], 3),
        "cpu_wait_s": None if used is None else round(used[1], 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("agent", "both"), default="agent")
    parser.add_argument("--latency", type=float, default=0.0, help="model latency, s")
    parser.add_argument("--profile", type=Path, help="cProfile (CPU time) of each worker, here")
    parser.add_argument(
        "--rebalance-delay", default="", help="the broker's initial rebalance delay (a label)"
    )
    args = parser.parse_args()
    rows = []
    with services.kafka_service() as (bootstrap, _), services.redis_service() as (redis_url, _):
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory() as logs:
                row = await one_round(
                    bootstrap, redis_url, args.mode, args.latency, Path(logs), args.profile
                )
            rows.append(row)
            print(f"{REPO.name} {args.mode} round {r + 1}: {row}", flush=True)
    firsts = [r["first_answer_s"] for r in rows]
    cpu = [r["cpu_s"] for r in rows if r["cpu_s"] is not None]
    delay = f" rebalance delay {args.rebalance_delay}" if args.rebalance_delay else ""
    print(
        f"{REPO.name} {args.mode}{delay}: first answer median {statistics.median(firsts):.3f} s "
        f"(min {min(firsts):.3f}, max {max(firsts):.3f}), agent worker CPU median "
        f"{statistics.median(cpu) if cpu else float('nan'):.3f} s, over {len(rows)} rounds",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
