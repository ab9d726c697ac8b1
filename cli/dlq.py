"""Dead letters as entries, and which of them a command means.

A dead letter (:mod:`agentstream.schemas.deadletter`) is the failed record, bytes and key
untouched, in ``T.dlq`` with ``x-dlq-*`` headers saying where it came from and why. This module
reads such records into :class:`DeadLetterEntry` (tolerating missing or broken headers, so a record
someone wrote there by hand still shows), parses the selection options of ``agentstream dlq``
(topics, offset ranges, times) and picks the matching entries (:func:`select`). It is the shared
core of :mod:`agentstream.dlq_replay`, :mod:`agentstream.dlq_format` and the command
(:mod:`agentstream.dlq_command`). Reading is outside any consumer group.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentstream.schemas import DeadLetter, header
from agentstream.schemas.errors import TopicMissing
from agentstream.topics import Bus, Catalog, Kind, Record, Topic, TopicPartition
from pydantic import ValidationError

__all__ = [
    "DeadLetterEntry",
    "OffsetRange",
    "Selection",
    "UsageError",
    "as_text",
    "entry_of",
    "parse_offset_range",
    "parse_time",
    "resolve_topics",
    "select",
    "utc_iso",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(ValueError):
    """A selection that cannot mean anything (exit status 2)."""


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Offsets ``first`` to ``last`` of a dead-letter topic, both included (None: no end)."""

    first: int = 0
    last: int | None = None

    def __contains__(self, offset: object) -> bool:
        return (
            isinstance(offset, int)
            and self.first <= offset
            and (self.last is None or offset <= self.last)
        )


def parse_offset_range(text: str) -> OffsetRange:
    """``A:B`` (both included), ``A:``, ``:B`` or a single offset ``N``."""
    first_text, colon, last_text = (part.strip() for part in text.partition(":"))
    try:
        if not (first_text or last_text):
            raise ValueError(text)
        first = int(first_text) if first_text else 0
        last = int(last_text) if last_text else (None if colon else first)
        if first < 0 or (last is not None and last < first):
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an offset range: {text!r} (use A:B with A <= B, A:, :B or N)"
        ) from None
    return OffsetRange(first, last)


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no offset is given) or an age: ``30m``, ``2h``, ``7d``."""
    age = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if age is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=int(age[1]) * _UNITS[age[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use 2025-05-01T12:00:00Z, 2025-05-01, or an age: 30m, 2h, 7d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def resolve_topics(catalog: Catalog, name: str) -> tuple[Topic, ...]:
    """The logical topics ``name`` means: ``all``, ``tool_call``, ``tool_call.dlq``, or a full
    (prefixed) name of the main or dead-letter topic."""
    if name == "all":
        return tuple(Topic)
    for topic in Topic:
        forms = (topic.value, topic.value + Kind.DLQ.value)
        if name in (*forms, catalog.name(topic), catalog.name(topic, Kind.DLQ)):
            return (topic,)
    known = ", ".join(t.value for t in Topic)
    raise UsageError(f"unknown topic {name!r}: use all or one of {known}")


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One record of a dead-letter topic; ``info`` is None when its ``x-dlq-*`` headers are
    missing or broken (``problem`` says how), e.g. a record someone wrote there by hand."""

    topic: Topic
    record: Record
    info: DeadLetter | None
    request_id: str | None = None
    event_id: str | None = None
    problem: str | None = None

    @property
    def coordinates(self) -> str:
        """``<dlq topic>/<partition>/<offset>``, the value of ``x-replayed-from``."""
        return f"{self.record.topic}/{self.record.partition}/{self.record.offset}"

    @property
    def failed_at(self) -> datetime:
        if self.info is not None:
            return self.info.failed_at.astimezone(UTC)
        return datetime.fromtimestamp(self.record.timestamp_ms / 1000, UTC)

    @property
    def origin(self) -> str:
        i = self.info
        return "?" if i is None else f"{i.topic}[{i.partition}]@{i.offset}"

    def summary(self) -> dict[str, Any]:
        """The ``list --json`` object: the :class:`DeadLetter` fields, where the dead letter
        sits, its key and request id."""
        r = self.record
        fields = {} if self.info is None else self.info.model_dump(mode="json")
        return {
            "dlq_topic": r.topic,
            "dlq_partition": r.partition,
            "dlq_offset": r.offset,
            "key": as_text(r.key),
            "request_id": self.request_id,
            "event_id": self.event_id,
            **fields,
            "failed_at": utc_iso(self.failed_at),
            "problem": self.problem,
        }


def entry_of(topic: Topic, record: Record) -> DeadLetterEntry:
    """Read a record of ``topic``'s DLQ; ids from the CloudEvents headers, else the body."""
    body = _loose_json(record.value)
    ids = {
        name: header(record.headers, name) or (value if isinstance(value, str) else None)
        for name, value in (("ce_requestid", body.get("request_id")), ("ce_id", body.get("id")))
    }
    try:
        info, problem = DeadLetter.from_headers(record.headers), None
    except ValidationError as exc:
        bad = ", ".join(f"x-dlq-{str(e['loc'][0]).replace('_', '-')}" for e in exc.errors()[:4])
        info, problem = None, f"missing or invalid dead-letter headers: {bad}"
    return DeadLetterEntry(topic, record, info, ids["ce_requestid"], ids["ce_id"], problem)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; None means any."""

    topics: tuple[Topic, ...] = tuple(Topic)
    request_id: str | None = None
    offsets: OffsetRange | None = None
    partition: int | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: The consumer group that dead-lettered it (``x-dlq-group``), exactly.
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.offsets is not None or self.partition is not None) and len(self.topics) != 1:
            raise UsageError("--offset-range and --partition need a single --topic")
        if self.since and self.until and self.until <= self.since:
            raise UsageError("--until must be later than --since")

    def matches(self, entry: DeadLetterEntry) -> bool:
        r = entry.record
        error = entry.info.error_class if entry.info else None
        return (
            (self.partition is None or r.partition == self.partition)
            and (self.offsets is None or r.offset in self.offsets)
            and (self.request_id is None or entry.request_id == self.request_id)
            and (self.error_class is None or (error or "").lower() == self.error_class.lower())
            and (self.since is None or entry.failed_at >= self.since)
            and (self.until is None or entry.failed_at < self.until)
            and (self.group is None or (entry.info is not None and entry.info.group == self.group))
        )


async def select(bus: Bus, catalog: Catalog, selection: Selection) -> list[DeadLetterEntry]:
    """The dead letters matching ``selection``, in dead-letter topic, partition, offset order.

    With ``all`` topics, dead-letter topics that do not exist are left out; a single missing
    one raises ``TopicMissing``."""
    names = {catalog.name(t, Kind.DLQ): t for t in selection.topics}
    described = await bus.describe_topics(list(names))
    missing = [n for n in names if n not in described]
    if (len(names) == 1 and missing) or not described:
        raise TopicMissing(
            f"dead-letter topic {missing[0]!r} does not exist"
            if len(names) == 1
            else f"no dead-letter topic of prefix {catalog.prefix!r} exists "
            "(is AGENTSTREAM_TOPICS__PREFIX right?)"
        )
    entries: list[DeadLetterEntry] = []
    for name, topic in names.items():
        if name in described:
            start = await _start(bus, name, described[name].partitions, selection)
            entries += [
                e
                for e in (entry_of(topic, r) for r in await bus.read(name, start=start))
                if selection.matches(e)
            ]
    entries.sort(key=lambda e: (e.record.topic, e.record.partition, e.record.offset))
    return entries


async def _start(bus: Bus, name: str, partitions: int, selection: Selection) -> dict[int, int]:
    if selection.offsets is None and selection.partition is None:
        return {}
    ends = await bus.end_offsets([TopicPartition(name, p) for p in range(partitions)])
    first = selection.offsets.first if selection.offsets else 0
    return {
        tp.partition: end if selection.partition not in (None, tp.partition) else min(first, end)
        for tp, end in ends.items()
    }


def _loose_json(value: bytes | None) -> dict[str, Any]:
    try:
        raw = json.loads(value or b"")
    except (UnicodeDecodeError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def as_text(value: bytes | None) -> str | None:
    """Bytes (a key, a header) as text, undecodable bytes replaced; None stays None."""
    return None if value is None else value.decode("utf-8", errors="replace")


def utc_iso(moment: datetime) -> str:
    """``2025-05-01T12:00:00Z``: UTC, to the second, as dead letters and replays show time."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
