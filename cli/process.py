"""Running workers in a process: build their handlers, start, stop on SIGTERM.

``agentstream worker KIND...`` runs the kinds of :data:`agentstream.workers.WORKERS` against
Kafka and Redis (run several processes per consumer group to scale); ``agentstream up`` runs
every kind plus the ingress in one process on the embedded default. A worker process also serves
``/healthz``, ``/readyz`` and ``/metrics`` on ``AGENTSTREAM_METRICS_PORT`` when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentstream.agents import App, ToolRegistry
from agentstream.agents.models import ModelRouter
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stores.base import StateStore
from agentstream.settings import Settings
from agentstream.topics import Bus
from agentstream.wiring import build_model, runtime_config, tool_registry
from agentstream.workers import WORKERS, Needs, Sweeper, WorkerRegistry
from prometheus_client import CollectorRegistry

__all__ = [
    "WorkerSet",
    "build_model",
    "build_workers",
    "install_signals",
    "tool_registry",
    "until",
]

log = logging.getLogger(__name__)


@dataclass
class WorkerSet:
    """Workers of one process and the background tasks that go with them."""

    workers: list[Worker] = field(default_factory=list)
    extras: list[Coroutine[Any, Any, None]] = field(default_factory=list)
    #: The periodic jobs of the workers (the deadline sweeper, the window closer), started.
    periodic: list[Sweeper] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(w.run(stop), name=w.config.group_id) for w in self.workers]
        tasks += [asyncio.create_task(c) for c in self.extras]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    stop.set()
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def build_workers(
    kinds: Sequence[str],
    settings: Settings,
    bus: Bus,
    store: StateStore,
    metrics: CollectorRegistry,
    stop: asyncio.Event,
    *,
    router: ModelRouter | None = None,
    registry: ToolRegistry | None = None,
    workers: WorkerRegistry = WORKERS,
    agents: Sequence[str] | None = None,
    app: App | None = None,
) -> WorkerSet:
    """Workers of ``kinds`` (names in ``workers``), each with its periodic jobs; ``router``
    and ``registry`` replace the configured model and the built-in tools, ``app`` the
    configured app (embedding applications and tests inject their own). A per-agent kind
    runs one worker (one consumer group) for each of ``agents``, default every declared
    agent; an undeclared name is a ConfigError."""
    catalog = settings.catalog()
    needs = Needs(settings, metrics, router=router, tools=registry, app=app)
    runtime_metrics = RuntimeMetrics(metrics)
    result = WorkerSet()
    for name in kinds:
        kind = workers.get(name)
        if kind.per_agent:
            chosen = list(agents) if agents else list(needs.app.names())
            builds: list[tuple[Needs, str | None]] = [
                (needs.for_agent(needs.app.get(a).name), a) for a in chosen
            ]
        else:
            builds = [(needs, None)]
        for kind_needs, agent in builds:
            parts = kind.build(kind_needs)
            group = kind.group if agent is None else f"{kind.group}.{agent}"
            config = runtime_config(settings, group, kind.source)
            worker = Worker(bus, store, catalog, parts.routes, config, metrics=runtime_metrics)
            for job in parts.periodic:
                sweeper = job.start(worker)
                result.extras.append(sweeper.run(stop))
                result.periodic.append(sweeper)
            result.workers.append(worker)
    return result


async def until(stop: asyncio.Event, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` (a server that runs until cancelled) until ``stop`` is set."""
    task = asyncio.create_task(coro)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: stop fetching, drain, commit, leave the group."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
