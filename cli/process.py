"""Running workers in a process: build their handlers, start, stop on SIGTERM.

``agentstream worker agent|tool|memory|stats`` runs one kind per process against Kafka and Redis
(run several processes per consumer group to scale); ``agentstream up`` runs every kind
plus the ingress in one process on the embedded default. A worker process also serves
``/healthz``, ``/readyz`` and ``/metrics`` on ``AGENTSTREAM_METRICS_PORT`` when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentstream.agents import ToolRegistry, builtin_registry, memory_tool_specs
from agentstream.agents.models import Model, ModelPrice, ModelRouter
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.agent.routes import AgentConfig, AgentHandlers, DeadlineSweeper
from agentstream.handlers.memory import MemoryHandlers
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.worker import Worker
from agentstream.handlers.stats.routes import StatsConfig, StatsHandlers, WindowCloser
from agentstream.handlers.stores.base import StateStore
from agentstream.handlers.tool import ToolHandlers, ToolMetrics
from agentstream.schemas.errors import ConfigError
from agentstream.settings import Settings
from agentstream.topics import Bus, Topic
from agentstream.wiring import runtime_config
from prometheus_client import CollectorRegistry

__all__ = [
    "WORKER_KINDS",
    "WorkerKind",
    "WorkerSet",
    "build_model",
    "build_workers",
    "install_signals",
]

log = logging.getLogger(__name__)

WorkerKind = Literal["agent", "tool", "memory", "stats"]
WORKER_KINDS: tuple[WorkerKind, ...] = ("agent", "tool", "memory", "stats")


def build_model(settings: Settings) -> ModelRouter:
    m = settings.model
    price = ModelPrice(
        prompt_per_1k=m.prompt_price_per_1k, completion_per_1k=m.completion_price_per_1k
    )
    small: Model
    large: Model | None = None
    if m.provider == "openai":
        if not m.base_url and m.api_key is None:
            raise ConfigError(
                "AGENTSTREAM_MODEL__PROVIDER=openai needs AGENTSTREAM_MODEL__BASE_URL "
                "or AGENTSTREAM_MODEL__API_KEY"
            )
        from agentstream.agents import OpenAIModel  # only here: a tool worker needs no openai

        key = m.api_key.get_secret_value() if m.api_key else "unused"
        small = OpenAIModel(
            model=m.model,
            base_url=m.base_url,
            api_key=key,
            timeout_s=m.timeout_s,
            price=price,
            stream=m.stream,
        )
        if m.large_model:
            large = OpenAIModel(
                model=m.large_model,
                base_url=m.base_url,
                api_key=key,
                timeout_s=m.timeout_s,
                price=price,
                stream=m.stream,
            )
    else:
        from agentstream.agents import OfflineModel

        small = OfflineModel(latency_s=m.offline_latency_s)
    return ModelRouter(small, large, large_prompt_tokens=m.route_above_tokens)


def tool_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools, plus those of ``AGENTSTREAM_TOOLS_MODULE`` when set."""
    registry = builtin_registry()
    if settings.tools_module:
        try:
            module = importlib.import_module(settings.tools_module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import tools module {settings.tools_module!r}: {exc}"
            ) from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(
                f"tools module {settings.tools_module!r} has no register(registry) function"
            )
        register(registry)
    return registry


@dataclass
class WorkerSet:
    """Workers of one process and the background tasks that go with them."""

    workers: list[Worker] = field(default_factory=list)
    extras: list[Coroutine[Any, Any, None]] = field(default_factory=list)
    sweepers: list[DeadlineSweeper] = field(default_factory=list)

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
    kinds: Sequence[WorkerKind],
    settings: Settings,
    bus: Bus,
    store: StateStore,
    metrics: CollectorRegistry,
    stop: asyncio.Event,
    *,
    router: ModelRouter | None = None,
    registry: ToolRegistry | None = None,
) -> WorkerSet:
    """Workers of ``kinds``; ``router`` and ``registry`` replace the configured model and
    the built-in tools (embedding applications and tests inject their own). ``metrics`` is
    the process' Prometheus registry: each part registers its own metrics on it."""
    catalog = settings.catalog()
    result = WorkerSet()
    runtime_metrics = RuntimeMetrics(metrics)
    registry = registry or tool_registry(settings)
    for kind in kinds:
        config = runtime_config(settings, f"agentstream-{kind}", f"{kind}-worker")
        if kind == "agent":
            a = settings.agent
            handlers = AgentHandlers(
                router or build_model(settings),
                [*registry.specs(), *memory_tool_specs()],
                AgentConfig(
                    system_prompt=a.system_prompt,
                    max_steps=a.max_steps,
                    deadline_s=a.deadline_s,
                    history_budget_tokens=a.history_budget_tokens,
                    # The offline model answers faster than a cache lookup would.
                    cache=settings.model.cache and settings.model.provider != "offline",
                    cache_ttl_s=settings.model.cache_ttl_s,
                ),
                AgentMetrics(metrics),
            )
            worker = Worker(bus, store, catalog, handlers.routes(), config, metrics=runtime_metrics)
            sweeper = DeadlineSweeper(
                worker, handlers, settings.namespace, catalog.name(Topic.USER_REQUEST)
            )
            result.extras.append(sweeper.run(stop))
            result.sweepers.append(sweeper)
        elif kind == "tool":
            worker = Worker(
                bus,
                store,
                catalog,
                ToolHandlers(registry, ToolMetrics(metrics)).routes(),
                config,
                metrics=runtime_metrics,
            )
        elif kind == "memory":
            worker = Worker(
                bus, store, catalog, MemoryHandlers().routes(), config, metrics=runtime_metrics
            )
        else:
            s = settings.stats
            stats = StatsHandlers(
                StatsConfig(
                    window_s=s.window_s,
                    grace_s=s.grace_s,
                    instance=f"{socket.gethostname()}/{os.getpid()}",
                )
            )
            worker = Worker(bus, store, catalog, stats.routes(), config, metrics=runtime_metrics)
            closer = WindowCloser(
                worker,
                stats,
                settings.namespace,
                catalog.name(Topic.AGENT_RESPONSE),
                interval_s=min(1.0, s.window_s / 4),
            )
            result.extras.append(closer.run(stop))
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
