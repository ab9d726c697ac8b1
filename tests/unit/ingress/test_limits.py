"""The ingress's limits and keys on their own: token buckets, the body-size middleware, auth."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from agentstream.ingress.auth import ApiKeys
from agentstream.ingress.limits import BodySizeLimit, BodyTooLarge, RateLimiter
from agentstream.schemas import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k")
    assert wait == pytest.approx(0.5)
    assert limiter.retry_after(wait) == 1
    assert limiter.take("other") == 0.0
    clock.now = 0.5
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0


def test_idle_buckets_are_evicted_when_full() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_buckets=2)
    limiter.take("a")
    limiter.take("b")
    clock.now = 10
    limiter.take("c")
    assert set(limiter._buckets) == {"c"}


def test_api_keys_plain_and_hashed() -> None:
    hashed = "sha256:" + hashlib.sha256(b"secret-2").hexdigest()
    keys = ApiKeys.from_config({"secret-1": "acme", hashed: "globex"})
    assert not keys.open
    one, two = keys.authenticate("secret-1"), keys.authenticate("secret-2")
    assert one is not None
    assert one.tenant == "acme"
    assert two is not None
    assert two.tenant == "globex"
    assert one.key_id != two.key_id
    assert "secret" not in one.key_id
    assert keys.authenticate("secret-3") is None
    assert keys.authenticate(None) is None


def test_no_keys_runs_open_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    keys = ApiKeys.from_config({})
    assert keys.open
    who = keys.authenticate(None)
    assert who is not None
    assert who.tenant == "default"
    assert "OPEN" in caplog.text


def test_empty_tenant_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ApiKeys.from_config({"k": ""})


async def run(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Any]:
    sent: list[Any] = []
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await BodySizeLimit(app, max_bytes=10)(scope, receive, send)
    return sent


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    reads = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reads
        reads += 1

    sent = await run(app, [(b"content-length", b"11")], [b"x" * 11])
    assert reads == 0
    assert sent[0]["status"] == 413


async def test_streamed_body_is_cut_at_the_limit() -> None:
    received: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent = await run(app, [], [b"x" * 6, b"x" * 6, b"x" * 6])
    assert received == [b"x" * 6]  # the second chunk passed the limit and was never handed on
    assert sent[0]["status"] == 413


async def test_body_too_large_is_an_http_exception() -> None:
    assert BodyTooLarge(10).status_code == 413
