"""Each part's Prometheus metrics, read from the registry the test injects.

The runtime, the agent worker, the tool worker and the ingress each declare their own metrics
(:mod:`agentstream.handlers.runtime.metrics` creates them) on one shared registry. The names,
types and labels are what the dashboards (``infra/grafana/``) and the alert rules
(``infra/prometheus/rules.yml``) read: they are pinned here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agentstream.agents import ToolRegistry
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.runtime.metrics import (
    Counter,
    Gauge,
    Histogram,
    MetricsPart,
    RuntimeMetrics,
    counter,
    gauge,
    histogram,
)
from agentstream.handlers.stores.base import InProcessStore
from agentstream.handlers.tool import ToolHandlers, ToolMetrics
from agentstream.ingress.observe import IngressMetrics
from agentstream.ingress.server import IngressServer
from agentstream.process import build_workers
from agentstream.schemas import ToolCall, ToolCallData
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import Topic
from agentstream.topics.memory import InProcessBus
from agentstream.wiring import ensure_topics
from agentstream.workers import WORKERS
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from tests.workload import check, collect, make_turns, publish

# name -> (type, labels), per part: what dashboards and alert rules read.
RUNTIME = {
    "agentstream_events_consumed": ("counter", ("topic", "group")),
    "agentstream_events_produced": ("counter", ("topic",)),
    "agentstream_handler_seconds": ("histogram", ("handler", "outcome")),
    "agentstream_in_flight": ("gauge", ("group",)),
    "agentstream_consumer_lag": ("gauge", ("topic", "partition", "group")),
    "agentstream_retries": ("counter", ("topic", "handler", "kind")),
    "agentstream_dead_letters": ("counter", ("topic", "handler", "error_class")),
    "agentstream_duplicates_dropped": ("counter", ("handler",)),
    "agentstream_unsettled": ("counter", ("handler",)),
}
AGENT = {
    "agentstream_llm_tokens": ("counter", ("agent", "model", "kind", "tenant")),
    "agentstream_llm_cost_usd": ("counter", ("agent", "model", "tenant")),
    "agentstream_llm_calls": ("counter", ("agent", "model", "outcome")),
    "agentstream_responses": ("counter", ("agent", "status", "tenant")),
    "agentstream_agent_answer_seconds": ("histogram", ("agent", "status")),
    "agentstream_agent_handoffs": ("counter", ("agent", "target")),
    "agentstream_agent_subruns": ("counter", ("agent", "callee", "outcome")),
    "agentstream_agent_guardrail_rejections": ("counter", ("agent", "kind")),
}
TOOL = {
    "agentstream_tool_seconds": ("histogram", ("tool", "outcome")),
    "agentstream_tool_errors": ("counter", ("tool", "error_class")),
    "agentstream_circuit_state": ("gauge", ("name",)),
}
INGRESS = {
    "agentstream_http_requests": ("counter", ("route", "status")),
    "agentstream_http_seconds": ("histogram", ("route",)),
    "agentstream_ingress_streams": ("gauge", ()),
    "agentstream_ingress_idempotent_replays": ("counter", ()),
    # The requests it publishes: the runtime's series, on the request topic.
    "agentstream_events_produced": ("counter", ("topic",)),
}
EVERY = {**RUNTIME, **AGENT, **TOOL, **INGRESS}


def declared(part: MetricsPart) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        m._name: (m._type, tuple(m._labelnames))
        for m in vars(part).values()
        if isinstance(m, Counter | Gauge | Histogram)
    }


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {m.name: m.type for m in registry.collect()}


def total(registry: CollectorRegistry, sample: str, **labels: str) -> float:
    """The sum of ``sample`` over the series whose labels include ``labels``."""
    return sum(
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        pytest.param(RuntimeMetrics, RUNTIME, id="runtime"),
        pytest.param(AgentMetrics, AGENT, id="agent"),
        pytest.param(ToolMetrics, TOOL, id="tool"),
        pytest.param(IngressMetrics, INGRESS, id="ingress"),
    ],
)
def test_each_part_declares_its_own_metrics(
    part: type[MetricsPart], expected: dict[str, tuple[str, tuple[str, ...]]]
) -> None:
    registry = CollectorRegistry()
    metrics = part(registry)
    assert metrics.registry is registry
    assert declared(metrics) == expected
    assert set(families(registry)) == set(expected)  # nothing of the other parts


def test_the_parts_together_are_every_metric_and_no_label_is_an_id() -> None:
    assert len(EVERY) == 24
    for _, labels in EVERY.values():
        assert not [label for label in labels if "id" in label.split("_")], labels


def test_a_process_registers_every_part_once_on_its_registry() -> None:
    """What ``agentstream up`` builds: workers of every kind and the ingress with its
    projection worker, on one registry; a part built twice shares its metrics."""
    registry = CollectorRegistry()
    settings = Settings(topics=TopicSettings(prefix="metrics."))
    bus, store = InProcessBus(), InProcessStore()
    workers = build_workers(
        [k for k in WORKERS.names() if WORKERS.get(k).standalone],
        settings,
        bus,
        store,
        registry,
        asyncio.Event(),
    )
    for extra in workers.extras:
        extra.close()  # background coroutines, never started here
    server = IngressServer(settings, bus, store, metrics=registry)
    assert server.metrics.registry is registry
    assert families(registry) == {name: kind for name, (kind, _) in EVERY.items()}
    shared = {id(w.metrics.consumed) for w in workers.workers}
    assert server.worker is not None
    assert shared == {id(server.worker.metrics.consumed)}
    assert server.metrics.produced is RuntimeMetrics(registry).produced


def test_the_factories_get_or_create_on_each_registry() -> None:
    one, other = CollectorRegistry(), CollectorRegistry()
    first = counter(one, "agentstream_x", "X", ["topic"])
    assert counter(one, "agentstream_x", "X", ["topic"]) is first
    assert counter(other, "agentstream_x", "X", ["topic"]) is not first
    with pytest.raises(ValueError, match="already declared"):
        counter(one, "agentstream_x", "X", ["topic", "group"])
    with pytest.raises(ValueError, match="already declared"):
        gauge(one, "agentstream_x", "X", ["topic"])
    with pytest.raises(ValueError, match="already declared"):
        counter(one, "agentstream_x", "Another help text", ["topic"])
    h = histogram(one, "agentstream_h", "H", ["route"], buckets=(0.1, 1))
    with pytest.raises(ValueError, match="already declared"):
        histogram(one, "agentstream_h", "H", ["route"])  # other buckets
    # The labelled children are cached: one dict lookup on the hot path.
    assert first.labels("t") is first.labels("t")
    assert h.labels("/r") is h.labels("/r")
    first.labels("t").inc()
    assert one.get_sample_value("agentstream_x_total", {"topic": "t"}) == 1.0


async def test_runtime_and_agent_metrics_of_a_run() -> None:
    """Requests through the agent, tool and memory workers in process: the runtime counts
    every route's events, the agent its model calls and answers, on the injected registry."""
    registry = CollectorRegistry()
    settings = Settings(topics=TopicSettings(prefix="metrics-run.", partitions=2))
    bus, store = InProcessBus(), InProcessStore()
    await bus.start()
    await ensure_topics(bus, settings.catalog(), create=True)
    stop = asyncio.Event()
    workers = build_workers(
        ["router", "agent", "tool", "memory"], settings, bus, store, registry, stop
    )
    task = asyncio.create_task(workers.run(stop))
    turns = make_turns(3)
    try:
        await publish(bus, settings.catalog(), turns)
        records = await collect(bus, settings.catalog(), turns, timeout_s=60)
    finally:
        stop.set()
        await task
        await bus.stop()
    report = check(turns, records)
    assert report.ok, report.summary()
    user_request = settings.catalog().name(Topic.USER_REQUEST)
    assert total(registry, "agentstream_events_consumed_total", topic=user_request) >= 2 * (
        report.requests
    )  # the router's and the memory worker's groups
    assert total(registry, "agentstream_handler_seconds_count", handler="agent.assistant") > 0
    assert total(registry, "agentstream_events_produced_total") > 0
    assert total(registry, "agentstream_llm_calls_total", outcome="ok") > 0
    assert total(registry, "agentstream_llm_tokens_total", kind="prompt") > 0
    completed = total(registry, "agentstream_responses_total", status="completed")
    assert completed == report.requests
    assert total(registry, "agentstream_in_flight") == 0  # drained


class _Args(BaseModel):
    fail: bool


async def test_tool_metrics_of_a_call() -> None:
    registry = CollectorRegistry()
    tools = ToolRegistry(failure_threshold=1)

    @tools.tool(description="Fails when asked to.")
    async def picky(args: _Args) -> str:
        if args.fail:
            raise RuntimeError("asked to")
        return "fine"

    handlers = ToolHandlers(tools, ToolMetrics(registry))

    def call(fail: bool) -> ToolCall:
        data = ToolCallData(call_id=f"c-{fail}", step=1, tool="picky", arguments={"fail": fail})
        return ToolCall(source="test", request_id="r", conversation_id="c", data=data)

    outcome: Any = await handlers._run(call(False))
    assert outcome.ok
    with pytest.raises(RuntimeError, match="asked to"):
        await handlers._run(call(True))
    seconds = "agentstream_tool_seconds_count"
    assert registry.get_sample_value(seconds, {"tool": "picky", "outcome": "ok"}) == 1.0
    assert total(registry, seconds, tool="picky") == 2.0
    assert total(registry, "agentstream_tool_errors_total", tool="picky") == 1.0
    # One failure opens the circuit of a threshold-1 breaker: 2 is open.
    assert registry.get_sample_value("agentstream_circuit_state", {"name": "tool:picky"}) == 2.0
