"""Schemathesis against the ingress's own OpenAPI document, in process (ASGI).

Generated requests, valid and invalid, must never get a 5xx, and every response must match
what the document says (status codes, content types, bodies, headers). Examples are bounded
so that the whole run stays well under a minute. Two deployments are checked: with API keys
(every ``/v1`` operation requires the bearer scheme) and in open mode, as under
``agentstream up`` (anonymous calls are served, so the document requires nothing: a
fuzzer's unauthenticated cases must not be expected to fail). The events of the SSE
stream are checked against the document too: a real stream, event by event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, get_args

import httpx
import pytest
import schemathesis
from agentstream.handlers.stores.base import InProcessStore, Put
from agentstream.ingress import create_app
from agentstream.ingress.observe import IngressMetrics
from agentstream.ingress.projection import EntryKind, LogEntry, ProjectionKeys, RequestRecord
from agentstream.settings import IngressSettings, Settings, TopicSettings
from agentstream.topics import OutgoingRecord, RecordMetadata, TopicDescription
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

KEY = "schemathesis-key"


class AckingBus:
    """Acknowledges every publish at once (no event loop state: schemathesis' ASGI client
    runs each call on a loop of its own)."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, record: OutgoingRecord) -> RecordMetadata:
        self.count += 1
        return RecordMetadata(record.topic, 0, self.count)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicDescription]:
        return {n: TopicDescription(n, 1, 1) for n in names}


def build(bus: AckingBus, store: InProcessStore, api_keys: dict[str, str]) -> FastAPI:
    return create_app(
        Settings(
            ingress=IngressSettings(
                api_keys=api_keys,
                rate_per_second=1e6,
                rate_burst=1_000_000,
                max_wait_s=0.05,
                poll_interval_s=0.01,
            ),
            topics=TopicSettings(prefix="openapi."),
        ),
        bus,  # type: ignore[arg-type]
        store,
        IngressMetrics(),
    )


bus, store = AckingBus(), InProcessStore()
app = build(bus, store, {KEY: "acme"})
open_bus = AckingBus()
open_app = build(open_bus, InProcessStore(), {})
# The key goes through schemathesis' own auth config, so that the cases it generates without
# auth (to check that they are refused) stay without it.
# A body over the size limit is refused with 413, which schemathesis' default list of
# rejections lacks.
config = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}},
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        },
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
open_config = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            }
        },
    }
)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", open_app, config=open_config)


def test_openapi_document_lists_errors_and_examples() -> None:
    document = app.openapi()
    post = document["paths"]["/v1/requests"]["post"]
    assert {"200", "202", "401", "409", "413", "422", "429", "503"} <= set(post["responses"])
    assert post["responses"]["503"]["headers"]["Retry-After"]
    body = document["components"]["schemas"]["CreateRequest"]
    assert body["examples"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    refused = post["responses"]["503"]["content"]["application/json"]["schema"]
    assert refused == {"$ref": "#/components/schemas/RefusedBody"}
    fields = document["components"]["schemas"]["RefusedBody"]["properties"]
    assert {"request_id", "retry_safe"} <= set(fields)


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def test_security_is_what_the_server_enforces() -> None:
    """With API keys every ``/v1`` operation requires the bearer scheme and the operational
    ones nothing; in open mode the server serves anonymous calls, so the document declares
    no scheme and no operation requires one."""
    secured = operations(app.openapi())
    for name, operation in secured.items():
        expected = [{"HTTPBearer": []}] if " /v1/" in name else None
        assert operation.get("security") == expected, name
    document = open_app.openapi()
    assert "securitySchemes" not in document.get("components", {})
    assert "security" not in document
    for name, operation in operations(document).items():
        assert not operation.get("security"), name


async def test_open_mode_serves_anonymous_calls() -> None:
    transport = httpx.ASGITransport(app=open_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        created = await client.post("/v1/requests", json={"text": "hi"})
        assert created.status_code == 202
        read = await client.get(f"/v1/requests/{created.json()['request_id']}")
        assert read.status_code == 200
        assert (await client.get("/v1/requests/none")).status_code == 404


def test_sse_events_are_described_as_objects() -> None:
    document = app.openapi()
    content = document["paths"]["/v1/requests/{request_id}/events"]["get"]["responses"]["200"][
        "content"
    ]["text/event-stream"]
    assert "schema" not in content  # (a schema alone would describe each event as a string)
    data = content["itemSchema"]["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/StreamEvent"}
    event = document["components"]["schemas"]["StreamEvent"]
    assert event["type"] == "object"
    assert set(event["properties"]["kind"]["enum"]) == set(get_args(EntryKind))
    assert set(content["itemSchema"]["properties"]["event"]["enum"]) == set(get_args(EntryKind))


def test_a_real_event_stream_conforms_to_the_document() -> None:
    """A stream with every kind of progress entry, then the response, event by event:
    ``data`` holds an object (a StreamEvent), as the document says."""
    request_id = "sse-conformance"
    record = RequestRecord(
        request_id=request_id,
        conversation_id="c",
        tenant="acme",
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
        status="completed",
    )
    keys = ProjectionKeys(Settings(topics=TopicSettings(prefix="openapi.")).namespace)
    entries = [
        LogEntry(event_id=f"e{i}", kind=kind, time=datetime.now(UTC), data=data)
        for i, (kind, data) in enumerate(
            [
                ("tool_call", {"call_id": "c0", "tool": "calculator", "arguments": {"x": 1}}),
                ("memory_call", {"call_id": "c1", "tool": "recall"}),
                ("tool_result", {"call_id": "c0", "ok": True, "output": 2}),
                ("response", {"status": "completed", "text": "2", "steps": 1}),
            ]
        )
    ]

    async def write() -> None:
        await store.commit(
            expect={}, ops=[Put(keys.request(request_id), record.model_dump_json().encode())]
        )
        for entry in entries:
            await store.append(keys.log(request_id), entry.model_dump_json().encode())

    asyncio.run(write())
    case = schema["/v1/requests/{request_id}/events"]["GET"].Case(
        path_parameters={"request_id": request_id}, headers={"Authorization": f"Bearer {KEY}"}
    )
    response = case.call_and_validate()
    assert response.status_code == 200
    kinds = [
        line[len("event: ") :] for line in response.text.splitlines() if line.startswith("event: ")
    ]
    assert kinds == [entry.kind for entry in entries]


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()


@pytest.mark.filterwarnings("ignore")
@open_schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_open_mode_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate()


def test_generated_requests_reached_the_broker() -> None:
    """The runs above authenticated (or needed not): valid posts were published, not all
    refused."""
    assert bus.count > 0
    assert open_bus.count > 0
