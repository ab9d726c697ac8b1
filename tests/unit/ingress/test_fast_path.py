"""``POST /v1/requests`` on its raw ASGI fast path (:mod:`agentstream.ingress.create`), byte for
byte.

The expected status lines, header lists (names, values and order) and bodies below are
what the FastAPI route answered before the fast path existed; the fast path must answer
exactly the same, and so must the router's way to the same endpoint (taken with a
``root_path``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress import create_app
from agentstream.ingress.create import FastPath
from agentstream.ingress.observe import IngressMetrics
from agentstream.topics.bus import RecordTooLarge
from fastapi import FastAPI

from tests.unit.ingress.test_app import KEY_A, KEY_B, RecordingBus, settings

JSON = (b"content-type", b"application/json")
AUTH = (b"authorization", f"Bearer {KEY_A}".encode())
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ACCEPTED = b'{"request_id":"<id>","conversation_id":"<id>","status":"accepted"}'
Headers = list[tuple[bytes, bytes]]


async def post(
    app: FastAPI,
    headers: Headers,
    chunks: list[bytes],
    *,
    query: bytes = b"",
    root_path: str = "",
) -> tuple[int, Headers, bytes]:
    """One POST through the app as uvicorn would send it; ids in the answer become
    ``<id>``."""
    sent: list[dict[str, Any]] = []
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if not pending:
            await asyncio.sleep(3600)
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    if len(chunks) == 1 and not any(k == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(chunks[0])).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{root_path}/v1/requests",
        "raw_path": f"{root_path}/v1/requests".encode(),
        "query_string": query,
        "root_path": root_path,
        "headers": [(b"host", b"ingress"), *headers],
        "client": ("127.0.0.1", 5555),
        "server": ("ingress", 80),
    }
    await app(scope, receive, send)
    start, *rest = sent
    body = b"".join(m.get("body", b"") for m in rest)
    return (
        start["status"],
        [(k, UUID.sub(b"<id>", v)) for k, v in start["headers"]],
        UUID.sub(b"<id>", body),
    )


def error(status: int, code: str, message: str, *extra: tuple[bytes, bytes]) -> Any:
    body = json.dumps({"error": code, "message": message, "detail": None}, separators=(",", ":"))
    raw = body.encode()
    return status, [*extra, (b"content-length", str(len(raw)).encode()), JSON], raw


def accepted() -> Any:
    """A 202 with fresh ids (36 characters each in the real body)."""
    length = str(len(ACCEPTED) + 2 * (36 - len("<id>"))).encode()
    return 202, [(b"location", b"/v1/requests/<id>"), (b"content-length", length), JSON], ACCEPTED


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


@pytest.fixture
def app(bus: RecordingBus) -> FastAPI:
    return create_app(settings(), bus, InProcessStore(), IngressMetrics())  # type: ignore[arg-type]


@pytest.mark.parametrize("root_path", ["", "/api"])
async def test_accepted_is_byte_identical(app: FastAPI, bus: RecordingBus, root_path: str) -> None:
    good = [b'{"text":"hi"}']
    assert await post(app, [AUTH, JSON], good, root_path=root_path) == accepted()
    assert await post(app, [AUTH], good, root_path=root_path) == accepted()  # no content type
    chunked = [b'{"text":', b'"hi", "conversation_id": "c-1"}']
    status, headers, body = await post(app, [AUTH, JSON], chunked, root_path=root_path)
    assert (status, body) == (
        202,
        b'{"request_id":"<id>","conversation_id":"c-1","status":"accepted"}',
    )
    assert headers == [(b"location", b"/v1/requests/<id>"), (b"content-length", b"97"), JSON]
    lower = (b"authorization", f"bearer  {KEY_A} ".encode())
    assert await post(app, [lower, JSON], good, root_path=root_path) == accepted()
    assert len(bus.published) == 4


@pytest.mark.parametrize("root_path", ["", "/api"])
async def test_refusals_are_byte_identical(app: FastAPI, bus: RecordingBus, root_path: str) -> None:
    async def answer(headers: Headers, chunks: list[bytes], query: bytes = b"") -> Any:
        return await post(app, headers, chunks, query=query, root_path=root_path)

    unauthorized = error(
        401, "unauthorized", "missing or unknown API key", (b"www-authenticate", b"Bearer")
    )
    good = [b'{"text":"hi"}']
    assert await answer([JSON], good) == unauthorized
    assert await answer([(b"authorization", b"Bearer nope"), JSON], good) == unauthorized
    assert await answer([JSON], [b"{nope"]) == unauthorized  # auth comes before the body

    status, headers, body = await answer([AUTH, JSON], [b"{nope"])
    assert status == 422
    assert headers == [(b"content-length", str(len(body)).encode()), JSON]
    assert json.loads(body) == {
        "error": "validation_error",
        "message": "invalid request: body: Invalid JSON: key must be a string at line 1 column 2",
        "detail": [
            {
                "loc": ["body"],
                "msg": "Invalid JSON: key must be a string at line 1 column 2",
                "type": "json_invalid",
            }
        ],
    }
    _, _, wrong_type = await answer([AUTH, (b"content-type", b"text/plain")], good)
    assert json.loads(wrong_type)["detail"][0]["loc"] == ["header", "content-type"]
    _, _, bad_wait = await answer([AUTH, JSON], [b"{nope"], b"wait=abc")
    assert json.loads(bad_wait)["detail"][0]["loc"] == ["query", "wait"]  # before the body
    empty_key = (b"idempotency-key", b"")
    _, _, bad_key = await answer([AUTH, JSON, empty_key], good)
    assert json.loads(bad_key)["detail"][0]["loc"] == ["header", "Idempotency-Key"]

    # Declared too large: refused unread by the middleware, connection closed.
    declared = b'{"error": "payload_too_large", "message": "request body larger than 262144 bytes"}'
    assert await answer([AUTH, JSON, (b"content-length", b"300000")], [b"x"]) == (
        413,
        [JSON, (b"content-length", b"82"), (b"connection", b"close")],
        declared,
    )
    # Streamed past the limit: cut while reading, answered like every other error.
    streamed = [b'{"text":"', *[b"y" * 100_000] * 3, b'"}']
    assert await answer([AUTH, JSON], streamed) == error(
        413, "payload_too_large", "request body larger than 262144 bytes"
    )
    assert bus.published == []

    keyed = (b"idempotency-key", b"order-1")
    first = await answer([AUTH, JSON, keyed], good)
    assert first == accepted()
    assert await answer([AUTH, JSON, keyed], [b'{ "text": "hi" }']) == first
    assert await answer([AUTH, JSON, keyed], [b'{"text":"other"}']) == error(
        409, "conflict", "this Idempotency-Key was already used with a different request body"
    )
    bus.fail = RecordTooLarge("too large")  # refused by the broker: answered at once
    message = (
        "the broker did not acknowledge the request in time; it was refused and will never run: "
        "retry"
    )
    raw = json.dumps(
        {
            "error": "unavailable",
            "message": message,
            "detail": None,
            "request_id": "<id>",
            "retry_safe": True,
        },
        separators=(",", ":"),
    ).encode()
    length = str(len(raw) + 36 - len("<id>")).encode()
    unavailable = (503, [(b"retry-after", b"2"), (b"content-length", length), JSON], raw)
    assert await answer([AUTH, JSON], good) == unavailable
    assert len(bus.published) == 1


async def test_rate_limit_is_byte_identical(bus: RecordingBus) -> None:
    app = create_app(
        settings(rate_per_second=0.5, rate_burst=1), bus, InProcessStore(), IngressMetrics()
    )  # type: ignore[arg-type]
    assert await post(app, [AUTH, JSON], [b'{"text":"hi"}']) == accepted()
    limited = error(
        429, "rate_limited", "rate limit exceeded for this API key", (b"retry-after", b"2")
    )
    assert await post(app, [AUTH, JSON], [b'{"text":"hi"}']) == limited
    assert await post(app, [AUTH, JSON], [b"{nope"]) == limited  # the rate before the body
    other = (b"authorization", f"Bearer {KEY_B}".encode())
    assert await post(app, [other, JSON], [b'{"text":"hi"}']) == accepted()


async def test_metrics_label_the_route_as_before(bus: RecordingBus) -> None:
    metrics = IngressMetrics()
    app = create_app(settings(), bus, InProcessStore(), metrics)  # type: ignore[arg-type]
    await post(app, [AUTH, JSON], [b'{"text":"hi"}'])
    await post(app, [AUTH, JSON], [b'{"text":"hi"}'], root_path="/api")
    await post(app, [JSON], [b'{"text":"hi"}'])
    await post(app, [AUTH, JSON, (b"content-length", b"300000")], [b"x"])
    text = metrics.render().decode()
    assert 'agentstream_http_requests_total{route="/v1/requests",status="202"} 2.0' in text
    assert 'agentstream_http_requests_total{route="/v1/requests",status="401"} 1.0' in text
    # Refused before routing, as the body-size middleware always did.
    assert 'agentstream_http_requests_total{route="other",status="413"} 1.0' in text
    assert 'agentstream_http_seconds_count{route="/v1/requests"} 3.0' in text
    assert 'agentstream_events_produced_total{topic="unit.user_request"} 2.0' in text


async def test_only_the_exact_post_takes_the_fast_path(bus: RecordingBus) -> None:
    taken: list[str] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        taken.append("fast")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        taken.append("app")

    fast = FastPath(app, endpoint=endpoint)
    base = {"type": "http", "method": "POST", "path": "/v1/requests", "root_path": ""}
    for scope in (
        base,
        {**base, "method": "GET"},
        {**base, "path": "/v1/requests/"},
        {**base, "path": "/api/v1/requests", "root_path": "/api"},
        {"type": "lifespan"},
    ):
        await fast(scope, None, None)  # type: ignore[arg-type]
    assert taken == ["fast", "app", "app", "app", "app"]


def test_the_openapi_document_still_describes_the_post(app: FastAPI) -> None:
    post_doc = app.openapi()["paths"]["/v1/requests"]["post"]
    assert post_doc["operationId"] == "create_request_v1_requests_post"
    assert [p["name"] for p in post_doc["parameters"]] == [
        "wait",
        "Prefer",
        "Idempotency-Key",
        "traceparent",
    ]
    assert post_doc["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRequest"
    }
    assert post_doc["security"] == [{"HTTPBearer": []}]
