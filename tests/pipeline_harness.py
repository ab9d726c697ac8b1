"""Running the pipeline inside a test: settings per bus, workers in the test's event loop.

``Stack`` is the bus, the store and the settings of one test on one bus (in-process, or
real Kafka with real Redis); ``running`` runs workers of the given kinds until the block
ends. Models and tools can be replaced, to inject failures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from agentstream.agents import Message, ModelReply, OfflineModel, ToolRegistry, ToolSpec
from agentstream.agents.models.routing import ModelRouter
from agentstream.handlers.stores.base import StateStore
from agentstream.process import build_workers
from agentstream.schemas import AgentResponse, Envelope, SchemaError, decode, encode
from agentstream.settings import RuntimeSettings, Settings, TopicSettings
from agentstream.topics import Bus, KafkaConfig, OutgoingRecord, Record, Topic
from agentstream.wiring import build_bus, build_store, ensure_topics
from prometheus_client import CollectorRegistry

__all__ = ["FlakyModel", "Stack", "make_stack", "publish_event", "running", "wait_for"]

FAST_RETRIES = RuntimeSettings(
    in_place_attempts=2,
    max_attempts=6,
    retry_base_delay_s=0.01,
    retry_topic_delay_s=0.2,
    drain_timeout_s=2,
)


@dataclass
class Stack:
    settings: Settings
    bus: Bus
    store: StateStore

    @property
    def catalog(self) -> Any:
        return self.settings.catalog()

    async def read(self, topic: str) -> list[Record]:
        return await self.bus.read(topic)

    async def responses(self) -> dict[str, list[AgentResponse]]:
        out: dict[str, list[AgentResponse]] = {}
        for record in await self.bus.read(self.catalog.name(Topic.AGENT_RESPONSE)):
            try:
                event = decode(record.value)
            except SchemaError:
                continue
            if isinstance(event, AgentResponse):
                out.setdefault(event.request_id, []).append(event)
        return out


async def make_stack(
    kind: str,
    prefix: str,
    *,
    kafka: str | None = None,
    redis: str | None = None,
    runtime: RuntimeSettings = FAST_RETRIES,
    partitions: int = 2,
    **extra: Any,
) -> Stack:
    if kind == "memory":
        settings = Settings(
            topics=TopicSettings(prefix=prefix, partitions=partitions), runtime=runtime, **extra
        )
    else:
        settings = Settings(
            bus="kafka",
            kafka=KafkaConfig(
                bootstrap_servers=kafka or "", session_timeout_ms=6000, heartbeat_interval_ms=500
            ),
            redis_url=redis,
            topics=TopicSettings(prefix=prefix, partitions=partitions),
            runtime=runtime,
            **extra,
        )
    bus, store = build_bus(settings), build_store(settings)
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    return Stack(settings, bus, store)


@asynccontextmanager
async def running(
    stack: Stack,
    kinds: Sequence[str],
    *,
    router: ModelRouter | None = None,
    registry: ToolRegistry | None = None,
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    if "agent" in kinds and "router" not in kinds:
        kinds = ["router", *kinds]  # the agents get their turns from the router (ADR 23)
    workers = build_workers(
        kinds,
        stack.settings,
        stack.bus,
        stack.store,
        CollectorRegistry(),
        stop,
        router=router,
        registry=registry,
    )
    task = asyncio.create_task(workers.run(stop))
    try:
        await asyncio.wait_for(asyncio.gather(*(w.started.wait() for w in workers.workers)), 30)
        yield
    finally:
        stop.set()
        await task


async def publish_event(stack: Stack, event: Envelope[Any]) -> None:
    key, value, headers = encode(event)
    await stack.bus.publish(
        OutgoingRecord(stack.catalog.topic_of(event), value, key, tuple(headers))
    )


async def wait_for(
    probe: Callable[[], Any], *, timeout_s: float = 30.0, interval_s: float = 0.2
) -> Any:
    """Await ``probe()`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last value: {last!r}")


class FlakyModel:
    """The offline model, failing the first ``failures`` calls whose last user message
    contains ``marker`` with ``error`` (to inject retriable or permanent model failures)."""

    def __init__(self, marker: str, failures: int, error: Callable[[], Exception]) -> None:
        self.inner = OfflineModel()
        self.name = "flaky"
        self.marker = marker
        self.failures = failures
        self.error = error
        self.calls = 0

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        last_user = next((m.content or "" for m in reversed(messages) if m.role == "user"), "")
        if self.marker in last_user:
            self.calls += 1
            if self.calls <= self.failures:
                raise self.error()
        return await self.inner.complete(messages, tools, max_tokens=max_tokens)
