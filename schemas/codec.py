"""Events to Kafka records and back.

The value is the JSON envelope; the headers mirror it in the CloudEvents Kafka binding
(``ce_id``, ``ce_type``, ``ce_source``, ``ce_specversion``, ``ce_time``, ``content-type``)
plus the correlation extensions, so a consumer in any language can route on headers without
parsing the body. Decoding never lets a raw ``ValueError`` escape: whatever is wrong with the
bytes becomes a :class:`~agentstream.schemas.errors.SchemaError` that says what and where.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentstream.schemas.envelope import WIRE_REQUIRED, Envelope
from agentstream.schemas.errors import SchemaError
from agentstream.schemas.events import EVENT_TYPES
from pydantic import ValidationError

__all__ = [
    "CONTENT_TYPE",
    "Headers",
    "decode",
    "encode",
    "encode_headers",
    "header",
]

CONTENT_TYPE = "application/json"
SPEC_VERSION = "1.0"

Headers = Sequence[tuple[str, bytes]]


def encode_headers(event: Envelope[Any]) -> list[tuple[str, bytes]]:
    """CloudEvents Kafka-binding headers for ``event`` (binary-mode attribute names)."""
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event.id.encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", event.source.encode()),
        ("ce_time", event.time.isoformat().replace("+00:00", "Z").encode()),
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_requestid", event.request_id.encode()),
        ("ce_conversationid", event.conversation_id.encode()),
        ("ce_tenant", event.tenant.encode()),
    ]
    if event.causation_id is not None:
        headers.append(("ce_causationid", event.causation_id.encode()))
    if event.traceparent is not None:
        headers.append(("ce_traceparent", event.traceparent.encode()))
    return headers


def encode(event: Envelope[Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the Kafka record that carries ``event``."""
    value = event.model_dump_json(exclude_none=True).encode()
    return event.key, value, encode_headers(event)


def header(headers: Headers | Mapping[str, bytes] | None, name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: bytes | None = None
    for key, value in items:
        if key == name:
            found = value
    return None if found is None else found.decode("utf-8", errors="replace")


def decode(
    value: bytes | None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Envelope[Any]:
    """The event in ``value``; :class:`SchemaError` naming what is wrong and where otherwise."""

    def fail(reason: str) -> SchemaError:
        return SchemaError(reason, topic=topic, partition=partition, offset=offset)

    if value is None:
        raise fail("empty record value (tombstone)")
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"value is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise fail(f"value is a JSON {type(raw).__name__}, not an object")
    event_type = raw.get("type")
    if not isinstance(event_type, str):
        raise fail("field 'type' is missing or not a string")
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        known = ", ".join(sorted(EVENT_TYPES))
        raise fail(f"unknown event type {event_type!r} (known: {known})")
    absent = [name for name in WIRE_REQUIRED if name not in raw]
    if absent:
        raise fail(f"{event_type} lacks required field(s): {', '.join(absent)}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise fail(f"{event_type} does not match its schema: {problems}") from None
