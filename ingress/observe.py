"""Prometheus metrics of the ingress (:class:`IngressMetrics`): responses by route and
status, and their latency, open SSE streams, idempotent replays, and the requests it
publishes (the runtime's ``agentstream_events_produced`` series of the request topic).

An ASGI middleware, so that every answer counts, including those that never reach a route
(413 from the body limit, 404 for unknown paths). The label is the route template
(``/v1/requests/{request_id}``), never the path itself: ids would grow the registry without
bound.
The labelled children are cached here: prometheus_client's ``labels()`` takes a lock and
builds a key on every call, a measurable share of a request on the hot path.
"""

from __future__ import annotations

import time

from agentstream.handlers.runtime.metrics import (
    Counter,
    Histogram,
    MetricsPart,
    counter,
    events_produced,
    gauge,
    histogram,
)
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HttpMetrics", "IngressMetrics", "RouteMetrics"]


class IngressMetrics(MetricsPart):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.http_requests = counter(
            r, "agentstream_http_requests", "Ingress requests", ["route", "status"]
        )
        self.http_seconds = histogram(r, "agentstream_http_seconds", "Ingress latency", ["route"])
        self.ingress_streams = gauge(
            r, "agentstream_ingress_streams", "Open Server-Sent Event streams"
        )
        self.ingress_idempotent_replays = counter(
            r,
            "agentstream_ingress_idempotent_replays",
            "POSTs answered from an earlier request with the same Idempotency-Key",
        )
        self.produced = events_produced(r)


class RouteMetrics:
    """The labelled children of the HTTP metrics, cached by route template and status."""

    def __init__(self, metrics: IngressMetrics) -> None:
        self.metrics = metrics
        # Bounded: route templates times status codes.
        self._counts: dict[tuple[str, int], Counter] = {}
        self._seconds: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        count = self._counts.get((route, status))
        if count is None:
            count = self._counts[route, status] = self.metrics.http_requests.labels(
                route, str(status)
            )
        count.inc()
        histogram = self._seconds.get(route)
        if histogram is None:
            histogram = self._seconds[route] = self.metrics.http_seconds.labels(route)
        histogram.observe(seconds)


class HttpMetrics:
    """Counts responses by route template and status, and their latency."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = RouteMetrics(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            name = getattr(scope.get("route"), "path", "other")
            self.routes.observe(name, status, time.perf_counter() - started)
