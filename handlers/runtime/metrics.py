"""Prometheus metrics: the only module that creates metric objects and touches a registry.

Each part owns its metrics and declares them with this module's factories: the runtime's
(:class:`RuntimeMetrics`, below), the agent worker's
(:class:`agentstream.handlers.agent.metrics.AgentMetrics`), the tool worker's
(:class:`agentstream.handlers.tool.ToolMetrics`) and the ingress'
(:class:`agentstream.ingress.observe.IngressMetrics`) are :class:`MetricsPart` subclasses that
call :func:`counter`, :func:`gauge` and :func:`histogram` with one injected
``CollectorRegistry``, shared by every part of a process, so ``/metrics`` shows them all and
tests read exactly what one part recorded (``registry.get_sample_value``).

The factories get or create: a metric is registered once per registry, and a part built
twice on one registry (two workers of one process, the ingress' projection worker beside the
ingress) shares its metric objects, the way FastStream's Prometheus middleware reuses the
metrics already on the registry it is given. Asking for a registered name with another type,
help text or labels is an error, so two parts never disagree about one series.

Labels name topics, groups, handlers, tools, models, tenants and outcomes, never ids: a label
per request would grow the registry without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

__all__ = [
    "LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsPart",
    "RuntimeMetrics",
    "counter",
    "events_produced",
    "gauge",
    "histogram",
    "render",
]

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


LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

_Metric = Counter | Gauge | Histogram
# Per registry: name -> (metric, its declaration). Weak: a test's registry goes with it.
_declared: WeakKeyDictionary[CollectorRegistry, dict[str, tuple[_Metric, tuple[object, ...]]]]
_declared = WeakKeyDictionary()
_lock = threading.Lock()

T = TypeVar("T", Counter, Gauge, Histogram)


def _get_or_create(
    kind: type[T],
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: Sequence[str],
    **options: Any,
) -> T:
    declaration = (kind, documentation, tuple(labels), tuple(sorted(options.items())))
    with _lock:
        known = _declared.setdefault(registry, {})
        found = known.get(name)
        if found is None:
            metric = kind(name, documentation, labels, registry=registry, **options)
            known[name] = (metric, declaration)
            return metric
        metric_found, declared = found
        if declared != declaration or not isinstance(metric_found, kind):
            raise ValueError(
                f"metric {name} is already declared on this registry as {declared}, "
                f"not {declaration}"
            )
        return metric_found


def counter(
    registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str] = ()
) -> Counter:
    """The counter ``name`` of ``registry``, created on first use."""
    return _get_or_create(Counter, registry, name, documentation, labels)


def gauge(
    registry: CollectorRegistry, name: str, documentation: str, labels: Sequence[str] = ()
) -> Gauge:
    """The gauge ``name`` of ``registry``, created on first use."""
    return _get_or_create(Gauge, registry, name, documentation, labels)


def histogram(
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    *,
    buckets: Sequence[float] = LATENCY_BUCKETS,
) -> Histogram:
    """The histogram ``name`` of ``registry``, created on first use."""
    return _get_or_create(Histogram, registry, name, documentation, labels, buckets=tuple(buckets))


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything on ``registry``, for ``/metrics``."""
    return generate_latest(registry)


class MetricsPart:
    """The metrics of one part, on ``registry`` (a fresh one when none is given: a part
    alone, in a test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

    def render(self) -> bytes:
        """The text exposition format of the whole registry: every part of the process."""
        return render(self.registry)


class RuntimeMetrics(MetricsPart):
    """What the runtime counts for every route of every worker: events consumed and
    produced, handler latency, events in flight, consumer lag, retries, dead letters and
    dropped duplicates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.consumed = counter(
            r, "agentstream_events_consumed", "Events consumed", ["topic", "group"]
        )
        self.produced = events_produced(r)
        self.handler_seconds = histogram(
            r,
            "agentstream_handler_seconds",
            "Handler latency, decode to outputs published",
            ["handler", "outcome"],
        )
        self.in_flight = gauge(r, "agentstream_in_flight", "Events held by the runtime", ["group"])
        self.lag = gauge(
            r,
            "agentstream_consumer_lag",
            "End offset minus committed offset",
            ["topic", "partition", "group"],
        )
        self.retries = counter(
            r, "agentstream_retries", "Retry attempts", ["topic", "handler", "kind"]
        )
        self.dead_letters = counter(
            r,
            "agentstream_dead_letters",
            "Events sent to a dead-letter topic",
            ["topic", "handler", "error_class"],
        )
        self.duplicates = counter(
            r, "agentstream_duplicates_dropped", "Events already handled (dedup by id)", ["handler"]
        )
        self.unsettled = counter(
            r,
            "agentstream_unsettled",
            "Processing attempts that failed around the event (a publish refused, a bug); "
            "the event is processed again in place",
            ["handler"],
        )


def events_produced(registry: CollectorRegistry) -> Counter:
    """``agentstream_events_produced{topic}``: the runtime's outputs, and the requests the
    ingress publishes (one series per topic, whoever produced it)."""
    return counter(registry, "agentstream_events_produced", "Events produced", ["topic"])
