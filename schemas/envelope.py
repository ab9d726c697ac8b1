"""The event envelope: one shape for every event on every topic.

Every event carries the same correlation fields (``request_id``, ``conversation_id``,
``causation_id``, ``tenant``, ``traceparent``) and a typed ``data`` payload named by
``type``, whose version suffix (``.v1``) is part of the contract. Ids of derived events are
deterministic (:func:`derive_id`), so a reprocessed event produces the same ids and every
consumer can deduplicate by ``id``.

Unknown fields are kept (``extra="allow"``), so an older reader forwards a newer writer's
additions unchanged: within a version, evolution is additive only.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ID_NAMESPACE",
    "WIRE_REQUIRED",
    "Envelope",
    "Payload",
    "derive_id",
    "new_id",
    "utcnow",
]

#: Namespace of the UUIDv5 ids derived from other events. Never change it: ids of
#: reprocessed events would no longer match the ones already published.
ID_NAMESPACE = uuid.UUID("6f1c7c52-0b7e-4a43-9a4c-2f5d8c1e7a10")

_NAMESPACE_BYTES = ID_NAMESPACE.bytes
_MAX_ID = 200


def _uuid_text(raw: bytearray, version: int) -> str:
    # What str(uuid.UUID(bytes=raw, version=version)) gives, without building the UUID:
    # ids are made on every event, and the uuid module's arithmetic was most of their cost.
    raw[6] = (raw[6] & 0x0F) | (version << 4)
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_id() -> str:
    """A fresh random event id (a UUID 4), for events that start a chain (a user request)."""
    return _uuid_text(bytearray(os.urandom(16)), 4)


def derive_id(parent_id: str, step: str | int, index: int = 0) -> str:
    """The id of the ``index``-th event emitted at ``step`` while handling ``parent_id``.

    Same input, same step, same output index: same id. This is what makes a redelivered
    event's outputs duplicates that consumers can drop, rather than new events.
    """
    # uuid.uuid5(ID_NAMESPACE, name), spelled out (see _uuid_text).
    name = f"{parent_id}/{step}/{index}".encode()
    return _uuid_text(bytearray(hashlib.sha1(_NAMESPACE_BYTES + name).digest()[:16]), 5)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Fields a producer must put on the wire even though our constructors fill them in: an
#: event without its own ``id`` could not be deduplicated after a redelivery.
WIRE_REQUIRED = ("id", "type", "source", "time", "request_id", "conversation_id", "data")


def _wire_schema(schema: dict[str, Any]) -> None:
    required = list(schema.get("required", []))
    schema["required"] = [*required, *(f for f in WIRE_REQUIRED if f not in required)]


class Payload(BaseModel):
    """Base of every ``data`` payload. Unknown fields are kept, never an error.

    Validators and serializers are built on a model's first use (``defer_build``), not at
    import: a worker uses a few of the event types, and building all of them was a sixth
    of its start (issue 17)."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)


PayloadT = TypeVar("PayloadT", bound=Payload)
EventT = TypeVar("EventT", bound="Envelope[Any]")


class Envelope(BaseModel, Generic[PayloadT]):
    """An event: correlation fields plus the typed payload ``data``.

    Subclasses fix ``TYPE`` (the CloudEvents ``type``) and the payload class; see
    :mod:`agentstream.schemas.events`.
    """

    model_config = ConfigDict(
        extra="allow", frozen=True, json_schema_extra=_wire_schema, defer_build=True
    )

    TYPE: ClassVar[str] = ""

    id: str = Field(default_factory=new_id, min_length=1, max_length=_MAX_ID)
    type: str = Field(min_length=1, max_length=_MAX_ID)
    source: str = Field(min_length=1, max_length=_MAX_ID, examples=["ingress"])
    time: datetime = Field(default_factory=utcnow, description="RFC 3339, UTC")
    request_id: str = Field(min_length=1, max_length=_MAX_ID)
    conversation_id: str = Field(
        min_length=1, max_length=_MAX_ID, description="The partition key of every event."
    )
    causation_id: str | None = Field(default=None, max_length=_MAX_ID)
    tenant: str = Field(default="default", min_length=1, max_length=_MAX_ID)
    traceparent: str | None = Field(default=None, max_length=_MAX_ID)
    data: PayloadT

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def key(self) -> bytes:
        """The partition key: all events of one conversation land on one partition."""
        return self.conversation_id.encode()

    def derive(
        self,
        event_cls: builtins.type[EventT],
        data: Payload,
        *,
        step: str | int,
        index: int = 0,
        source: str,
    ) -> EventT:
        """A child event caused by this one, with a deterministic id and the same correlation."""
        return event_cls(
            id=derive_id(self.id, step, index),
            type=event_cls.TYPE,
            source=source,
            request_id=self.request_id,
            conversation_id=self.conversation_id,
            causation_id=self.id,
            tenant=self.tenant,
            traceparent=self.traceparent,
            data=data,
        )
