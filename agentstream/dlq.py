"""``agentstream dlq list | show | replay``: inspect dead letters and send them back through.

A dead letter (:mod:`schemas.deadletter`) is the failed record, bytes and key untouched, in
``T.dlq`` with ``x-dlq-*`` headers saying where it came from and why. ``list`` prints one
line per dead letter, ``show`` everything about it (headers, the decoded event or the raw
bytes, the stack trace), and ``replay`` republishes the original bytes and key to the original
topic, so the record runs through the same handlers again once its cause is fixed. Replayed
records carry ``x-replayed-from: <dlq topic>/<partition>/<offset>`` and lose the ``x-dlq-*``
and ``x-retry-*`` headers; consumers deduplicate them by event id like any redelivery, so
replaying an event whose processing completed since is a no-op (docs/adr/0007-dlq-replay.md).
Before replaying, the target topics are scanned (from the earliest selected dead letter on,
when that is cheap) for earlier replays of the same dead letters: they are reported, and
``--skip-replayed`` leaves them out. Reading is outside any consumer group.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from schemas import DeadLetter, SchemaError, decode, header
from schemas.errors import AgentstreamError, RetryableError, TopicMissing
from topics import Bus, Catalog, Kind, OutgoingRecord, Record, RecordMetadata, Topic, TopicPartition

if TYPE_CHECKING:
    from agentstream.settings import Settings

__all__ = [
    "REPLAYED_AT",
    "REPLAYED_FROM",
    "DeadLetterEntry",
    "OffsetRange",
    "ReplayFailed",
    "Selection",
    "UsageError",
    "already_replayed",
    "details",
    "entry_of",
    "format_details",
    "format_table",
    "parse_offset_range",
    "parse_time",
    "register",
    "replay",
    "replay_record",
    "resolve_topics",
    "select",
    "target_topic",
]

REPLAYED_FROM = "x-replayed-from"
REPLAYED_AT = "x-replayed-at"
_DROPPED_ON_REPLAY = ("x-dlq-", "x-retry-", "x-replayed-")
_BATCH = 100
_MESSAGE_MAX = 80
_VALUE_MAX = 1000
#: The replay check reads the target topics from the earliest selected dead letter on; past
#: this many records it is skipped rather than read a busy topic for minutes.
SCAN_LIMIT = 100_000
#: Producer clocks differ between hosts: the replay check starts this much earlier.
_SKEW = timedelta(minutes=5)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(ValueError):
    """A selection that cannot mean anything (exit status 2)."""


class ReplayFailed(AgentstreamError):
    """Publishing stopped part way; ``done`` says what was replayed before it did."""

    def __init__(self, message: str, done: list[RecordMetadata]) -> None:
        super().__init__(message)
        self.done = done


# -- selection ------------------------------------------------------------------------------


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
            "key": _text(r.key),
            "request_id": self.request_id,
            "event_id": self.event_id,
            **fields,
            "failed_at": _iso(self.failed_at),
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


# -- replay ---------------------------------------------------------------------------------


def target_topic(entry: DeadLetterEntry, catalog: Catalog) -> str:
    """Where a replay goes: ``x-dlq-topic`` when it is a main topic of this deployment, else
    (a ``.retry`` topic, a foreign name, no header) the main topic of the dead letter's topic."""
    spec = catalog.resolve(entry.info.topic) if entry.info else None
    return spec.name if spec is not None and spec.kind is Kind.MAIN else catalog.name(entry.topic)


def replay_record(entry: DeadLetterEntry, catalog: Catalog, *, at: datetime) -> OutgoingRecord:
    """The original bytes, key and headers (minus ``x-dlq-*``, ``x-retry-*`` and an earlier
    replay's ``x-replayed-*``), plus where it was replayed from and when."""
    r = entry.record
    kept = tuple((k, v) for k, v in r.headers if not k.startswith(_DROPPED_ON_REPLAY))
    marks = ((REPLAYED_FROM, entry.coordinates.encode()), (REPLAYED_AT, _iso(at).encode()))
    return OutgoingRecord(target_topic(entry, catalog), r.value, r.key, kept + marks)


async def replay(
    bus: Bus,
    records: Sequence[OutgoingRecord],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[RecordMetadata]:
    """Publish ``records`` in order, in batches; ``ReplayFailed`` says how far it got."""
    done: list[RecordMetadata] = []
    for i in range(0, len(records), _BATCH):
        try:
            done += await bus.publish_many(records[i : i + _BATCH])
        except Exception as exc:
            raise ReplayFailed(
                f"replay stopped: {len(done)} of {len(records)} record(s) confirmed, up to "
                f"{min(_BATCH, len(records) - len(done))} more may have been published "
                f"(run again with --skip-replayed to go on): {exc}",
                done,
            ) from exc
        progress(len(done), len(records))
    return done


async def already_replayed(
    bus: Bus, catalog: Catalog, entries: Sequence[DeadLetterEntry], *, limit: int = SCAN_LIMIT
) -> set[str] | None:
    """The coordinates of ``entries`` found in an ``x-replayed-from`` header of their target
    topics; None when that would mean reading more than ``limit`` records."""
    since: dict[str, int] = {}
    for e in entries:
        name = target_topic(e, catalog)
        since[name] = min(since.get(name, e.record.timestamp_ms), e.record.timestamp_ms)
    starts: dict[str, dict[int, int]] = {}
    for name, ms in since.items():
        described = await bus.describe_topics([name])
        if name not in described:
            continue
        starts[name] = await _offsets_since(bus, name, described[name].partitions, ms)
        ends = await bus.end_offsets([TopicPartition(name, p) for p in starts[name]])
        limit -= sum(end - starts[name][tp.partition] for tp, end in ends.items())
        if limit < 0:
            return None
    wanted = {e.coordinates for e in entries}
    found: set[str] = set()
    for name, start in starts.items():
        for record in await bus.read(name, start=start):
            source = header(record.headers, REPLAYED_FROM)
            if source in wanted:
                found.add(source)
    return found


async def _offsets_since(bus: Bus, name: str, partitions: int, ms: int) -> dict[int, int]:
    """Per partition, the first offset at or after ``ms`` minus the clock skew (Kafka's time
    index); on other buses, the beginning."""
    from topics.kafka import KafkaBus

    if not isinstance(bus, KafkaBus):
        return dict.fromkeys(range(partitions), 0)
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as KafkaTP

    tps = [KafkaTP(name, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **bus.config.client_options())
    await consumer.start()
    try:
        at = max(0, ms - int(_SKEW.total_seconds() * 1000))
        found = await consumer.offsets_for_times(dict.fromkeys(tps, at))
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}


# -- formatting -----------------------------------------------------------------------------


def format_table(entries: Sequence[DeadLetterEntry]) -> str:
    """One line per dead letter under a header row, then the count."""
    if not entries:
        return "0 dead letters"
    rows = [("DEAD LETTER", "ORIGIN", "FAILED AT", "ERROR", "ATTEMPTS", "HANDLER", "REQUEST")]
    for e in entries:
        i = e.info
        rows.append(
            (
                e.coordinates,
                e.origin,
                _iso(e.failed_at),
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
        ("failed at", _iso(entry.failed_at)),
        ("error", f"{i.error_class}: {i.error_message}" if i else entry.problem or "?"),
        ("attempts", str(i.attempts) if i else "?"),
        ("handler", f"{i.handler} (group {i.group})" if i else "?"),
        ("request", entry.request_id or "-"),
        ("event id", entry.event_id or "-"),
        ("key", "<none>" if r.key is None else repr(_text(r.key))),
    ]
    lines += [f"{name + ':':<11}{value}" for name, value in facts]
    lines.append("headers:")
    for k, v in r.headers:
        shown = "(the stack trace, below)" if k == "x-dlq-stacktrace" else _text(v)
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


def _loose_json(value: bytes | None) -> dict[str, Any]:
    try:
        raw = json.loads(value or b"")
    except (UnicodeDecodeError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: str, limit: int = _MESSAGE_MAX) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _counted(entries: Iterable[DeadLetterEntry], catalog: Catalog) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        counts[target_topic(e, catalog)] = counts.get(target_topic(e, catalog), 0) + 1
    return ", ".join(f"{n} to {t}" for t, n in sorted(counts.items()))


# -- the command ----------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, "Settings"], Coroutine[Any, Any, int]]


def register(subparsers: Any) -> dict[str, Command]:
    common = argparse.ArgumentParser(add_help=False)
    pick = common.add_argument_group("selection (all given must match)")
    pick.add_argument(
        "--topic",
        default="all",
        help="logical topic (user_request, tool_call, ...; its .dlq is read) or all (default)",
    )
    pick.add_argument("--request-id", "-r", metavar="ID", help="ce_requestid, else the body's")
    pick.add_argument(
        "--offset-range",
        type=parse_offset_range,
        default=None,
        metavar="A:B",
        help="offsets in the dead-letter topic, both ends included (A:B, A:, :B, N)",
    )
    pick.add_argument("--partition", type=int, metavar="N", help="partition of the DLQ topic")
    pick.add_argument("--error-class", metavar="NAME", help="x-dlq-error-class (SchemaError)")
    pick.add_argument("--since", type=parse_time, metavar="TIME", help="failed at or after")
    pick.add_argument(
        "--until", type=parse_time, metavar="TIME", help="failed before (ISO 8601, or an age: 2h)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )

    p = subparsers.add_parser(
        "dlq",
        help="list, show and replay dead letters",
        description="Inspect the dead-letter topics (T.dlq) and replay dead letters to their "
        "original topic. Needs Kafka. Exit status: 0 ok, 1 nothing selected or a failure, "
        "2 usage.",
    )
    sub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    sub.add_parser("list", parents=[common], help="one line per dead letter")
    sub.add_parser("show", parents=[common], help="headers, event or bytes, stack trace")
    r = sub.add_parser(
        "replay",
        parents=[common],
        help="republish the original records to their original topic",
        description="Republish each selected dead letter's original bytes, key and headers "
        "to its original topic, with x-replayed-from. Events are deduplicated by id: "
        "replaying one whose processing completed since is a no-op.",
    )
    r.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    r.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    r.add_argument(
        "--skip-replayed", action="store_true", help="leave out dead letters replayed before"
    )
    return {"dlq": _cmd_dlq}


async def _cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "kafka":
        print(
            "error: `agentstream dlq` needs Kafka: on the embedded default the dead letters "
            "live inside the `agentstream up` process",
            file=sys.stderr,
        )
        print("hint: set KAFKA_BOOTSTRAP_SERVERS (or AGENTSTREAM_BUS=kafka)", file=sys.stderr)
        return 2
    catalog = settings.catalog()
    try:
        selection = Selection(
            resolve_topics(catalog, args.topic),
            args.request_id,
            args.offset_range,
            args.partition,
            args.error_class,
            args.since,
            args.until,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: see `agentstream dlq list --help`", file=sys.stderr)
        return 2
    from aiokafka.errors import KafkaError

    from topics.kafka import KafkaBus

    bus = KafkaBus(settings.kafka)
    writes = args.dlq_command == "replay" and not args.dry_run
    await bus.start(produce=writes)
    try:
        entries = await select(bus, catalog, selection)
        if args.dlq_command == "list":
            print(
                json.dumps([e.summary() for e in entries], indent=2)
                if args.json
                else format_table(entries)
            )
            return 0 if entries else 1
        if not entries:
            print(f"error: no dead letters match ({_described(args)})", file=sys.stderr)
            return 1
        if args.dlq_command == "show":
            if args.json:
                print(json.dumps([details(e) for e in entries], indent=2, ensure_ascii=False))
            else:
                print("\n\n".join(format_details(e) for e in entries))
            return 0
        return await _replay(args, bus, catalog, entries, settings.runtime.dedup_ttl_s)
    except KafkaError as exc:
        raise RetryableError(f"Kafka refused the dead-letter command: {exc!r}") from exc
    finally:
        await bus.stop()


async def _replay(
    args: argparse.Namespace,
    bus: Bus,
    catalog: Catalog,
    entries: list[DeadLetterEntry],
    dedup_ttl_s: int,
) -> int:
    window = datetime.now(UTC) - timedelta(seconds=dedup_ttl_s)
    stale = sum(1 for e in entries if e.failed_at < window)
    if stale:
        # Past the dedup window, groups that handled the event fine (a topic has several
        # consumer groups; only one failed) no longer recognise it and handle it again.
        _note(
            f"warning: {stale} dead letter(s) failed more than {timedelta(seconds=dedup_ttl_s)} "
            "ago, beyond the dedup window (runtime.dedup_ttl_s): consumer groups that completed "
            "them will handle them again"
        )
    seen = await already_replayed(bus, catalog, entries)
    if seen is None:
        _note(
            f"note: not checked for earlier replays (more than {SCAN_LIMIT} records to scan); "
            "replaying twice is harmless for events that completed: they are deduplicated by id"
        )
        if args.skip_replayed:
            print("error: --skip-replayed cannot tell which were replayed", file=sys.stderr)
            return 1
    elif seen:
        _note(
            f"warning: {len(seen)} of {len(entries)} selected dead letter(s) were replayed "
            f"before: {', '.join(sorted(seen)[:5])}{' …' if len(seen) > 5 else ''}"
            + (
                "; skipping them (--skip-replayed)"
                if args.skip_replayed
                else "; events that completed since are deduplicated by id "
                "(--skip-replayed leaves them out)"
            )
        )
        if args.skip_replayed:
            entries = [e for e in entries if e.coordinates not in seen]
            if not entries:
                print("nothing to replay: every selected dead letter was replayed before")
                return 0
    records = [replay_record(e, catalog, at=datetime.now(UTC)) for e in entries]
    what = f"{len(entries)} dead letter(s) ({_counted(entries, catalog)})"
    if args.dry_run:
        _report(args, entries, records, None, seen)
        return 0
    if not args.yes:
        refused = _confirm(f"replay {what}?", sys.stdin)
        if refused is not None:
            return refused
    metas: list[RecordMetadata] = []
    try:
        metas = await replay(bus, records, _progress)
    except ReplayFailed as exc:
        metas = exc.done
        raise
    finally:
        _report(args, entries[: len(metas)], records, metas, seen)
    return 0


def _confirm(question: str, stdin: TextIO) -> int | None:
    """None when confirmed; otherwise the exit status (2 without a terminal, 1 declined)."""
    if not stdin.isatty():
        print(
            f"error: refusing to {question[:-1]} without confirmation: stdin is not a terminal",
            file=sys.stderr,
        )
        print("hint: add --yes, or --dry-run to see what would be replayed", file=sys.stderr)
        return 2
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    if stdin.readline().strip().lower() in ("y", "yes"):
        return None
    print("nothing replayed", file=sys.stderr)
    return 1


def _report(
    args: argparse.Namespace,
    entries: Sequence[DeadLetterEntry],
    records: Sequence[OutgoingRecord],
    metas: Sequence[RecordMetadata] | None,
    seen: set[str] | None,
) -> None:
    rows = []
    for n, (e, out) in enumerate(zip(entries, records, strict=False)):
        to = None if metas is None else f"{metas[n].topic}/{metas[n].partition}/{metas[n].offset}"
        rows.append(
            {
                "dlq": e.coordinates,
                "topic": out.topic,
                "replayed_to": to,
                "key": _text(out.key),
                "request_id": e.request_id,
                "event_id": e.event_id,
                "size": len(out.value or b""),
                "replayed_before": None if seen is None else e.coordinates in seen,
            }
        )
    if args.json:
        found = None if seen is None else sorted(seen)
        print(
            json.dumps(
                {"dry_run": metas is None, "already_replayed": found, "records": rows}, indent=2
            )
        )
        return
    verb = "would replay" if metas is None else "replayed"
    for row in rows:
        print(
            f"{verb} {row['dlq']} -> {row['replayed_to'] or row['topic']} "
            f"(key {row['key']!r}, {row['size']} bytes, request {row['request_id'] or '-'})"
        )
    if metas is None:
        print(f"dry run: {len(rows)} dead letter(s) would be replayed; nothing was published")
    else:
        print(f"replayed {len(rows)} dead letter(s)")


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(
            f"\rreplaying {done}/{total}",
            end="\n" if done == total else "",
            file=sys.stderr,
            flush=True,
        )


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _described(args: argparse.Namespace) -> str:
    parts = [f"topic {args.topic}"]
    for name in ("request_id", "offset_range", "partition", "error_class", "since", "until"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"{name.replace('_', '-')} {value}")
    return ", ".join(parts)
