"""The event contract: encoding, decoding, deterministic ids, exported JSON Schemas."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from agentstream.cli import main
from agentstream.schemas import (
    EVENT_TYPES,
    AgentResponse,
    AgentResponseData,
    SchemaError,
    ToolCall,
    ToolCallData,
    UserRequest,
    UserRequestData,
    decode,
    derive_id,
    encode,
    header,
    new_id,
)
from agentstream.schemas.envelope import ID_NAMESPACE


def _request(**data: Any) -> UserRequest:
    return UserRequest(
        source="test",
        request_id="r-1",
        conversation_id="c-1",
        tenant="acme",
        data=UserRequestData(text="What is 2 + 2?", **data),
    )


def test_round_trip_and_cloudevents_headers() -> None:
    event = _request(metadata={"channel": "web"})
    key, value, headers = encode(event)
    assert key == b"c-1"
    assert decode(value) == event
    assert header(headers, "ce_id") == event.id
    assert header(headers, "ce_type") == "agentstream.user_request.v1"
    assert header(headers, "ce_specversion") == "1.0"
    assert header(headers, "ce_source") == "test"
    assert header(headers, "content-type") == "application/json"
    assert header(headers, "ce_requestid") == "r-1"


def test_derived_ids_are_deterministic() -> None:
    event = _request()
    a = event.derive(
        ToolCall, ToolCallData(call_id="x", step=1, tool="calculator"), step=1, source="agent"
    )
    b = event.derive(
        ToolCall, ToolCallData(call_id="x", step=1, tool="calculator"), step=1, source="agent"
    )
    c = event.derive(
        ToolCall,
        ToolCallData(call_id="y", step=1, tool="calculator"),
        step=1,
        index=1,
        source="agent",
    )
    assert a.id == b.id == derive_id(event.id, 1, 0)
    assert c.id != a.id
    assert a.causation_id == event.id
    assert (a.request_id, a.conversation_id, a.tenant) == ("r-1", "c-1", "acme")


def test_ids_are_the_uuid_modules_own() -> None:
    """new_id and derive_id format UUIDs by hand (for speed): exactly uuid4's and uuid5's."""
    for index in range(2000):
        fresh = new_id()
        assert str(uuid.UUID(fresh)) == fresh
        assert uuid.UUID(fresh).version == 4
        assert uuid.UUID(fresh).variant == uuid.RFC_4122
        for step in ("user_request", index, "é✓"):
            expected = uuid.uuid5(ID_NAMESPACE, f"{fresh}/{step}/{index % 3}")
            assert derive_id(fresh, step, index % 3) == str(expected)


def test_unknown_fields_are_kept_not_rejected() -> None:
    _, value, _ = encode(_request())
    raw = json.loads(value)
    raw["future_field"] = {"x": 1}
    raw["data"]["future_data"] = 2
    event = decode(json.dumps(raw).encode())
    assert json.loads(event.model_dump_json())["future_field"] == {"x": 1}
    assert json.loads(event.model_dump_json())["data"]["future_data"] == 2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"type": 5}', "'type'"),
        (b'{"type": "agentstream.nope.v1"}', "unknown event type"),
        (b'{"type": "agentstream.user_request.v1", "data": {}}', "lacks required"),
        (None, "tombstone"),
    ],
)
def test_bad_bytes_raise_schema_error_naming_where_and_what(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(SchemaError) as info:
        decode(value, topic="user_request", partition=3, offset=42)
    assert "user_request[3]@42" in str(info.value)
    assert reason in str(info.value)
    assert not info.value.retriable


def test_terminal_statuses_are_validated() -> None:
    with pytest.raises(ValueError, match="status"):
        AgentResponseData.model_validate({"status": "maybe"})
    AgentResponse(
        source="a", request_id="r", conversation_id="c", data=AgentResponseData(status="timed_out")
    )


def _example(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """A value valid for ``schema``, built from the JSON Schema alone (as a foreign client)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _example(root["$defs"][name], root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema and "type" not in schema and "anyOf" not in schema:
        return schema["default"]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _example(options[0], root)
    kind = schema.get("type")
    if kind == "object":
        return {
            name: _example(schema["properties"][name], root) for name in schema.get("required", [])
        }
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2026-11-24T10:00:00Z"
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return max(0, schema.get("minimum", 0))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    raise AssertionError(f"unhandled schema {schema}")


def test_schema_export_writes_one_schema_per_type_and_foreign_events_decode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "export", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.glob("agentstream.*.json"))
    assert files == sorted(f"{t}.json" for t in EVENT_TYPES)
    schema = json.loads((tmp_path / "agentstream.user_request.v1.json").read_text())
    # A client that knows only the JSON Schema builds a request...
    built = _example(schema, schema)
    built["data"]["text"] = "hello from another language"
    jsonschema.Draft202012Validator(schema).validate(built)
    # ...and our decoder accepts it.
    event = decode(json.dumps(built).encode())
    assert isinstance(event, UserRequest)
    assert event.data.text == "hello from another language"
    assert "wrote" in capsys.readouterr().out
