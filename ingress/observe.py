"""Prometheus metrics of the HTTP side: responses by route and status, and their latency.

An ASGI middleware, so that every answer counts, including those that never reach a route
(413 from the body limit, 404 for unknown paths). The label is the route template
(``/v1/requests/{request_id}``), never the path itself: ids would grow the registry without
bound.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handlers.metrics import Metrics

__all__ = ["HttpMetrics"]


class HttpMetrics:
    """Counts responses by route template and status, and their latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
            route = scope.get("route")
            name = getattr(route, "path", "other")
            self.metrics.http_requests.labels(name, str(status)).inc()
            self.metrics.http_seconds.labels(name).observe(time.perf_counter() - started)
