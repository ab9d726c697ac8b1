"""End to end: requests in, one right answer each out, on both buses.

On Kafka the workers are real processes (`agentstream worker …`): two agent workers, two
tool workers and one memory worker, with Redis as the state store; one agent worker is
killed with SIGKILL mid-run. In process, the same workload runs with the same number of
workers as in-process members of their groups.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from agentstream.process import build_workers
from agentstream.settings import AgentSettings, Settings, TopicSettings
from agentstream.topics import KafkaConfig
from agentstream.wiring import build_bus, build_store, ensure_topics
from prometheus_client import CollectorRegistry

from tests.procs import WorkerProcs, worker_env
from tests.workload import check, collect, make_turns, publish

ROOT = Path(__file__).resolve().parents[2]


async def test_pipeline_in_process_two_members_per_group() -> None:
    settings = Settings(topics=TopicSettings(partitions=4))
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    stop = asyncio.Event()
    sets = [
        build_workers(kinds, settings, bus, store, CollectorRegistry(), stop)
        for kinds in (["router", "agent", "tool", "memory"], ["router", "agent", "tool"])
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in sets]
    turns = make_turns(50)
    try:
        await publish(bus, settings.catalog(), turns)
        records = await collect(bus, settings.catalog(), turns, timeout_s=60)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await bus.stop()
    report = check(turns, records)
    assert report.ok, report.summary()
    assert report.requests == 200


@pytest.fixture
def worker_procs(
    kafka_bootstrap: str, redis_url: str, prefix: str, tmp_path: Path
) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(worker_env(kafka_bootstrap, redis_url, prefix), tmp_path)
    yield procs
    procs.stop_all()


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.timeout(240)
async def test_pipeline_on_kafka_with_worker_processes_and_a_sigkill(
    kafka_bootstrap: str, redis_url: str, prefix: str, worker_procs: WorkerProcs
) -> None:
    settings = Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        redis_url=redis_url,
        topics=TopicSettings(prefix=prefix, partitions=4),
        agent=AgentSettings(deadline_s=180),
    )
    bus = build_bus(settings)
    await bus.start()
    catalog = settings.catalog()
    await ensure_topics(bus, catalog, create=True)
    for name, kind in [
        ("agent-1", "agent"),
        ("agent-2", "agent"),
        ("router-1", "router"),
        ("tool-1", "tool"),
        ("tool-2", "tool"),
        ("memory-1", "memory"),
    ]:
        worker_procs.start(name, kind)
    turns = make_turns(50)
    started = time.monotonic()
    try:
        await publish(bus, catalog, turns[:100])
        # Kill an agent worker while it has work in flight.
        await asyncio.sleep(3)
        worker_procs.kill("agent-1")
        killed_at = time.monotonic() - started
        await publish(bus, catalog, turns[100:])
        records = await collect(bus, catalog, turns, timeout_s=150, settle_s=3)
    finally:
        await bus.stop()
    elapsed = time.monotonic() - started
    report = check(turns, records)
    assert report.ok, report.summary() + "\n" + worker_procs.tail("agent-2")
    assert report.requests == 200
    # Histories: each conversation's stored history has its four user turns, in order.
    client = redis.Redis.from_url(redis_url)
    try:
        for conv in {t.conversation_id for t in turns}:
            raw = client.hget(f"{settings.namespace}:conv:{conv}", "d")
            assert raw is not None, conv
            history = json.loads(raw)["history"]
            users = [m["content"] for m in history if m["role"] == "user"]
            sent = [
                t.text for t in sorted(turns, key=lambda t: t.index) if t.conversation_id == conv
            ]
            assert users == sent, (conv, users)
    finally:
        client.close()
    print(
        f"\n200 requests, agent-1 SIGKILLed at {killed_at:.1f}s, all answered in "
        f"{elapsed:.1f}s, {report.duplicate_copies} duplicate copies (same ids)"
    )
