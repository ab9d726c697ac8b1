"""Prometheus metrics of workers and the ingress: the only module that touches the registry.

The registry is injected, so tests read exactly what one worker recorded. Labels name
topics, groups, handlers, tools, models, tenants and outcomes, never ids: a label per
request would grow the registry without bound.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

__all__ = ["Metrics"]

M = TypeVar("M", bound="_CachedLabels")


class _CachedLabels:
    """``labels()`` from a dict: prometheus_client's validates, converts and locks on every
    call, a few microseconds each, several calls per event."""

    __slots__ = ()

    def labels(self: M, *values: object, **named: object) -> M:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc, no-any-return]
        cache: dict[tuple[object, ...], M] = self.__dict__.setdefault("_cached_children", {})
        child = cache.get(values)
        if child is None:
            child = cache[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self.__dict__.pop("_cached_children", None)
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_cached_children", None)
        super().clear()  # type: ignore[misc]


class Counter(_CachedLabels, _Counter):
    pass


class Gauge(_CachedLabels, _Gauge):
    pass


class Histogram(_CachedLabels, _Histogram):
    pass


_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "agentstream_events_consumed", "Events consumed", ["topic", "group"], registry=r
        )
        self.produced = Counter(
            "agentstream_events_produced", "Events produced", ["topic"], registry=r
        )
        self.handler_seconds = Histogram(
            "agentstream_handler_seconds",
            "Handler latency, decode to outputs published",
            ["handler", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "agentstream_in_flight", "Events held by the runtime", ["group"], registry=r
        )
        self.lag = Gauge(
            "agentstream_consumer_lag",
            "End offset minus committed offset",
            ["topic", "partition", "group"],
            registry=r,
        )
        self.retries = Counter(
            "agentstream_retries", "Retry attempts", ["topic", "handler", "kind"], registry=r
        )
        self.dead_letters = Counter(
            "agentstream_dead_letters",
            "Events sent to a dead-letter topic",
            ["topic", "handler", "error_class"],
            registry=r,
        )
        self.duplicates = Counter(
            "agentstream_duplicates_dropped",
            "Events already handled (dedup by id)",
            ["handler"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "agentstream_llm_tokens", "LLM tokens", ["model", "kind", "tenant"], registry=r
        )
        self.llm_cost = Counter(
            "agentstream_llm_cost_usd", "LLM cost in USD", ["model", "tenant"], registry=r
        )
        self.llm_calls = Counter(
            "agentstream_llm_calls", "LLM calls", ["model", "outcome"], registry=r
        )
        self.tool_seconds = Histogram(
            "agentstream_tool_seconds",
            "Tool latency",
            ["tool", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_errors = Counter(
            "agentstream_tool_errors", "Tool errors", ["tool", "error_class"], registry=r
        )
        self.circuit_state = Gauge(
            "agentstream_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"],
            registry=r,
        )
        self.responses = Counter(
            "agentstream_responses", "Terminal responses", ["status", "tenant"], registry=r
        )
        self.http_requests = Counter(
            "agentstream_http_requests", "Ingress requests", ["route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "agentstream_http_seconds",
            "Ingress latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ingress_streams = Gauge(
            "agentstream_ingress_streams", "Open Server-Sent Event streams", registry=r
        )
        self.ingress_idempotent_replays = Counter(
            "agentstream_ingress_idempotent_replays",
            "POSTs answered from an earlier request with the same Idempotency-Key",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format, for ``/metrics``."""
        return generate_latest(self.registry)
