"""The AsyncAPI document: valid AsyncAPI 3.0.0, true to the code, compatible with the committed one.

``asyncapi-3.0.0.schema.json`` is the official AsyncAPI 3.0.0 JSON Schema, vendored unchanged
from the npm package ``@asyncapi/specs`` 6.11.1 (``schemas/3.0.0.json``), Apache-2.0, see
``asyncapi-3.0.0.schema.NOTICE``. It is a draft-07 schema whose definitions carry their own
``$id``, so it validates offline.

The committed ``docs/contract/asyncapi.json`` is the previous contract: a change may add
channels, messages and optional fields, never remove or retype them. When an additive change
is intended, regenerate it with ``agentstream schema export docs/contract``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentstream.asyncapi import JSON_SCHEMA_FORMAT, build_asyncapi, message_schemas
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    MemoryCall,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    UserRequest,
    UserRequestData,
)
from agentstream.schemas.codec import encode, encode_headers
from agentstream.schemas.compat import breaking_changes
from agentstream.schemas.deadletter import DeadLetter, dead_letter_headers, now
from agentstream.schemas.envelope import Envelope
from agentstream.settings import Settings
from agentstream.topics import Catalog, Kind
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

HERE = Path(__file__).resolve().parent
ASYNCAPI_SCHEMA = HERE / "asyncapi-3.0.0.schema.json"
COMMITTED = HERE.parents[1] / "docs" / "contract" / "asyncapi.json"
DOC_URI = "urn:agentstream:asyncapi"


@pytest.fixture(scope="module")
def asyncapi_validator() -> Draft7Validator:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return Draft7Validator(schema)


def _problems(validator: Draft7Validator, document: dict[str, Any]) -> str | None:
    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    return f"{list(error.absolute_path)}: {error.message[:500]}"


def _events() -> list[Envelope[Any]]:
    common: dict[str, Any] = {
        "source": "test",
        "request_id": "req-1",
        "conversation_id": "conv-1",
        "causation_id": "cause-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    call = ToolCallData(call_id="c1", step=1, tool="calculator", arguments={"expr": "1+1"})
    return [
        UserRequest(data=UserRequestData(text="What is 12 * 7?", user="ann"), **common),
        ToolCall(data=call, **common),
        MemoryCall(data=call.model_copy(update={"tool": "remember"}), **common),
        ToolResult(
            data=ToolResultData(call_id="c1", step=1, tool="calculator", ok=True, output=2),
            **common,
        ),
        AgentResponse(data=AgentResponseData(status="completed", text="84", steps=2), **common),
    ]


def _payload_validator(document: dict[str, Any], event_type: str) -> Draft202012Validator:
    """A 2020-12 validator for the payload of ``event_type``, resolving inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{event_type}/schema"}
    return Draft202012Validator(schema, registry=registry)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _pointer(document: dict[str, Any], ref: str) -> Any:
    target: Any = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def contract_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What ``new`` breaks of the contract ``old``: channels, addresses, messages, schemas."""
    problems = []
    for channel_id, channel in old["channels"].items():
        if channel_id not in new["channels"]:
            problems.append(f"channel {channel_id}: removed")
            continue
        if channel["address"] != new["channels"][channel_id]["address"]:
            problems.append(f"channel {channel_id}: address changed")
        for message_id in channel["messages"]:
            if message_id not in new["channels"][channel_id]["messages"]:
                problems.append(f"channel {channel_id}: message {message_id} removed")
    problems += breaking_changes(message_schemas(old), message_schemas(new))
    return problems


# -- the document is AsyncAPI 3.0.0 ------------------------------------------------------------


def test_generated_document_is_valid_asyncapi_3(asyncapi_validator: Draft7Validator) -> None:
    document = build_asyncapi(Catalog())
    assert document["asyncapi"] == "3.0.0"
    assert _problems(asyncapi_validator, document) is None


def test_a_deployment_with_prefix_and_replication_is_valid(
    asyncapi_validator: Draft7Validator,
) -> None:
    catalog = Catalog(prefix="prod.", partitions=24, replication_factor=3)
    document = build_asyncapi(catalog)
    assert _problems(asyncapi_validator, document) is None
    dlq = document["channels"]["tool_call.dlq"]
    assert dlq["address"] == "prod.tool_call.dlq"
    kafka = dlq["bindings"]["kafka"]
    assert (kafka["partitions"], kafka["replicas"]) == (24, 3)
    assert kafka["topicConfiguration"]["retention.ms"] == catalog.dlq_retention_ms
    assert kafka["topicConfiguration"]["min.insync.replicas"] == 2
    group = document["operations"]["agent.receive.agent.assistant"]["bindings"]["kafka"]["groupId"]
    assert group["enum"] == ["prod.agentstream-agent.assistant"]
    router = document["operations"]["router.receive.user_request"]["bindings"]["kafka"]["groupId"]
    assert router["enum"] == ["prod.agentstream-router"]
    projection = document["operations"]["projection.receive.agent_response"]
    assert projection["bindings"]["kafka"]["groupId"]["enum"] == ["prod.ingress-projection"]


def test_the_vendored_schema_really_checks(asyncapi_validator: Draft7Validator) -> None:
    document = build_asyncapi(Catalog())
    broken = copy.deepcopy(document)
    broken["operations"]["agent.send.tool_call"]["action"] = "publish"  # AsyncAPI 2 wording
    assert _problems(asyncapi_validator, broken) is not None
    broken = copy.deepcopy(document)
    broken["channels"]["user_request"]["bindings"]["kafka"]["partitions"] = 0
    assert _problems(asyncapi_validator, broken) is not None
    broken = copy.deepcopy(document)
    del broken["info"]["version"]
    assert _problems(asyncapi_validator, broken) is not None


def test_committed_document_is_valid_asyncapi_3(asyncapi_validator: Draft7Validator) -> None:
    assert _problems(asyncapi_validator, json.loads(COMMITTED.read_text())) is None


# -- the document says what the code does --------------------------------------------------------


def test_every_topic_of_the_catalog_is_a_channel() -> None:
    catalog = Catalog(prefix="t.")
    document = build_asyncapi(catalog)
    channels = document["channels"]
    assert {c["address"] for c in channels.values()} == {s.name for s in catalog.specs()}
    for spec in catalog.specs():
        channel = channels[f"{spec.topic.value}{spec.kind.value}"]
        kafka = channel["bindings"]["kafka"]
        assert kafka["topic"] == spec.name
        assert kafka["partitions"] == spec.partitions
        assert kafka["replicas"] == spec.replication_factor
        assert kafka["topicConfiguration"]["retention.ms"] == spec.retention_ms
        (message_ref,) = channel["messages"].values()
        message = _pointer(document, message_ref["$ref"])
        assert message["payload"] == {"$ref": f"#/components/schemas/{spec.event_type.TYPE}"}
        headers = message["headers"]["$ref"].rsplit("/", 1)[-1]
        assert (
            headers
            == {
                Kind.MAIN: "CloudEventHeaders",
                Kind.RETRY: "RetryHeaders",
                Kind.DLQ: "DeadLetterHeaders",
            }[spec.kind]
        )
        assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_every_reference_resolves_and_operations_use_their_channel() -> None:
    document = build_asyncapi(Catalog())
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        _pointer(document, ref)  # raises KeyError when dangling
    for op_id, op in document["operations"].items():
        channel = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), op_id


def test_who_sends_and_receives_what() -> None:
    ops = build_asyncapi(Catalog())["operations"]
    assert ops["ingress.send.user_request"]["action"] == "send"
    for channel in ("user_request", "agent_response", "user_request.retry"):
        assert ops[f"router.receive.{channel}"]["action"] == "receive"
    assert ops["router.send.agent.assistant"]["action"] == "send"
    for channel in ("agent.assistant", "agent.assistant.retry"):
        assert ops[f"agent.receive.{channel}"]["action"] == "receive"
    for channel in ("tool_call", "memory_call", "agent_response", "agent.assistant.dlq"):
        assert ops[f"agent.send.{channel}"]["action"] == "send"
    assert ops["tool.receive.tool_call"]["action"] == "receive"
    assert ops["tool.send.tool_result"]["action"] == "send"
    assert ops["tool.send.agent.assistant"]["action"] == "send"
    assert ops["memory.receive.memory_call"]["action"] == "receive"
    assert ops["memory.send.agent.assistant"]["action"] == "send"
    assert ops["operator.receive.tool_call.dlq"]["action"] == "receive"
    group = ops["tool.receive.tool_call"]["bindings"]["kafka"]["groupId"]
    assert group["enum"] == ["agentstream-tool"]


def test_payload_schemas_are_2020_12_and_accept_real_events() -> None:
    document = build_asyncapi(Catalog())
    for event in _events():
        wrapper = document["components"]["schemas"][event.type]
        assert wrapper["schemaFormat"] == JSON_SCHEMA_FORMAT
        Draft202012Validator.check_schema(wrapper["schema"])
        validator = _payload_validator(document, event.type)
        _, value, _ = encode(event)
        wire = json.loads(value)
        assert list(validator.iter_errors(wire)) == []
        for required in ("id", "request_id", "conversation_id", "data"):
            broken = {k: v for k, v in wire.items() if k != required}
            assert list(validator.iter_errors(broken)), f"{event.type} without {required}"
        # Additive evolution: an unknown field is fine.
        assert list(validator.iter_errors({**wire, "priority": 3})) == []


def test_header_schemas_describe_what_the_runtime_writes() -> None:
    document = build_asyncapi(Catalog())
    schemas = document["components"]["schemas"]
    event = _events()[1]
    written = {k: v.decode() for k, v in encode_headers(event)}
    ce = Draft7Validator(schemas["CloudEventHeaders"])
    assert list(ce.iter_errors(written)) == []
    assert set(written) <= set(schemas["CloudEventHeaders"]["properties"])

    info = DeadLetter(
        topic="tool_call",
        partition=3,
        offset=17,
        timestamp=1,
        group="agentstream-tool",
        error_class="SchemaError",
        error_message="bad",
        stacktrace="Traceback",
        attempts=1,
        handler="tool.tool_call",
        failed_at=now(),
    )
    dead = {k: v.decode() for k, v in dead_letter_headers(encode_headers(event), info)}
    assert list(Draft7Validator(schemas["DeadLetterHeaders"]).iter_errors(dead)) == []
    assert list(Draft7Validator(schemas["DeadLetterHeaders"]).iter_errors({})) != []

    from agentstream.handlers.runtime.worker import (
        _RETRY_HEADERS,
    )  # the runtime's own list: no drift allowed

    retry = schemas["RetryHeaders"]
    assert set(_RETRY_HEADERS) <= set(retry["properties"])
    # Records written before x-retry-group (ADR 17) stay valid.
    assert set(_RETRY_HEADERS) - set(retry["required"]) == {"x-retry-group"}


# -- compatible with the committed contract ------------------------------------------------------


def test_generated_document_keeps_the_committed_contract() -> None:
    committed = json.loads(COMMITTED.read_text())
    current = build_asyncapi(Settings().catalog())
    assert contract_problems(committed, current) == []


def test_the_compatibility_check_catches_breaking_changes() -> None:
    old = build_asyncapi(Catalog())
    new = copy.deepcopy(old)
    del new["channels"]["memory_call.dlq"]
    new["channels"]["tool_call"]["address"] = "tool_calls"
    data = new["components"]["schemas"]["agentstream.user_request.v1"]["schema"]["$defs"]
    data["UserRequestData"]["properties"].pop("text")
    response = new["components"]["schemas"]["agentstream.agent_response.v1"]["schema"]
    response["required"].append("traceparent")
    new["components"]["schemas"]["CloudEventHeaders"]["required"].append("ce_traceparent")
    problems = contract_problems(old, new)
    assert "channel memory_call.dlq: removed" in problems
    assert "channel tool_call: address changed" in problems
    assert any("user_request.v1" in p and "text: property removed" in p for p in problems)
    assert any("agent_response.v1" in p and "traceparent: newly required" in p for p in problems)
    assert any("#headers" in p and "ce_traceparent: newly required" in p for p in problems)


def test_an_additive_change_is_compatible() -> None:
    old = build_asyncapi(Catalog())
    new = copy.deepcopy(old)
    data = new["components"]["schemas"]["agentstream.user_request.v1"]["schema"]["$defs"]
    data["UserRequestData"]["properties"]["priority"] = {"type": "integer"}
    new["channels"]["audit"] = {"address": "audit", "messages": {}}
    assert contract_problems(old, new) == []


# -- the CLI writes it ----------------------------------------------------------------------------


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """``cli.main`` configures logging for a process; give the test run its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_schema_export_writes_the_asyncapi_document(tmp_path: Path) -> None:
    from agentstream.cli import main

    out = io.StringIO()
    with _kept_logging(), contextlib.redirect_stdout(out):
        assert main(["schema", "export", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'asyncapi.json'}" in out.getvalue()
    written = json.loads((tmp_path / "asyncapi.json").read_text())
    assert written == build_asyncapi(Settings().catalog())


def test_upstream_producers_are_told_which_partitioner_to_use() -> None:
    """librdkafka's default partitioner (CRC32) puts most conversations elsewhere than
    murmur2 (tests/contract/test_upstream_partitioners.py): the contract says what to set."""
    document = build_asyncapi(Settings().catalog())
    key = document["components"]["schemas"]["ConversationKey"]["description"]
    assert "murmur2" in key
    assert "partitioner=murmur2_random" in key
    assert "consistent_random" in key
    message = document["components"]["messages"]["agentstream.user_request.v1"]
    assert message["bindings"]["kafka"]["key"]["description"] == key
    assert "murmur2" in document["info"]["description"]
    committed = json.loads(COMMITTED.read_text())
    assert committed["components"]["schemas"]["ConversationKey"]["description"] == key
