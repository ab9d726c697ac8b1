"""The AsyncAPI 3.0.0 document of every topic: generated from the catalog and the models.

``agentstream schema export DIR`` writes it as ``DIR/asyncapi.json`` beside the JSON Schemas
of the events; ``docs/contract/asyncapi.json`` is the committed copy that the compatibility
test compares new code with. It holds:

- ``channels``: one per physical topic (``T``, ``T.retry``, ``T.dlq``), addressed by the
  topic name with the deployment's prefix, with Kafka bindings (partitions, replicas,
  retention) as the catalog creates them;
- ``components.messages``: per event type its record on the main topic, on the retry topic
  (plus ``x-retry-*`` headers) and as a dead letter (plus ``x-dlq-*`` headers); the key is
  ``conversation_id``; the headers are the CloudEvents Kafka binding;
- ``components.schemas``: each event's JSON Schema (draft 2020-12, ``schemaFormat`` says
  so), inlined so the document stands alone; its ``$defs`` references point into the
  document, so both AsyncAPI tools and JSON Schema validators resolve them;
- ``operations``: who sends and who receives what: the ingress; every worker kind of
  :data:`agentstream.workers.WORKERS` (what its routes consume and publish, with its
  consumer group); an operator's ``dlq``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentstream.schemas.codec import CONTENT_TYPE, SPEC_VERSION
from agentstream.schemas.deadletter import DLQ_HEADERS
from agentstream.schemas.export import event_json_schema
from agentstream.settings import Settings
from agentstream.topics import Catalog, Kind, Topic, TopicSpec
from agentstream.workers import WORKERS, WorkerKind

__all__ = [
    "ASYNCAPI_VERSION",
    "CONTRACT_VERSION",
    "JSON_SCHEMA_FORMAT",
    "PARTITIONER",
    "build_asyncapi",
    "message_schemas",
    "write_asyncapi",
]

ASYNCAPI_VERSION = "3.0.0"
#: The version of the contract as a whole; the major follows the ``.vN`` of the event types.
CONTRACT_VERSION = "1.0.0"
JSON_SCHEMA_FORMAT = "application/schema+json;version=2020-12"
_KAFKA_BINDING = "0.5.0"
#: What upstream producers must know about partitioning (agentstream.topics.partitioner).
PARTITIONER = (
    "Producers must choose the partition with Kafka's default partitioner: "
    "toPositive(murmur2(key)) % partitions, as the Java client and aiokafka do. Every "
    "agentstream producer uses it, consumers own the same partition number of every topic "
    "(range assignment), and a conversation's turns stay in one ordered partition only if "
    "every producer hashes keys alike. librdkafka clients (confluent-kafka for Python, Go "
    "and .NET, node-rdkafka) default to consistent_random (CRC32): set "
    "partitioner=murmur2_random. A record without a key breaks the order of its "
    "conversation whatever the partitioner."
)
#: Headers the runtime adds when it moves a record to ``T.retry`` (handlers/parking.py).
_RETRY_HEADERS = (
    "x-retry-attempt",
    "x-retry-due",
    "x-retry-origin-topic",
    "x-retry-origin-partition",
    "x-retry-origin-offset",
    "x-retry-origin-timestamp",
    "x-retry-group",
)
#: Added after contract 1.0.0, so not required of records written before (ADR 17).
_RETRY_OPTIONAL = ("x-retry-group",)

_CE_HEADERS: dict[str, str] = {
    "ce_specversion": f"CloudEvents spec version, always {SPEC_VERSION}.",
    "ce_id": "The event id (unique; deterministic for derived events): the dedup key.",
    "ce_type": "The event type with its version, e.g. agentstream.user_request.v1.",
    "ce_source": "Who produced the event (ingress, agent-worker, an upstream system).",
    "ce_time": "When the event happened, RFC 3339 UTC.",
    "content-type": f"Media type of the value, {CONTENT_TYPE}.",
    "ce_requestid": "The user request this event belongs to (correlation id).",
    "ce_conversationid": "The conversation, also the record key.",
    "ce_tenant": "Who owns the event.",
    "ce_causationid": "Id of the event that caused this one.",
    "ce_traceparent": "W3C trace context, passed along unchanged.",
}
_CE_REQUIRED = [
    "ce_specversion",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "content-type",
    "ce_requestid",
    "ce_conversationid",
]


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _string_props(names: Iterable[str], describe: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        n: {"type": "string", **({"description": describe[n]} if describe else {})} for n in names
    }


def _header_schemas() -> dict[str, Any]:
    ce = _string_props(_CE_HEADERS, _CE_HEADERS)
    ce["ce_specversion"]["const"] = SPEC_VERSION
    return {
        "CloudEventHeaders": {
            "type": "object",
            "description": "CloudEvents Kafka binding (binary mode): the envelope's attributes "
            "as headers, so consumers route without parsing the value.",
            "required": _CE_REQUIRED,
            "properties": ce,
        },
        "RetryHeaders": {
            "type": "object",
            "description": "A record waiting on T.retry: the original headers plus where it "
            "came from, the attempt count, when it is due (epoch ms) and the consumer group "
            "it is for (x-retry-group: only that group acts on it).",
            "required": [n for n in _RETRY_HEADERS if n not in _RETRY_OPTIONAL],
            "properties": {**ce, **_string_props(_RETRY_HEADERS)},
        },
        "DeadLetterHeaders": {
            "type": "object",
            "description": "A dead letter: the original record's value, key and headers "
            "(CloudEvents ones absent when the producer sent none) plus x-dlq-* headers "
            "saying where it came from and why it failed.",
            "required": [f"x-dlq-{n}" for n in DLQ_HEADERS],
            "properties": {**ce, **_string_props(f"x-dlq-{n}" for n in DLQ_HEADERS)},
        },
        "ConversationKey": {
            "type": "string",
            "description": "The record key: the event's conversation_id (UTF-8). All events "
            "of one conversation share a partition and are processed in order. " + PARTITIONER,
        },
    }


def _inline(event_type: str) -> dict[str, Any]:
    """The event's JSON Schema with its ``#/$defs/X`` references pointing into the
    document (``$id`` and ``$schema`` dropped: the schema is no longer a resource root)."""
    schema = event_json_schema(event_type)
    schema.pop("$schema", None)
    schema.pop("$id", None)
    prefix = _ref("components", "schemas", event_type, "schema")["$ref"] + "/$defs/"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                out["$ref"] = prefix + ref.removeprefix("#/$defs/")
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    inlined: dict[str, Any] = rewrite(schema)
    return inlined


def _channel_id(spec: TopicSpec) -> str:
    return f"{spec.topic.value}{spec.kind.value}"


def _message_id(spec: TopicSpec) -> str:
    suffix = {Kind.MAIN: "", Kind.RETRY: ".retry", Kind.DLQ: ".dead_letter"}[spec.kind]
    return f"{spec.event_type.TYPE}{suffix}"


def _message(spec: TopicSpec) -> dict[str, Any]:
    event_type = spec.event_type.TYPE
    doc = (spec.event_type.__doc__ or "").strip()
    base = spec.event_type.model_fields["data"].annotation
    summary = doc or ((getattr(base, "__doc__", None) or "").strip().split("\n")[0])
    headers, title = {
        Kind.MAIN: ("CloudEventHeaders", event_type),
        Kind.RETRY: ("RetryHeaders", f"{event_type} awaiting a retry"),
        Kind.DLQ: ("DeadLetterHeaders", f"{event_type} dead letter"),
    }[spec.kind]
    message: dict[str, Any] = {
        "name": _message_id(spec),
        "title": title,
        "contentType": CONTENT_TYPE,
        "headers": _ref("components", "schemas", headers),
        "payload": _ref("components", "schemas", event_type),
        "correlationId": _ref("components", "correlationIds", "requestId"),
        "bindings": {
            "kafka": {
                # Inline: the binding's "Reference or Schema" oneOf matches a $ref twice.
                "key": _header_schemas()["ConversationKey"],
                "bindingVersion": _KAFKA_BINDING,
            }
        },
    }
    if summary:
        message["summary"] = summary
    if spec.kind is Kind.DLQ:
        message["description"] = (
            "The failed record as it was (its value may not even be valid JSON), "
            "republished with x-dlq-* headers. Replayed with `agentstream dlq replay`."
        )
    return message


def _channel(spec: TopicSpec) -> dict[str, Any]:
    configs = spec.description().configs
    topic_config: dict[str, Any] = {
        "retention.ms": spec.retention_ms,
        "cleanup.policy": configs["cleanup.policy"].split(","),
    }
    if "min.insync.replicas" in configs:
        topic_config["min.insync.replicas"] = int(configs["min.insync.replicas"])
    purpose = {
        Kind.MAIN: f"{spec.event_type.TYPE} events, keyed by conversation_id.",
        Kind.RETRY: "Records whose handling failed with a retriable error, redelivered "
        "after a growing delay so the main partition keeps flowing.",
        Kind.DLQ: "Dead letters: records that failed for good or exhausted their retries.",
    }[spec.kind]
    return {
        "address": spec.name,
        "title": spec.name,
        "description": purpose,
        "messages": {
            _message_id(spec): _ref("components", "messages", _message_id(spec)),
        },
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": topic_config,
                "bindingVersion": _KAFKA_BINDING,
            }
        },
    }


#: The one producer that is not a worker: the HTTP ingress's ``POST /v1/requests`` (upstream
#: systems may publish requests straight to the topic, too).
_INGRESS = ("ingress", "the HTTP ingress (and upstream producers)", (Topic.USER_REQUEST,))


def _operations(
    catalog: Catalog, kinds: Sequence[WorkerKind], settings: Settings | None
) -> dict[str, Any]:
    """Who sends and receives what: each kind's routes and periodic jobs say it. A consumer
    also sends to ``T.retry`` and ``T.dlq`` of what it consumes and receives ``T.retry``
    (the runtime does it for its routes)."""
    ops: dict[str, Any] = {}

    def add(role: str, who: str, action: str, spec: TopicSpec, group: str | None) -> None:
        channel = _channel_id(spec)
        op: dict[str, Any] = {
            "action": action,
            "channel": _ref("channels", channel),
            "title": f"{who} {action}s {channel}",
            "messages": [_ref("channels", channel, "messages", _message_id(spec))],
        }
        if group is not None and action == "receive":
            op["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [group]},
                    "bindingVersion": _KAFKA_BINDING,
                }
            }
        ops[f"{role}.{action}.{channel}"] = op

    role, who, sends = _INGRESS
    for topic in sends:
        add(role, who, "send", catalog.spec(topic), None)
    for kind in kinds:
        for agent in catalog.agents if kind.per_agent else (None,):
            parts = kind.declared(settings, agent=agent)
            group = kind.group_id(catalog.prefix, agent)
            for out in parts.publishes():
                add(kind.name, kind.title, "send", catalog.spec(out), group)
            for consumed in parts.consumes():
                add(kind.name, kind.title, "receive", catalog.spec(consumed), group)
                add(kind.name, kind.title, "receive", catalog.spec(consumed, Kind.RETRY), group)
                add(kind.name, kind.title, "send", catalog.spec(consumed, Kind.RETRY), group)
                add(kind.name, kind.title, "send", catalog.spec(consumed, Kind.DLQ), group)
    for dlq_topic in catalog.topics():
        add(
            "operator",
            "an operator (agentstream dlq)",
            "receive",
            catalog.spec(dlq_topic, Kind.DLQ),
            None,
        )
    return ops


def build_asyncapi(
    catalog: Catalog, kinds: Iterable[WorkerKind] = WORKERS, settings: Settings | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``catalog``'s topics and the worker ``kinds`` (every
    registered kind by default), as JSON-ready data."""
    specs = list(catalog.specs())
    schemas: dict[str, Any] = {
        spec.event_type.TYPE: {
            "schemaFormat": JSON_SCHEMA_FORMAT,
            "schema": _inline(spec.event_type.TYPE),
        }
        for spec in specs
        if spec.kind is Kind.MAIN
    }
    schemas.update(_header_schemas())
    prefix_note = f" with topic prefix {catalog.prefix!r}" if catalog.prefix else ""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "agentstream",
            "version": CONTRACT_VERSION,
            "description": "Kafka event-driven pipeline for LLM agents: the topics"
            f"{prefix_note}, their events and who sends and receives them. Every event is a "
            "JSON envelope (id, type, source, time, request_id, conversation_id, "
            "causation_id, tenant, traceparent, data) keyed by conversation_id, with "
            "CloudEvents headers. Within a .vN type changes are additive only. Producers "
            "pick the partition with Kafka's murmur2 partitioner (see ConversationKey).",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "protocolVersion": "4.x",
                "description": "An Apache Kafka cluster (PLAINTEXT), as in tests and local runs.",
                "variables": {"bootstrap": _bootstrap_variable()},
            },
            "kafka-secure": {
                "host": "{bootstrap}",
                "protocol": "kafka-secure",
                "protocolVersion": "4.x",
                "description": "Kafka over TLS with SASL (AGENTSTREAM_KAFKA__SECURITY_PROTOCOL"
                "=SASL_SSL and AGENTSTREAM_KAFKA__SASL_*).",
                "variables": {"bootstrap": _bootstrap_variable()},
                "security": [
                    _ref("components", "securitySchemes", name)
                    for name in ("scramSha512", "scramSha256", "plain")
                ],
            },
        },
        "channels": {_channel_id(s): _channel(s) for s in specs},
        "operations": _operations(catalog, list(kinds), settings),
        "components": {
            "schemas": schemas,
            "messages": {_message_id(s): _message(s) for s in specs},
            "correlationIds": {
                "requestId": {
                    "location": "$message.header#/ce_requestid",
                    "description": "Every event of one user request carries its request_id.",
                }
            },
            "securitySchemes": {
                "scramSha512": {"type": "scramSha512", "description": "SASL SCRAM-SHA-512"},
                "scramSha256": {"type": "scramSha256", "description": "SASL SCRAM-SHA-256"},
                "plain": {"type": "plain", "description": "SASL PLAIN (over TLS only)"},
            },
        },
    }


def _bootstrap_variable() -> dict[str, str]:
    return {
        "default": "localhost:9092",
        "description": "Bootstrap servers, host:port (KAFKA_BOOTSTRAP_SERVERS).",
    }


def write_asyncapi(directory: Path, catalog: Catalog, settings: Settings | None = None) -> Path:
    """Write ``directory/asyncapi.json``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "asyncapi.json"
    path.write_text(
        json.dumps(build_asyncapi(catalog, settings=settings), indent=2, ensure_ascii=False) + "\n"
    )
    return path


def message_schemas(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each message's payload and headers as standalone JSON Schemas, for
    :func:`agentstream.schemas.compat.breaking_changes`: ``{message id: payload, message id +
    "#headers": headers}``. References into ``components.schemas`` are resolved."""
    components = document.get("components", {})

    def follow(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            parts = node["$ref"].removeprefix("#/").split("/")
            target: Any = document
            for part in parts:
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    out: dict[str, dict[str, Any]] = {}
    for name, message in components.get("messages", {}).items():
        payload = follow(message["payload"])
        out[name] = payload.get("schema", payload) if "schemaFormat" in payload else payload
        out[f"{name}#headers"] = follow(message["headers"])
    return out
