"""Dead letters for people and for programs: the ``list`` table and the ``show`` details.

:func:`format_table` prints one line per dead letter, :func:`format_details` everything about
one (headers, the decoded event or the raw bytes, the stack trace), and :func:`details` is the
same as a JSON object for ``show --json``. Nothing here reads Kafka; the entries come from
:func:`agentstream.dlq.select`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agentstream.dlq import DeadLetterEntry, as_text, utc_iso
from agentstream.schemas import SchemaError, decode
from agentstream.topics import Record

__all__ = ["details", "format_details", "format_table"]

_MESSAGE_MAX = 80
_VALUE_MAX = 1000


def format_table(entries: Sequence[DeadLetterEntry]) -> str:
    """One line per dead letter under a header row, then the count."""
    if not entries:
        return "0 dead letters"
    rows = [
        ("DEAD LETTER", "ORIGIN", "FAILED AT", "GROUP", "ERROR", "ATTEMPTS", "HANDLER", "REQUEST")
    ]
    for e in entries:
        i = e.info
        rows.append(
            (
                e.coordinates,
                e.origin,
                utc_iso(e.failed_at),
                i.group if i else "?",
                i.error_class if i else "?",
                str(i.attempts) if i else "?",
                i.handler if i else "?",
                e.request_id or "-",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    messages = ["MESSAGE"] + [
        _short(e.info.error_message if e.info else e.problem or "") for e in entries
    ]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + message
        for row, message in zip(rows, messages, strict=True)
    ]
    lines.append(f"{len(entries)} dead letter{'' if len(entries) == 1 else 's'}")
    return "\n".join(lines)


def details(entry: DeadLetterEntry) -> dict[str, Any]:
    """The ``show --json`` object: the summary, every header, and the event or the bytes."""
    event, error = _decoded(entry.record)
    value = entry.record.value
    return {
        **entry.summary(),
        "headers": {k: v.decode("utf-8", errors="replace") for k, v in entry.record.headers},
        "event": event,
        "decode_error": error,
        "value_size": None if value is None else len(value),
        "value": None if event is not None or value is None else value.decode("latin-1"),
    }


def format_details(entry: DeadLetterEntry) -> str:
    """Everything about one dead letter, for people."""
    i, r = entry.info, entry.record
    lines = [f"== {entry.coordinates} =="]
    facts = [
        ("origin", f"{entry.origin}" + (f" (timestamp {i.timestamp})" if i else "")),
        ("failed at", utc_iso(entry.failed_at)),
        ("error", f"{i.error_class}: {i.error_message}" if i else entry.problem or "?"),
        ("attempts", str(i.attempts) if i else "?"),
        ("handler", f"{i.handler} (group {i.group})" if i else "?"),
        ("request", entry.request_id or "-"),
        ("event id", entry.event_id or "-"),
        ("key", "<none>" if r.key is None else repr(as_text(r.key))),
    ]
    lines += [f"{name + ':':<11}{value}" for name, value in facts]
    lines.append("headers:")
    for k, v in r.headers:
        shown = "(the stack trace, below)" if k == "x-dlq-stacktrace" else as_text(v)
        lines.append(f"  {k}: {shown}")
    event, error = _decoded(r)
    if event is not None:
        lines += ["event:", _indent(json.dumps(event, indent=2, ensure_ascii=False))]
    elif r.value is None:
        lines.append(f"value: <none> ({error})")
    else:
        cut = f"… ({len(r.value)} bytes in all)" if len(r.value) > _VALUE_MAX else ""
        lines.append(f"value ({len(r.value)} bytes, not an event: {error}):")
        lines.append(_indent(repr(r.value[:_VALUE_MAX]) + cut))
    if i is not None:
        lines += ["stack trace:", _indent(i.stacktrace.rstrip())]
    return "\n".join(lines)


def _decoded(record: Record) -> tuple[dict[str, Any] | None, str | None]:
    try:
        event = decode(record.value)
    except SchemaError as exc:
        return None, exc.reason
    return event.model_dump(mode="json", exclude_none=True), None


def _short(text: str, limit: int = _MESSAGE_MAX) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
