"""``agentstream dlq list | show | replay``: inspect dead letters and send them back through.

``list`` prints one line per dead letter, ``show`` everything about it, and ``replay``
republishes the original records to their original topic (:mod:`agentstream.dlq_replay`).
This module is the command: its options, the Kafka connection, the warnings before a replay
(past the dedup window, replayed before: ``--skip-replayed`` leaves those out), the
confirmation, progress and the report of what was replayed. Exit status: 0 ok, 1 nothing
selected or a failure, 2 usage (or the in-process bus, whose dead letters live inside the
``agentstream up`` process).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from agentstream.dlq import (
    DeadLetterEntry,
    Selection,
    UsageError,
    as_text,
    parse_offset_range,
    parse_time,
    resolve_topics,
    select,
)
from agentstream.dlq_format import details, format_details, format_table
from agentstream.dlq_replay import (
    SCAN_LIMIT,
    ReplayFailed,
    already_replayed,
    replay,
    replay_record,
    target_topic,
)
from agentstream.schemas.errors import RetryableError
from agentstream.topics import Bus, Catalog, OutgoingRecord, RecordMetadata

if TYPE_CHECKING:
    from agentstream.settings import Settings

__all__ = ["register"]

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
    pick.add_argument(
        "--group", metavar="GROUP", help="the consumer group that failed it (x-dlq-group)"
    )
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
        help="republish the original records to their original topic, for the group that failed",
        description="Republish each selected dead letter's original bytes, key and headers "
        "to its original topic, with x-replayed-from and x-replayed-group: only the consumer "
        "group that dead-lettered it acts on the replay. Events are deduplicated by id: "
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
            args.group,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: see `agentstream dlq list --help`", file=sys.stderr)
        return 2
    from agentstream.topics.kafka import KafkaBus
    from aiokafka.errors import KafkaError

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
    stale = sum(1 for e in entries if e.failed_at < window and not _group_of(e))
    if stale:
        # A replay goes to the group that failed (x-replayed-group). A dead letter that names
        # no group goes to every group of its topic; past the dedup window, the groups that
        # handled the event fine no longer recognise it and handle it again.
        _note(
            f"warning: {stale} dead letter(s) name no consumer group and failed more than "
            f"{timedelta(seconds=dedup_ttl_s)} ago, beyond the dedup window "
            "(runtime.dedup_ttl_s): every group of their topic gets them, and groups that "
            "completed them will handle them again"
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
                "key": as_text(out.key),
                "request_id": e.request_id,
                "event_id": e.event_id,
                "group": _group_of(e),
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
            f"for {row['group'] or 'every group'} "
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
    for name in (
        "request_id",
        "offset_range",
        "partition",
        "error_class",
        "group",
        "since",
        "until",
    ):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"{name.replace('_', '-')} {value}")
    return ", ".join(parts)


def _group_of(entry: DeadLetterEntry) -> str | None:
    """The consumer group a replay of ``entry`` is for (see :func:`replay_record`)."""
    return entry.info.group if entry.info is not None and entry.info.group else None


def _counted(entries: Iterable[DeadLetterEntry], catalog: Catalog) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        counts[target_topic(e, catalog)] = counts.get(target_topic(e, catalog), 0) + 1
    return ", ".join(f"{n} to {t}" for t, n in sorted(counts.items()))
