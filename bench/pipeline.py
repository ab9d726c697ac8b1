"""Pipeline throughput: requests per second end to end and per hop, against a bare relay;
and how close one agent worker gets to its in-flight budget with a slow model.

(a) *Throughput*, zero-latency offline model. ``--requests`` user requests over
``--conversations`` conversations are published up front; the time runs from the first
publish to the last ``agent_response`` (its record timestamp, set by the worker's producer).
Two scenarios: ``chat`` (the model answers directly: user_request -> agent_response, 1 hop)
and ``tool`` (one calculator call: user_request -> tool_call -> tool_result ->
agent_response, 3 hops). Per-hop rate = requests * hops / seconds. The same run measures a
bare aiokafka relay chain (``bench/relay.py``) with as many hops, as many records, the same
keys, headers and mean record size, the same partitions, and the same process layout (the
agent worker's hops in one process, the tool worker's in another). ratio = pipeline per-hop
rate / relay per-hop rate. Rounds alternate pipeline and relay; medians are reported.

(b) *Saturation*, offline model sleeping ``--slow-latency`` per call: one agent worker
process on ``--partitions`` partitions, ``--slow-conversations`` conversations each sending
``--slow-turns`` chat requests (published up front, interleaved). Steady rate: responses
between the 10th and 90th percentile of their timestamps, after a warm-up batch. Ideal =
min(max_in_flight, conversations) / latency; fraction = steady rate / ideal.

On Kafka the workers are real ``agentstream worker agent|tool`` processes on Kafka and Redis
(both started here unless ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` are set). ``--bus
memory`` runs the same workload with the workers in this process on the in-process bus and
store, and the relay as a task on the same bus. CPU time per request of the worker (or relay)
processes is reported beside the rates: it depends much less than the rate on whatever else
runs on a shared machine. A census pass with Redis MONITOR counts the store commands per
request (not timed).

    python bench/pipeline.py [--quick] [--bus kafka|memory|both] [--requests 2000]
        [--conversations 500] [--rounds 3] [--slow-in-flight 256,1000] [--profile DIR]
        [--out bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.relay import relay_bus  # noqa: E402
from topics import Bus, OutgoingRecord, TopicDescription  # noqa: E402

HOPS = {"chat": 1, "tool": 3}
TARGET_RATIO = 0.5
TARGET_FRACTION = 0.9
STALL_S = 60.0
Headers = tuple[tuple[str, bytes], ...]
WorkerKind = Literal["agent", "tool", "memory"]


class BenchError(RuntimeError):
    """A batch did not complete, or its answers were wrong."""


# -- workload -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    key: bytes
    value: bytes
    headers: Headers
    expect: str  # in the answer text ("" for chat)

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


_numbers = itertools.count()


def make_requests(n: int, conversations: int, scenario: str, tag: str) -> list[Request]:
    """``n`` requests over ``conversations``, interleaved: turn 0 of every conversation,
    then turn 1, ... Conversations are numbered anew on every call, so texts never repeat
    and the model's response cache never answers (each request costs its model calls)."""
    from schemas import UserRequest, UserRequestData, encode

    first = next(_numbers) * 1_000_000
    requests = []
    for i in range(n):
        conv, turn = first + i % conversations, i // conversations
        if scenario == "chat":
            text, expect = f"Hello there, how are you? This is guest {conv} turn {turn}.", ""
        else:
            a, b = 17 + conv, 3 + turn
            text, expect = f"What is {a} * {b}?", f"= {a * b}"
        event = UserRequest(
            source="bench",
            request_id=f"{tag}-{scenario}-{i}",
            conversation_id=f"{tag}-{scenario}-c{conv}",
            data=UserRequestData(text=text, user=f"guest-{conv}"),
        )
        key, value, headers = encode(event)
        requests.append(Request(event.request_id, key, value, tuple(headers), expect))
    return requests


def padded(requests: Sequence[Request], size: int) -> list[Request]:
    """The relay's records: same ids, keys and headers, values padded to ``size`` bytes."""
    return [
        replace(r, value=b"x" * max(1, size - r.size + len(r.value)), expect="") for r in requests
    ]


def request_id_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    for k, v in headers or ():
        if k == "ce_requestid":
            return v.decode()
    return None


# -- one batch: publish, wait for every answer ------------------------------------------------


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
) -> Batch:
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
        collector = Collector(requests)
        before = usage(pids)
        started = time.time()
        futures = [
            await producer.send(source, value=r.value, key=r.key, headers=list(r.headers))
            for r in requests
        ]
        await asyncio.gather(*futures)
        published = time.time() - started
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
    return Batch(
        len(requests),
        hops,
        started,
        published,
        collector.done,
        spent(before, after),
        collector.answers,
        collector.copies,
    )


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
    return Batch(
        len(requests),
        hops,
        started,
        published,
        collector.done,
        spent(before, after),
        collector.answers,
        collector.copies,
    )


def check_answers(batch: Batch, requests: Sequence[Request], scenario: str) -> None:
    """Every answer completed, with the right tools and text: no fast garbage is measured."""
    from schemas import AgentResponse, decode

    wrong = []
    for r in requests:
        event = decode(batch.answers[r.request_id])
        assert isinstance(event, AgentResponse)
        tools = ["calculator"] if scenario == "tool" else []
        d = event.data
        if d.status != "completed" or d.tool_calls != tools or r.expect not in (d.text or ""):
            wrong.append(f"{r.request_id}: {d.status} {d.tool_calls} {d.text or d.error!r}")
    if wrong:
        raise BenchError(f"{len(wrong)} wrong answers, e.g. {wrong[:3]}")


async def mean_sizes(bus: Bus, topics: Sequence[str], tag: str) -> dict[str, int]:
    """Mean record size per scenario over every record its requests put on ``topics``."""
    totals = {s: [0, 0] for s in HOPS}
    for topic in topics:
        for record in await bus.read(topic):
            rid = request_id_of(record.headers) or ""
            for scenario, acc in totals.items():
                if rid.startswith(f"{tag}-{scenario}-"):
                    acc[0] += record_size(record.key, record.value, record.headers)
                    acc[1] += 1
    return {s: round(total / count) for s, (total, count) in totals.items() if count}


# -- services and processes ---------------------------------------------------------------


@contextlib.contextmanager
def kafka_service() -> Iterator[tuple[str, str]]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], "external"
        return
    from tests.services import KafkaBroker

    broker = KafkaBroker()
    broker.start()
    try:
        yield broker.bootstrap, f"Apache Kafka {broker.version}, started locally"
    finally:
        broker.close()


@contextlib.contextmanager
def redis_service() -> Iterator[tuple[str, str]]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"], "external"
        return
    from tests.services import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server.url, f"redis-server {server.version()}, started locally"
    finally:
        server.close()


# A worker under cProfile timed by CPU time (not wall time: the machine is shared, and a
# process waiting for a core is not the code's fault). Stats are written when it stops.
_PROFILED = """
import cProfile, runpy, sys, time
out, kind = sys.argv[1], sys.argv[2]
sys.argv = ["agentstream", "worker", kind]
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("agentstream.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


class Procs:
    """Subprocesses of this run (workers, relays): logs in files, all stopped at the end."""

    def __init__(self, logs: Path, profile: Path | None) -> None:
        self.logs = logs
        self.profile = profile
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def worker(self, name: str, kind: str, env: dict[str, str]) -> int:
        argv = ["-m", "agentstream.cli", "worker", kind]
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            argv = ["-c", _PROFILED, str(self.profile / f"{name}.prof"), kind]
        return self._start(name, [sys.executable, *argv], env)

    def relay(self, name: str, bootstrap: str, routes: dict[str, str]) -> int:
        argv = [sys.executable, str(REPO / "bench/relay.py"), "--bootstrap", bootstrap]
        argv += ["--group", f"bench-{name}-{uuid.uuid4().hex[:6]}"]
        for source, sink in routes.items():
            argv += ["--route", f"{source}:{sink}"]
        return self._start(name, argv, {**os.environ, "PYTHONPATH": str(REPO)})

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs[name] = proc
        return proc.pid

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        for f in self._files:
            f.close()

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def worker_env(
    bootstrap: str, redis_url: str, prefix: str, partitions: int, latency: float, in_flight: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        AGENTSTREAM_TOPICS__PREFIX=prefix,
        AGENTSTREAM_TOPICS__PARTITIONS=str(partitions),
        AGENTSTREAM_MODEL__OFFLINE_LATENCY_S=str(latency),
        AGENTSTREAM_RUNTIME__MAX_IN_FLIGHT=str(in_flight),
        AGENTSTREAM_LOG_JSON="true",
        PYTHONPATH=str(REPO),
    )
    return env


def bench_settings(bus: str, partitions: int, bootstrap: str = "", redis_url: str = "") -> Any:
    from pydantic import SecretStr

    from agentstream.settings import Settings, TopicSettings
    from topics import KafkaConfig

    topics = TopicSettings(prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=partitions)
    if bus == "memory":
        return Settings(bus="memory", topics=topics)
    return Settings(
        bus="kafka",
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        redis_url=SecretStr(redis_url),
        topics=topics,
    )


# -- the two benchmarks, on either bus ------------------------------------------------------


@dataclass
class Options:
    requests: int
    conversations: int
    rounds: int
    partitions: int
    in_flight: int
    warmup: int
    slow_latency: float
    slow_conversations: int
    slow_turns: int
    slow_in_flight: list[int]


class Rig:
    """One bus, its topics and its workers: runs batches through the pipeline or a relay."""

    def __init__(self, kind: str, options: Options, procs: Procs | None = None) -> None:
        self.kind = kind
        self.o = options
        self.procs = procs
        self.bootstrap = ""
        self.redis_url = ""
        self.bus: Bus | None = None
        self.producer: Any = None
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._workers: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, bootstrap: str = "", redis_url: str = "") -> None:
        self.bootstrap, self.redis_url = bootstrap, redis_url
        if self.kind == "kafka":
            from aiokafka import AIOKafkaProducer

            from topics.config import KafkaConfig
            from topics.kafka import KafkaBus

            self.bus = KafkaBus(KafkaConfig(bootstrap_servers=bootstrap))
            self.producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
            )
            await self.producer.start()
        else:
            from topics.memory import InProcessBus

            self.bus = InProcessBus(default_partitions=self.o.partitions)
        await self.bus.start()

    async def close(self) -> None:
        await self.stop_workers()
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()
        if self.bus is not None:
            await self.bus.stop()

    async def batch(
        self, source: str, sink: str, requests: Sequence[Request], hops: int, pids: Sequence[int]
    ) -> Batch:
        timeout = 120 + len(requests) * hops / 20
        assert self.bus is not None
        if self.kind == "kafka":
            return await kafka_batch(
                self.bootstrap,
                self.producer,
                source,
                sink,
                self.o.partitions,
                requests,
                hops,
                pids,
                timeout,
            )
        return await bus_batch(self.bus, source, sink, requests, hops, timeout)

    async def pipeline(self, latency: float, in_flight: int, kinds: Sequence[WorkerKind]) -> Any:
        """Topics of a fresh prefix and workers of ``kinds`` on them; returns the settings
        and the worker pids (empty in process)."""
        from agentstream.process import build_workers
        from agentstream.wiring import ensure_topics
        from handlers.metrics import Metrics
        from handlers.store import InProcessStore

        assert self.bus is not None
        settings = bench_settings(self.kind, self.o.partitions, self.bootstrap, self.redis_url)
        settings = settings.model_copy(
            update={
                "model": settings.model.model_copy(update={"offline_latency_s": latency}),
                "runtime": settings.runtime.model_copy(update={"max_in_flight": in_flight}),
            }
        )
        await ensure_topics(self.bus, settings.catalog(), create=True)
        pids: list[int] = []
        if self.kind == "kafka":
            assert self.procs is not None
            env = worker_env(
                self.bootstrap,
                self.redis_url,
                settings.topics.prefix,
                self.o.partitions,
                latency,
                in_flight,
            )
            for kind in kinds:
                pids.append(self.procs.worker(f"{kind}-{settings.topics.prefix}", kind, env))
        else:
            stop = asyncio.Event()
            workers = build_workers(
                list(kinds), settings, self.bus, InProcessStore(), Metrics(), stop
            )
            self._workers.append((stop, asyncio.create_task(workers.run(stop))))
        return settings, pids

    async def stop_workers(self) -> None:
        """Stop every pipeline worker started so far (processes, or tasks in process)."""
        if self.procs is not None:
            self.procs.stop(*[n for n in self.procs.procs if not n.startswith("relay")])
        for stop, _ in self._workers:
            stop.set()
        await asyncio.gather(*(task for _, task in self._workers), return_exceptions=True)
        self._workers.clear()

    def worker_errors(self, top: int = 3) -> list[str]:
        """The most frequent errors in the logs of the running workers, with counts."""
        if self.procs is None:
            return []
        counts: dict[str, int] = {}
        for name in self.procs.procs:
            if name.startswith("relay"):
                continue
            for line in (self.procs.logs / f"{name}.log").read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    entry = json.loads(line)
                    if entry.get("level") == "ERROR":
                        what = (entry.get("exc") or entry["message"]).strip().splitlines()[-1]
                        counts[what] = counts.get(what, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [f"{n}x {what}" for what, n in ranked]

    async def stop_relays(self) -> None:
        if self.procs is not None:
            self.procs.stop(*[n for n in self.procs.procs if n.startswith("relay")])
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        self.stop = asyncio.Event()

    async def relay(self, prefix: str, hops: int) -> tuple[str, str, list[int]]:
        """A relay chain of ``hops`` hops laid out like the workers: the agent's hops (the
        first and, with a tool, the last) in one process, the tool's hop in another."""
        assert self.bus is not None
        names = [f"{prefix}relay{hops}.h{i}" for i in range(hops + 1)]
        await self.bus.create_topics([TopicDescription(n, self.o.partitions, 1) for n in names])
        routes = {names[i]: names[i + 1] for i in range(hops)}
        layout = [{k: v for i, (k, v) in enumerate(routes.items()) if i != 1}]
        if hops > 1:
            layout.append({names[1]: names[2]})
        pids = []
        for i, part in enumerate(layout):
            if self.kind == "kafka":
                assert self.procs is not None
                pids.append(self.procs.relay(f"relay{hops}-{i}", self.bootstrap, part))
            else:
                group = f"relay{hops}-{i}"
                self.tasks.append(asyncio.create_task(relay_bus(self.bus, group, part, self.stop)))
        return names[0], names[-1], pids


async def throughput(rig: Rig, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Benchmark (a) on one bus: pipeline and relay, rounds interleaved."""
    from topics import Topic

    o = rig.o
    assert rig.bus is not None
    settings, pids = await rig.pipeline(0.0, o.in_flight, ["agent", "tool"])
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    warm_tag = f"w{uuid.uuid4().hex[:6]}"
    for scenario, hops in HOPS.items():
        warm = make_requests(o.warmup, min(o.conversations, o.warmup), scenario, warm_tag)
        check_answers(await rig.batch(source, sink, warm, hops, pids), warm, scenario)
    chain_topics = [catalog.name(t) for t in Topic if t is not Topic.MEMORY_CALL]
    sizes = await mean_sizes(rig.bus, chain_topics, warm_tag)
    log(f"  {rig.kind}: workers warm; mean record size per scenario: {sizes}")
    relays = {hops: await rig.relay(settings.topics.prefix, hops) for hops in HOPS.values()}
    for scenario, hops in HOPS.items():
        first, last, relay_pids = relays[hops]
        warm = padded(make_requests(o.warmup, o.warmup, scenario, warm_tag), sizes[scenario])
        await rig.batch(first, last, warm, hops, relay_pids)
    rounds: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {s: [] for s in HOPS}
    for r in range(o.rounds):
        for scenario, hops in HOPS.items():
            tag = f"r{r}{uuid.uuid4().hex[:6]}"
            requests = make_requests(o.requests, o.conversations, scenario, tag)
            batch = await rig.batch(source, sink, requests, hops, pids)
            check_answers(batch, requests, scenario)
            first, last, relay_pids = relays[hops]
            relay_batch = await rig.batch(
                first, last, padded(requests, sizes[scenario]), hops, relay_pids
            )
            p, b = batch.summary(), relay_batch.summary()
            rounds[scenario].append((p, b))
            log(
                f"  {rig.kind} {scenario} round {r + 1}: pipeline {p['per_hop_per_s']:.0f} "
                f"hops/s, relay {b['per_hop_per_s']:.0f} hops/s, "
                f"ratio {p['per_hop_per_s'] / b['per_hop_per_s']:.2f}"
            )
    rows = []
    for scenario, hops in HOPS.items():
        pairs = rounds[scenario]
        ratios = [p["per_hop_per_s"] / b["per_hop_per_s"] for p, b in pairs]
        rows.append(
            {
                "bus": rig.kind,
                "scenario": scenario,
                "hops": hops,
                "requests": o.requests,
                "conversations": o.conversations,
                "mean_record_bytes": sizes[scenario],
                "pipeline": median_round([p for p, _ in pairs]),
                "relay": median_round([b for _, b in pairs]),
                "ratio_per_hop": round(statistics.median(ratios), 3),
                "ratio_rounds": [round(x, 3) for x in ratios],
                "target_ratio": TARGET_RATIO,
            }
        )
    return rows


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["per_hop_per_s"])
    return {
        **ordered[len(ordered) // 2],
        "rounds_per_hop_per_s": [r["per_hop_per_s"] for r in rounds],
    }


async def saturation(rig: Rig, in_flight: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Benchmark (b) on one bus: one agent worker, a slow model, many conversations."""
    from topics import Topic

    o = rig.o
    ideal = min(in_flight, o.slow_conversations) / o.slow_latency
    row: dict[str, Any] = {
        "bus": rig.kind,
        "max_in_flight": in_flight,
        "latency_s": o.slow_latency,
        "partitions": o.partitions,
        "conversations": o.slow_conversations,
        "turns": o.slow_turns,
        "ideal_per_s": round(ideal, 1),
        "target_fraction": TARGET_FRACTION,
    }
    settings, pids = await rig.pipeline(o.slow_latency, in_flight, ["agent"])
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    try:
        warm_n = min(o.slow_conversations, max(in_flight, 200))
        warm = make_requests(warm_n, warm_n, "chat", f"w{uuid.uuid4().hex[:6]}")
        await rig.batch(source, sink, warm, 1, pids)
        n = o.slow_conversations * o.slow_turns
        requests = make_requests(n, o.slow_conversations, "chat", f"s{uuid.uuid4().hex[:6]}")
        batch = await rig.batch(source, sink, requests, 1, pids)
        check_answers(batch, requests, "chat")
    except BenchError as exc:
        # A failure of the worker is a result too: record it with the worker's errors.
        row["error"] = str(exc)
        row["worker_errors"] = rig.worker_errors()
        log(f"  {rig.kind} max_in_flight={in_flight}: FAILED: {exc}; {row['worker_errors']}")
        return row
    finally:
        await rig.stop_workers()
    s = batch.summary()
    row.update(s)
    row["fraction"] = round((s["steady_requests_per_s"] or 0) / ideal, 3)
    row["fraction_end_to_end"] = round(s["requests_per_s"] / ideal, 3)
    # What one core could sustain at this CPU cost per request, were it all ours.
    cpu_ms = s["cpu_ms_per_request"]
    row["cpu_bound_per_s"] = round(1000 / cpu_ms, 1) if cpu_ms else None
    log(
        f"  {rig.kind} max_in_flight={in_flight}: steady {s['steady_requests_per_s']} req/s of "
        f"{ideal:.0f} ideal ({row['fraction']:.2f}), worker cpu {s['cpu_percent']}%"
    )
    return row


async def redis_census(rig: Rig, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Store commands per request, counted with MONITOR on a small untimed batch."""
    cli = shutil.which("redis-cli")
    if cli is None or rig.kind != "kafka":
        return None
    from topics import Topic

    settings, pids = await rig.pipeline(0.0, rig.o.in_flight, ["agent", "tool"])
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    result: dict[str, Any] = {}
    for scenario, hops in HOPS.items():
        # A warm-up as wide as the census: every connection of the pool is open already.
        n = 100
        warm = make_requests(n, n, scenario, f"w{uuid.uuid4().hex[:6]}")
        await rig.batch(source, sink, warm, hops, pids)
        requests = make_requests(n, n, scenario, f"c{uuid.uuid4().hex[:6]}")
        with tempfile.TemporaryFile() as out:
            monitor = await asyncio.create_subprocess_exec(
                cli, "-u", rig.redis_url, "monitor", stdout=out
            )
            await asyncio.sleep(0.5)
            await rig.batch(source, sink, requests, hops, pids)
            await asyncio.sleep(0.3)
            monitor.terminate()
            await monitor.wait()
            out.seek(0)
            client: dict[str, int] = {}
            scripted: dict[str, int] = {}
            for line in out.read().decode(errors="replace").splitlines():
                _, _, rest = line.partition("] ")
                if not rest.startswith('"'):
                    continue
                command = rest.split('"')[1].upper()
                counts = scripted if "[0 lua]" in line else client
                counts[command] = counts.get(command, 0) + 1
        result[scenario] = {
            "requests": n,
            "round_trips_per_request": round(sum(client.values()) / n, 2),
            "by_command": {k: round(v / n, 2) for k, v in sorted(client.items())},
            "inside_scripts_per_request": round(sum(scripted.values()) / n, 2),
        }
        log(f"  redis {scenario}: {result[scenario]['round_trips_per_request']} round trips/req")
    await rig.stop_workers()
    return result


# -- orchestration and report ---------------------------------------------------------------


def revision() -> str:
    """The commit measured, with ``+dirty`` when the working tree has changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_bus(
    kind: str,
    o: Options,
    services: dict[str, str],
    workdir: Path,
    profile: Path | None,
    census: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    procs = Procs(workdir, profile) if kind == "kafka" else None
    rig = Rig(kind, o, procs)
    result: dict[str, Any] = {}
    try:
        await rig.start(services.get("kafka", ""), services.get("redis", ""))
        log(f"(a) throughput on {kind}")
        result["throughput"] = await throughput(rig, log)
        await rig.stop_workers()
        await rig.stop_relays()
        log(f"(b) saturation on {kind}")
        result["saturation"] = [await saturation(rig, n, log) for n in o.slow_in_flight]
        if kind == "kafka" and census:
            result["redis_census"] = await redis_census(rig, log)
    except BaseException:
        if procs is not None:
            for name in procs.procs:
                log(f"--- {name} log tail ---\n{procs.tail(name, 5)}")
        raise
    finally:
        if procs is not None:
            procs.close()
        await rig.close()
    return result


def print_tables(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    print(
        f"pipeline benchmark: {m['cpus']} cores, load average at start "
        f"{' '.join(str(x) for x in m['load_average_at_start'])}, at end "
        f"{' '.join(str(x) for x in report['load_average_at_end'])}; "
        f"kafka: {report['services'].get('kafka_info', '-')}; "
        f"redis: {report['services'].get('redis_info', '-')}"
    )
    s = report["settings"]
    print(
        f"(a) zero-latency model, {s['requests']} requests over {s['conversations']} "
        f"conversations, {s['partitions']} partitions, max_in_flight {s['in_flight']}, "
        f"median of {s['rounds']} round(s). cpu ms: CPU of the worker (relay) processes per "
        f"request; wait %: time they were runnable but had no core, per cent of the run"
    )
    print(
        f"{'bus':<7}{'scenario':<9}{'hops':>4} {'req/s':>8} {'hops/s':>8} {'relay hops/s':>13} "
        f"{'ratio':>6} {'target':>7} {'cpu ms':>7} {'relay cpu':>10} {'wait %':>7}"
    )
    for row in report["throughput"]:
        p, b = row["pipeline"], row["relay"]
        print(
            f"{row['bus']:<7}{row['scenario']:<9}{row['hops']:>4} {p['requests_per_s']:>8.1f} "
            f"{p['per_hop_per_s']:>8.1f} {b['per_hop_per_s']:>13.1f} {row['ratio_per_hop']:>6.2f} "
            f"{'>=' + str(row['target_ratio']):>7} {_num(p['cpu_ms_per_request']):>7} "
            f"{_num(b['cpu_ms_per_request']):>10} {_num(p['cpu_wait_percent']):>7}"
        )
    print(
        f"(b) model sleeping {s['slow_latency']}s per call, one agent worker, {s['partitions']} "
        f"partitions, {s['slow_conversations']} conversations x {s['slow_turns']} request(s)"
    )
    print(
        f"{'bus':<7}{'in_flight':>9} {'ideal/s':>8} {'steady/s':>9} {'fraction':>9} "
        f"{'target':>7} {'e2e/s':>7} {'cpu %':>6} {'wait %':>7} {'cpu ms':>7} "
        f"{'1-core max/s':>13}"
    )
    for row in report["saturation"]:
        if "error" in row:
            print(
                f"{row['bus']:<7}{row['max_in_flight']:>9} {row['ideal_per_s']:>8.0f}  FAILED: "
                f"{row['error']}; worker errors: {row['worker_errors']}"
            )
            continue
        print(
            f"{row['bus']:<7}{row['max_in_flight']:>9} {row['ideal_per_s']:>8.0f} "
            f"{_num(row['steady_requests_per_s']):>9} {row['fraction']:>9.2f} "
            f"{'>=' + str(row['target_fraction']):>7} {row['requests_per_s']:>7.1f} "
            f"{_num(row['cpu_percent']):>6} {_num(row['cpu_wait_percent']):>7} "
            f"{_num(row['cpu_ms_per_request']):>7} "
            f"{_num(row['cpu_bound_per_s']):>13}"
        )
    census = report.get("redis_census")
    if census:
        for scenario, c in census.items():
            print(
                f"redis, {scenario}: {c['round_trips_per_request']} round trips per request "
                f"{c['by_command']}, {c['inside_scripts_per_request']} commands inside scripts"
            )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument("--bus", choices=["kafka", "memory", "both"], default="both")
    parser.add_argument("--requests", type=int, help="(a) requests per round (default 2000)")
    parser.add_argument("--conversations", type=int, help="(a) conversations (default 500)")
    parser.add_argument("--rounds", type=int, help="(a) rounds, median reported (default 3)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=256, help="(a) max_in_flight")
    parser.add_argument("--slow-latency", type=float, default=0.5)
    parser.add_argument("--slow-conversations", type=int, default=1000)
    parser.add_argument("--slow-turns", type=int, help="(b) requests per conversation (5)")
    parser.add_argument("--slow-in-flight", help="(b) max_in_flight values (256,1000)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a CPU-time cProfile of each Kafka worker process to DIR (slows them)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/pipeline.json")
    args = parser.parse_args()
    quick = args.quick
    o = Options(
        requests=args.requests or (200 if quick else 2000),
        conversations=args.conversations or (50 if quick else 500),
        rounds=args.rounds or (1 if quick else 3),
        partitions=args.partitions,
        in_flight=args.in_flight,
        warmup=30 if quick else 200,
        slow_latency=args.slow_latency,
        slow_conversations=args.slow_conversations,
        slow_turns=args.slow_turns or (1 if quick else 5),
        slow_in_flight=[
            int(x) for x in (args.slow_in_flight or ("256" if quick else "256,1000")).split(",")
        ],
    )
    buses = ["kafka", "memory"] if args.bus == "both" else [args.bus]
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "command": " ".join(["python", "bench/pipeline.py", *sys.argv[1:]]),
        "revision": revision(),
        "machine": machine(),
        "settings": dataclasses.asdict(o),
        "services": {},
        "throughput": [],
        "saturation": [],
        "redis_census": None,
        "workers": "Kafka: `agentstream worker agent|tool` subprocesses; memory: in this process",
    }

    logging.basicConfig(level=logging.WARNING)
    # aiokafka retries offset lookups on just-created topics and logs each attempt.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def log(line: str) -> None:
        print(line, flush=True)

    m = report["machine"]
    log(f"machine: {m['cpus']} cores, load average {m['load_average_at_start']}")
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipe-")))
        services: dict[str, str] = {}
        if "kafka" in buses:
            services["kafka"], services["kafka_info"] = stack.enter_context(kafka_service())
            services["redis"], services["redis_info"] = stack.enter_context(redis_service())
        report["services"] = {k: v for k, v in services.items() if k.endswith("_info")}
        for kind in buses:
            result = asyncio.run(run_bus(kind, o, services, workdir, args.profile, not quick, log))
            report["throughput"] += result["throughput"]
            report["saturation"] += result["saturation"]
            report["redis_census"] = result.get("redis_census") or report["redis_census"]
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - began, 1)
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out} in {report['total_seconds']}s")


if __name__ == "__main__":
    main()
