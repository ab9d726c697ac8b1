"""The dead-letter record: the original bytes and key, plus headers that say why.

A dead letter is the failed record itself, value and key untouched, republished to ``T.dlq``
with ``x-dlq-*`` headers added beside the original headers. Keeping the bytes as they were
means a record that never decoded can still be inspected and replayed once the cause is
fixed. :class:`DeadLetter` reads those headers back for ``agentstream dlq``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["DLQ_HEADERS", "DeadLetter", "dead_letter_headers"]

#: Header names, one per field of :class:`DeadLetter` (prefix ``x-dlq-``).
DLQ_HEADERS = (
    "topic",
    "partition",
    "offset",
    "timestamp",
    "group",
    "error-class",
    "error-message",
    "stacktrace",
    "attempts",
    "handler",
    "failed-at",
)
_PREFIX = "x-dlq-"
_TRACE_MAX = 16_000


class DeadLetter(BaseModel):
    """Where a dead letter came from and why it failed."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    timestamp: int
    group: str
    error_class: str
    error_message: str
    stacktrace: str
    attempts: int
    handler: str
    failed_at: datetime

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
        fields: dict[str, str] = {}
        for key, value in headers:
            if key.startswith(_PREFIX):
                fields[key[len(_PREFIX) :].replace("-", "_")] = value.decode(errors="replace")
        return cls.model_validate(fields)


def dead_letter_headers(
    original: Sequence[tuple[str, bytes]], info: DeadLetter
) -> list[tuple[str, bytes]]:
    """The original headers (minus stale ``x-dlq-*``) followed by ``info`` as headers."""
    kept = [(k, v) for k, v in original if not k.startswith(_PREFIX)]
    values = info.model_dump()
    values["failed_at"] = info.failed_at.astimezone(UTC).isoformat()
    values["stacktrace"] = info.stacktrace[-_TRACE_MAX:]
    for name in DLQ_HEADERS:
        kept.append((_PREFIX + name, str(values[name.replace("-", "_")]).encode()))
    return kept


def now() -> datetime:
    return datetime.now(UTC)
