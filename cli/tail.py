"""``agentstream tail TOPIC``: read a topic as events, for people and for programs.

TOPIC is a logical name of the catalog (``user_request``, ``tool_call.dlq``), which gets the
deployment's prefix, or any full topic name. Each record prints as one line (time, where it
sits, type, request and conversation, a short summary of ``data``); dead letters add the
``x-dlq-*`` story (where from, which error, how many attempts) and retried records their
``x-retry-*`` headers. ``--json`` prints one JSON object per record instead.

Filters read the CloudEvents headers ``ce_requestid`` / ``ce_conversationid`` first, so
records of other requests are skipped without parsing their bodies; a record without those
headers (an upstream producer that only wrote the body) is matched on its JSON body. A record
that does not decode is shown as undecodable, with why; it never stops the tail.

Reading is outside any consumer group: tailing commits nothing and moves no one's offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentstream.schemas.codec import decode, header
from agentstream.schemas.errors import RetryableError, SchemaError
from agentstream.topics import Catalog, Kind, Record, Topic
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition as KafkaTP

if TYPE_CHECKING:
    from agentstream.schemas import Envelope
    from agentstream.settings import Settings
    from agentstream.topics.kafka import KafkaBus

__all__ = [
    "describe_record",
    "format_line",
    "matches",
    "register",
    "resolve_topic",
    "summary",
    "tail",
]

_DLQ = "x-dlq-"
_RETRY = "x-retry-"
_SUMMARY_MAX = 100
#: With ``--no-follow`` under read_committed, an open transaction holds records back below
#: the end offset; stop after this long without progress rather than wait for it.
_IDLE_S = 5.0


def resolve_topic(catalog: Catalog, name: str) -> str:
    """The physical topic for ``name``: a logical name of the catalog gets the deployment's
    prefix (``tool_call.dlq`` to ``prod.tool_call.dlq``); anything else is taken as is."""
    for topic in Topic:
        for kind in Kind:
            if name == f"{topic.value}{kind.value}":
                return catalog.name(topic, kind)
    return name


def _loose_json(value: bytes | None) -> dict[str, Any]:
    try:
        raw = json.loads(value or b"")
    except (UnicodeDecodeError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def matches(record: Record, *, request_id: str | None, conversation: str | None) -> bool:
    """Whether ``record`` belongs to the request and conversation asked for (None: any)."""
    body: dict[str, Any] | None = None
    for wanted, header_name, field in (
        (request_id, "ce_requestid", "request_id"),
        (conversation, "ce_conversationid", "conversation_id"),
    ):
        if wanted is None:
            continue
        found = header(record.headers, header_name)
        if found is None:
            if body is None:
                body = _loose_json(record.value)
            value = body.get(field)
            found = value if isinstance(value, str) else None
        if found != wanted:
            return False
    return True


def _short(text: str, limit: int = _SUMMARY_MAX) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def summary(event: Envelope[Any]) -> str:
    """A one-line gist of ``event.data``, by event type."""
    data = event.data.model_dump(mode="json")
    kind = event.type.removeprefix("agentstream.").rsplit(".", 1)[0]
    if kind == "user_request":
        return _short(repr(str(data.get("text", ""))))
    if kind in ("tool_call", "memory_call"):
        args = _compact(data.get("arguments", {}))
        return _short(f"{data.get('tool')}({args}) step {data.get('step')}")
    if kind == "tool_result":
        if data.get("ok"):
            return _short(f"{data.get('tool')} ok: {_compact(data.get('output'))}")
        return _short(f"{data.get('tool')} FAILED {data.get('error_class')}: {data.get('error')}")
    if kind == "agent_response":
        said = data.get("text") if data.get("status") == "completed" else data.get("error")
        return _short(f"{data.get('status')} after {data.get('steps')} step(s): {said}")
    return _short(_compact(data))


def _prefixed(headers: Mapping[str, str], prefix: str) -> dict[str, str] | None:
    found = {k[len(prefix) :]: v for k, v in headers.items() if k.startswith(prefix)}
    return found or None


def _iso_ms(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_record(record: Record) -> dict[str, Any]:
    """Everything ``tail`` shows of ``record``, as JSON-ready data (the ``--json`` line)."""
    headers = {k: v.decode("utf-8", errors="replace") for k, v in record.headers}
    entry: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": _iso_ms(record.timestamp_ms),
        "key": None if record.key is None else record.key.decode("utf-8", errors="replace"),
        "type": headers.get("ce_type"),
        "id": headers.get("ce_id"),
        "time": headers.get("ce_time"),
        "request_id": headers.get("ce_requestid"),
        "conversation_id": headers.get("ce_conversationid"),
        "summary": None,
        "error": None,
        "event": None,
        "value": None,
        "dead_letter": _prefixed(headers, _DLQ),
        "retry": _prefixed(headers, _RETRY),
        "headers": headers,
    }
    try:
        event = decode(
            record.value, topic=record.topic, partition=record.partition, offset=record.offset
        )
        text = summary(event)
    except SchemaError as exc:
        entry["error"] = exc.reason
    except Exception as exc:  # tail shows whatever is on the topic; it never stops on a record
        entry["error"] = f"{type(exc).__name__}: {exc}"
    else:
        entry.update(
            type=event.type,
            id=event.id,
            time=event.time.isoformat().replace("+00:00", "Z"),
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            summary=text,
            event=event.model_dump(mode="json", exclude_none=True),
        )
        return entry
    if record.value is not None:
        entry["value"] = record.value[:2000].decode("utf-8", errors="replace")
    return entry


def format_line(entry: Mapping[str, Any]) -> str:
    """The human form of :func:`describe_record`'s data: one line, two for dead letters."""
    where = f"{entry['topic']}[{entry['partition']}]@{entry['offset']}"
    when = entry["time"] or entry["timestamp"]
    kind = (entry["type"] or "?").removeprefix("agentstream.")
    ids = f"req={entry['request_id'] or '-'} conv={entry['conversation_id'] or '-'}"
    if entry["error"] is not None:
        value = entry["value"]
        shown = "<no value>" if value is None else repr(_short(value, 60))
        line = f"{when} {where} UNDECODABLE ({entry['error']}) {ids} value={shown}"
    else:
        line = f"{when} {where} {kind} {ids} {entry['summary']}"
    dlq = entry.get("dead_letter")
    if dlq:
        line += (
            f"\n    dead letter from {dlq.get('topic')}[{dlq.get('partition')}]"
            f"@{dlq.get('offset')} group {dlq.get('group')} handler {dlq.get('handler')}:"
            f" {dlq.get('error-class')}: {_short(dlq.get('error-message') or '')}"
            f" (attempts {dlq.get('attempts')}, failed at {dlq.get('failed-at')})"
        )
    retry = entry.get("retry")
    if retry:
        line += (
            f"\n    retry attempt {retry.get('attempt')} from {retry.get('origin-topic')}"
            f"[{retry.get('origin-partition')}]@{retry.get('origin-offset')},"
            f" due {_iso_ms(int(retry.get('due') or 0))}"
        )
    return line


async def tail(
    bus: KafkaBus,
    topic: str,
    emit: Callable[[Record], None],
    *,
    from_beginning: bool = False,
    follow: bool = True,
    limit: int | None = None,
    request_id: str | None = None,
    conversation: str | None = None,
) -> int:
    """Pass the matching records of ``topic`` to ``emit``; return how many matched.

    Starts at the end (new records only) unless ``from_beginning``; with ``follow`` it waits
    for new records until cancelled or ``limit`` matched, otherwise it stops at the end
    offsets of the moment it started. ``bus`` must be started.
    """
    await bus.require_topics([topic])
    partitions = (await bus.describe_topics([topic]))[topic].partitions
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
        **bus.config.client_options(),
    )
    await consumer.start()
    try:
        tps = [KafkaTP(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends = None if follow else await consumer.end_offsets(tps)
        return await _pump(consumer, tps, ends, emit, limit, request_id, conversation)
    finally:
        await consumer.stop()


async def _pump(
    consumer: AIOKafkaConsumer,
    tps: list[KafkaTP],
    ends: dict[KafkaTP, int] | None,
    emit: Callable[[Record], None],
    limit: int | None,
    request_id: str | None,
    conversation: str | None,
) -> int:
    loop = asyncio.get_running_loop()
    remaining = set(tps)
    last_progress = loop.time()
    shown = 0
    while True:
        if ends is not None:
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining or loop.time() - last_progress > _IDLE_S:
                return shown
        batches = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, messages in sorted(batches.items()):
            last_progress = loop.time()
            for m in messages:
                if ends is not None and m.offset >= ends[tp]:
                    continue
                record = Record(
                    tp.topic,
                    tp.partition,
                    m.offset,
                    m.key,
                    m.value,
                    tuple(m.headers or ()),
                    m.timestamp,
                )
                if not matches(record, request_id=request_id, conversation=conversation):
                    continue
                emit(record)
                shown += 1
                if limit is not None and shown >= limit:
                    return shown


# -- the command ------------------------------------------------------------------------------


def register(
    subparsers: Any,
) -> dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]]:
    p = subparsers.add_parser(
        "tail",
        help="print the events of a topic (live, or from the beginning)",
        description="Print the records of TOPIC as events: a logical name of the catalog "
        "(user_request, tool_call.dlq, ...; the topic prefix is added) or a full topic name. "
        "Starts at the end and follows new records unless told otherwise.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--from-beginning", action="store_true", help="start at the earliest offset")
    p.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep waiting for new records (default); --no-follow stops at the end",
    )
    p.add_argument("--request-id", "-r", default=None, help="only events of this request")
    p.add_argument("--conversation", "-c", default=None, help="only events of this conversation")
    p.add_argument("--limit", "-n", type=int, default=None, help="stop after N events")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return {"tail": _cmd_tail}


async def _cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "kafka":
        print(
            "error: `agentstream tail` needs Kafka: the in-process bus lives inside the "
            "`agentstream up` process; set KAFKA_BOOTSTRAP_SERVERS (or AGENTSTREAM_BUS=kafka)",
            file=sys.stderr,
        )
        return 2
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    from agentstream.topics.kafka import KafkaBus

    topic = resolve_topic(settings.catalog(), args.topic)
    as_json: bool = args.json

    def emit(record: Record) -> None:
        entry = describe_record(record)
        line = json.dumps(entry, default=str) if as_json else format_line(entry)
        print(line, flush=True)

    bus = KafkaBus(settings.kafka)
    await bus.start(produce=False)
    try:
        await tail(
            bus,
            topic,
            emit,
            from_beginning=args.from_beginning,
            follow=args.follow,
            limit=args.limit,
            request_id=args.request_id,
            conversation=args.conversation,
        )
    except KafkaError as exc:
        raise RetryableError(f"Kafka refused to read {topic!r}: {exc}") from exc
    finally:
        await bus.stop()
    return 0
