"""The rig of ``bench/pipeline.py``: one bus, its topics, its pipeline workers and relay
chains, and the batches run through them.

On Kafka the workers and relays are processes (:class:`bench.pipeline_services.Procs`);
on the in-process bus they are tasks of this process on the same bus and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentstream.topics import Bus, TopicDescription

from bench.pipeline_batch import Batch, bus_batch, kafka_batch
from bench.pipeline_services import Procs, bench_settings, worker_env
from bench.pipeline_workload import Request
from bench.relay import relay_bus

WorkerKind = Literal["router", "agent", "tool", "memory"]


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
    #: The scenarios of (a) and of the census (``bench.pipeline_workload.LAYOUT``).
    scenarios: tuple[str, ...] = ("chat", "tool", "handoff", "agent_tool")
    #: (a) on Kafka: measure the guarded floor too.
    floor: bool = True
    #: Rows of (b): (max_in_flight, conversations, latency); empty: ``slow_in_flight`` with
    #: ``slow_conversations`` and ``slow_latency``.
    slow_rows: list[tuple[int, int, float]] = field(default_factory=list)
    skip_throughput: bool = False


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
        #: Wall-clock time the last pipeline's workers were started (their processes spawned).
        self.spawned_at = 0.0

    async def start(self, bootstrap: str = "", redis_url: str = "") -> None:
        self.bootstrap, self.redis_url = bootstrap, redis_url
        if self.kind == "kafka":
            from agentstream.topics.config import KafkaConfig
            from agentstream.topics.kafka import KafkaBus
            from aiokafka import AIOKafkaProducer

            self.bus = KafkaBus(KafkaConfig(bootstrap_servers=bootstrap))
            self.producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
            )
            await self.producer.start()
        else:
            from agentstream.topics.memory import InProcessBus

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
        self,
        source: str,
        sink: str,
        requests: Sequence[Request],
        hops: int,
        pids: Sequence[int],
        *,
        hold: bool = False,
    ) -> Batch:
        """One batch through a chain. ``hold`` (Kafka): the chain's processes are stopped
        while it is published, then drain it as a backlog (see ``kafka_batch``); in process
        the whole batch is published before any consumer runs anyway."""
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
                hold=hold,
            )
        return await bus_batch(self.bus, source, sink, requests, hops, timeout)

    async def pipeline(
        self,
        latency: float,
        in_flight: int,
        kinds: Sequence[WorkerKind],
        app: str | None = None,
    ) -> Any:
        """Topics of a fresh prefix and workers of ``kinds`` on them, running ``app`` (None:
        the built-in assistant); returns the settings and the worker pids (empty in
        process). The router is added when missing: no request reaches an agent without it
        (issue 16)."""
        if "router" not in kinds:
            kinds = ["router", *kinds]
        from agentstream.handlers.stores.base import InProcessStore
        from agentstream.process import build_workers
        from agentstream.wiring import ensure_topics
        from prometheus_client import CollectorRegistry

        assert self.bus is not None
        settings = bench_settings(self.kind, self.o.partitions, self.bootstrap, self.redis_url)
        settings = settings.model_copy(
            update={
                "app": app,
                "model": settings.model.model_copy(update={"offline_latency_s": latency}),
                "runtime": settings.runtime.model_copy(update={"max_in_flight": in_flight}),
            }
        )
        await ensure_topics(self.bus, settings.catalog(), create=True)
        pids: list[int] = []
        self.spawned_at = time.time()
        if self.kind == "kafka":
            assert self.procs is not None
            env = worker_env(
                self.bootstrap,
                self.redis_url,
                settings.topics.prefix,
                self.o.partitions,
                latency,
                in_flight,
                app,
            )
            for kind in kinds:
                pids.append(self.procs.worker(f"{kind}-{settings.topics.prefix}", kind, env))
        else:
            stop = asyncio.Event()
            workers = build_workers(
                list(kinds), settings, self.bus, InProcessStore(), CollectorRegistry(), stop
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

    async def relay(
        self, prefix: str, layout: int | Sequence[str], *, guarded: bool = False
    ) -> tuple[str, str, list[int]]:
        """A relay chain laid out like the workers: ``layout`` names the process of each hop
        (``bench.pipeline_workload.LAYOUT``), hops of one name in one process. An int K:
        the layout of before issue 16, K hops, the second in a process of its own.
        ``guarded``: the guarded relay, on Kafka and Redis only (see ``bench/relay.py``)."""
        assert self.bus is not None
        if isinstance(layout, int):
            layout = ["agent" if i != 1 else "tool" for i in range(layout)]
        hops = len(layout)
        kind = "guarded" if guarded else "relay"
        label = "-".join(layout)
        names = [f"{prefix}{kind}.{label}.h{i}" for i in range(hops + 1)]
        await self.bus.create_topics([TopicDescription(n, self.o.partitions, 1) for n in names])
        processes: dict[str, dict[str, str]] = {}
        for i, who in enumerate(layout):
            processes.setdefault(who, {})[names[i]] = names[i + 1]
        pids = []
        for i, part in enumerate(processes.values()):
            if self.kind == "kafka":
                assert self.procs is not None
                redis = self.redis_url if guarded else None
                name = f"relay{'-guarded' if guarded else ''}.{label}-{i}"  # "relay*": a relay
                pids.append(self.procs.relay(name, self.bootstrap, part, redis))
            else:
                assert not guarded, "the guarded relay runs on Kafka and Redis only"
                group = f"relay.{label}-{i}"
                self.tasks.append(asyncio.create_task(relay_bus(self.bus, group, part, self.stop)))
        return names[0], names[-1], pids
