"""Limits that reject a request before it costs anything: body size and rate per key.

:class:`BodySizeLimit` is an ASGI middleware: a declared ``Content-Length`` above the limit
is refused with 413 before a byte of the body is read, and a body without one (chunked) or
with a lying one is counted as it streams in and refused as soon as it passes the limit, so
the ingress never buffers more than the limit.

:class:`RateLimiter` is a token bucket per API key (``rate_per_second`` refill,
``rate_burst`` capacity). It lives in each replica's memory: with N replicas behind a load
balancer a key gets up to N times the rate. That is the documented trade-off (see
``docs/adr/0006-ingress.md``): a shared limiter would put a store round trip on every request.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "BodyTooLarge", "RateLimiter", "content_length", "refuse_too_large"]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await refuse_too_large(send, self.max_bytes)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            # Only when the app let it escape (a route that reads the body itself).
            if started:
                raise
            await refuse_too_large(send, self.max_bytes)


async def refuse_too_large(send: Send, max_bytes: int) -> None:
    """The 413 for a body declared larger than ``max_bytes``, answered without reading it
    (hence ``Connection: close``)."""
    body = json.dumps(
        {
            "error": "payload_too_large",
            "message": f"request body larger than {max_bytes} bytes",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def content_length(scope: Scope) -> int | None:
    """The declared ``Content-Length``; None when absent or not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key; :meth:`take` returns 0 when allowed, else seconds to wait."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
    ) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def retry_after(self, wait_s: float) -> int:
        """``wait_s`` as a ``Retry-After`` value: whole seconds, at least 1."""
        return max(1, math.ceil(wait_s))

    def _evict(self, now: float) -> None:
        # Buckets that refilled completely are indistinguishable from new ones.
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
