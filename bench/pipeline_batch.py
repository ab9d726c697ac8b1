"""One batch of ``bench/pipeline.py``: publish its requests, wait for every answer, and
time it, on Kafka or on the in-process bus.

The clock runs from the first publish to the record timestamp of the last answer; the CPU
time (and the time spent waiting for a core) of the processes doing the work is read
around it from ``/proc``. Answers are checked afterwards (:func:`check_answers`), so
nothing fast but wrong is measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.topics import Bus, OutgoingRecord

from bench.pipeline_workload import EXPECT, HOPS, Request, record_size, request_id_of

STALL_S = 60.0


async def sink_reader(bootstrap: str, sink: str, partitions: int) -> Any:
    """A started aiokafka consumer assigned every partition of ``sink``, positioned at its
    end: it reads only what a stage produces from now on (the caller stops it)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(sink, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


class BenchError(RuntimeError):
    """A batch did not complete, or its answers were wrong."""


@dataclass
class Batch:
    requests: int
    hops: int
    started: float
    published_s: float
    done: list[float]
    used: Usage
    answers: dict[str, bytes] = field(default_factory=dict)
    copies: int = 0

    def summary(self) -> dict[str, Any]:
        done = sorted(self.done)
        elapsed = done[-1] - self.started
        lo, hi = int(0.1 * (len(done) - 1)), int(0.9 * (len(done) - 1))
        window = done[hi] - done[lo]
        return {
            "requests": self.requests,
            "seconds": round(elapsed, 3),
            "publish_seconds": round(self.published_s, 3),
            "requests_per_s": round(self.requests / elapsed, 1),
            "per_hop_per_s": round(self.requests * self.hops / elapsed, 1),
            "steady_requests_per_s": round((hi - lo) / window, 1) if window > 0 else None,
            "cpu_ms_per_request": _per(self.used.cpu_s, self.requests / 1000, 3),
            "cpu_percent": _per(self.used.cpu_s, elapsed / 100, 1),
            "cpu_wait_percent": _per(self.used.wait_s, elapsed / 100, 1),
            "duplicate_copies": self.copies,
        }


def _per(x: float | None, unit: float, digits: int) -> float | None:
    return None if x is None else round(x / unit, digits)


def usage(pids: Sequence[int]) -> tuple[float, float] | None:
    """CPU seconds used by ``pids`` (user + system) and seconds their main threads spent
    runnable but waiting for a core (Linux; None elsewhere). The wait says how much the
    machine, not the code, held a process back."""
    cpu = wait = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            sched = Path(f"/proc/{pid}/schedstat").read_text().split()
        except OSError:
            return None
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        wait += int(sched[1]) / 1e9
    return cpu, wait


def spent(before: tuple[float, float] | None, after: tuple[float, float] | None) -> Usage:
    if before is None or after is None:
        return Usage(None, None)
    return Usage(after[0] - before[0], after[1] - before[1])


@dataclass(frozen=True)
class Usage:
    cpu_s: float | None
    wait_s: float | None


class Collector:
    """Gathers the first copy of each wanted answer and the time it was produced."""

    def __init__(self, requests: Sequence[Request]) -> None:
        self.wanted = {r.request_id for r in requests}
        self.done: list[float] = []
        self.answers: dict[str, bytes] = {}
        self.copies = 0
        self.progress = time.monotonic()

    def stalled(self, after_s: float = STALL_S) -> bool:
        """No new answer for ``after_s``: the pipeline is stuck, waiting longer is useless."""
        return time.monotonic() - self.progress > after_s

    def add(self, headers: Sequence[tuple[str, bytes]] | None, value: bytes, ts_ms: int) -> None:
        rid = request_id_of(headers)
        if rid in self.wanted:
            self.wanted.discard(rid)
            self.answers[rid] = value
            self.done.append(ts_ms / 1000)
            self.progress = time.monotonic()
        elif rid in self.answers:
            self.copies += 1

    def batch(
        self, requests: int, hops: int, started: float, published_s: float, used: Usage
    ) -> Batch:
        """The measured batch: what was collected, with its clock and CPU readings."""
        return Batch(
            requests, hops, started, published_s, self.done, used, self.answers, self.copies
        )


async def kafka_batch(
    bootstrap: str,
    producer: Any,
    source: str,
    sink: str,
    partitions: int,
    requests: Sequence[Request],
    hops: int,
    pids: Sequence[int],
    timeout_s: float,
    *,
    hold: bool = False,
) -> Batch:
    """Publish ``requests`` to ``source`` and collect their answers on ``sink``. ``hold``:
    the processes ``pids`` are stopped (SIGSTOP) while the batch is published and resumed
    once every request is acknowledged; the clock starts at the resume. Each then drains
    the same backlog, so a stage faster than the publisher is not timed at the publisher's
    rate (the bare relay on a fast machine ends ~10 ms after the last publish)."""
    consumer = await sink_reader(bootstrap, sink, partitions)
    try:
        collector = Collector(requests)
        before = usage(pids)
        if hold:
            _signal(pids, signal.SIGSTOP)
        started = time.time()
        try:
            futures = [
                await producer.send(source, value=r.value, key=r.key, headers=list(r.headers))
                for r in requests
            ]
            await asyncio.gather(*futures)
        finally:
            if hold:
                _signal(pids, signal.SIGCONT)
        published = time.time() - started
        if hold:
            started = time.time()
        deadline = time.monotonic() + timeout_s
        while collector.wanted and time.monotonic() < deadline and not collector.stalled():
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    collector.add(m.headers, m.value, m.timestamp)
        after = usage(pids)
    finally:
        await consumer.stop()
    if collector.wanted:
        raise BenchError(
            f"{len(collector.wanted)} of {len(requests)} requests unanswered on {sink} "
            f"({len(collector.done)} answered, then none for {STALL_S:.0f}s or the "
            f"{timeout_s:.0f}s limit)"
        )
    return collector.batch(len(requests), hops, started, published, spent(before, after))


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


async def bus_batch(
    bus: Bus, source: str, sink: str, requests: Sequence[Request], hops: int, timeout_s: float
) -> Batch:
    """The same on the in-process bus: the CPU time is this whole process's."""
    consumer = bus.consumer(f"bench-collector-{uuid.uuid4().hex[:8]}", [sink])
    await consumer.start()
    try:
        collector = Collector(requests)
        # Skip what is on the sink already; a fresh group starts at the earliest offset.
        while await consumer.getmany(timeout_ms=0, max_records=100_000):
            pass
        before = usage([os.getpid()])
        started = time.time()
        await bus.publish_many(
            [OutgoingRecord(source, r.value, r.key, r.headers) for r in requests]
        )
        published = time.time() - started
        deadline = time.monotonic() + timeout_s
        while collector.wanted and time.monotonic() < deadline and not collector.stalled():
            for record in await consumer.getmany(timeout_ms=200, max_records=100_000):
                collector.add(record.headers, record.value or b"", record.timestamp_ms)
        after = usage([os.getpid()])
    finally:
        await consumer.stop()
    if collector.wanted:
        raise BenchError(f"{len(collector.wanted)} of {len(requests)} requests unanswered")
    return collector.batch(len(requests), hops, started, published, spent(before, after))


def check_answers(
    batch: Batch, requests: Sequence[Request], scenario: str, *, app: bool = True
) -> None:
    """Every answer completed, with the right tools and text, from the right agent after
    the right handoffs (``app``: the workers run ``examples.support``; else the built-in
    assistant): no fast garbage is measured."""
    from agentstream.schemas import AgentResponse, decode

    tools, agent, handoffs = EXPECT[scenario]
    wrong = []
    for r in requests:
        event = decode(batch.answers[r.request_id])
        assert isinstance(event, AgentResponse)
        d = event.data
        if (
            d.status != "completed"
            or d.tool_calls != tools
            or r.expect not in (d.text or "")
            or (app and (d.agent != agent or d.handoffs != handoffs))
        ):
            wrong.append(
                f"{r.request_id}: {d.status} {d.tool_calls} {d.agent} {d.handoffs} "
                f"{d.text or d.error!r}"
            )
    if wrong:
        raise BenchError(f"{len(wrong)} wrong answers, e.g. {wrong[:3]}")


async def mean_sizes(bus: Bus, topics: Sequence[str], tag: str) -> dict[str, int]:
    """Mean record size per scenario over every record its requests put on ``topics``."""
    return (await chain_census(bus, topics, tag, {}))[0]


async def chain_census(
    bus: Bus, topics: Sequence[str], tag: str, requests: dict[str, int]
) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """Mean record size per scenario over every record its requests (tagged ``tag``) put
    on ``topics``, and, for the scenarios of ``requests`` (how many were sent), the records
    per request on each topic: the hops, counted rather than declared."""
    totals = {s: [0, 0] for s in HOPS}
    counts: dict[str, dict[str, int]] = {s: {} for s in HOPS}
    for topic in topics:
        for record in await bus.read(topic):
            rid = request_id_of(record.headers) or ""
            for scenario, acc in totals.items():
                if rid.startswith(f"{tag}-{scenario}-"):
                    acc[0] += record_size(record.key, record.value, record.headers)
                    acc[1] += 1
                    counts[scenario][topic] = counts[scenario].get(topic, 0) + 1
    sizes = {s: round(total / count) for s, (total, count) in totals.items() if count}
    per_request = {
        s: {t: round(n / requests[s], 2) for t, n in sorted(counts[s].items())} for s in requests
    }
    return sizes, per_request
