"""The fields bound to the log records the runtime writes about one event.

Every log line about an event carries where it was read (``topic``, ``partition``,
``offset``) and, once it decoded, its ``request_id``, so one request can be followed through
handlers, retries and dead letters. Never other ids: those stay out of metric labels too.
"""

from __future__ import annotations

from typing import Any

from agentstream.schemas import Envelope
from agentstream.topics import Record

__all__ = ["log_fields"]


def log_fields(record: Record, event: Envelope[Any] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if event is not None:
        fields["request_id"] = event.request_id
    return fields
