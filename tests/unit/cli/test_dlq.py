"""``agentstream dlq``'s parts on the in-process bus: selection, formatting, replay records.

The dead-letter topics are filled directly with records shaped as the runtime writes them
(:func:`agentstream.schemas.deadletter.dead_letter_headers`); the command's internal functions are
called directly. The end-to-end behaviour against Kafka and a real worker is in
``tests/integration/test_dlq.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from agentstream.dlq import (
    DeadLetterEntry,
    OffsetRange,
    Selection,
    UsageError,
    parse_offset_range,
    parse_time,
    resolve_topics,
    select,
)
from agentstream.dlq_command import _confirm, _replay
from agentstream.dlq_format import details, format_details, format_table
from agentstream.dlq_replay import (
    REPLAY_GROUP,
    REPLAYED_AT,
    REPLAYED_FROM,
    ReplayFailed,
    already_replayed,
    replay,
    replay_record,
    target_topic,
)
from agentstream.schemas import ToolCall, ToolCallData, UserRequest, UserRequestData, encode
from agentstream.schemas.deadletter import DeadLetter, dead_letter_headers
from agentstream.topics import Catalog, Kind, OutgoingRecord, Topic, TopicPartition
from agentstream.topics.deadline import ACCEPT_BY, accept_by_header
from agentstream.topics.memory import InProcessBus

from tests.cli_runner import run_cli

FAILED = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
CATALOG = Catalog(prefix="p.", partitions=2)

# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3:7", OffsetRange(3, 7)),
        ("3:", OffsetRange(3, None)),
        (":7", OffsetRange(0, 7)),
        ("5", OffsetRange(5, 5)),
        (" 2 : 2 ", OffsetRange(2, 2)),
    ],
)
def test_offset_range_forms(text: str, expected: OffsetRange) -> None:
    assert parse_offset_range(text) == expected


@pytest.mark.parametrize("text", ["", ":", "7:3", "a:b", "-1:4", "1:2:3", "5 6"])
def test_offset_range_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an offset range"):
        parse_offset_range(text)


def test_offset_range_contains_both_ends() -> None:
    r = OffsetRange(3, 5)
    assert [o for o in range(8) if o in r] == [3, 4, 5]
    assert 10**9 in OffsetRange(3)


def test_times_iso_naive_date_and_ages() -> None:
    assert parse_time("2025-05-01T12:00:00Z") == FAILED
    assert parse_time("2025-05-01T14:00:00+02:00") == FAILED
    assert parse_time("2025-05-01T12:00") == FAILED  # no offset: UTC
    assert parse_time("2025-05-01") == FAILED - timedelta(hours=12)
    assert parse_time("90m", now=FAILED) == FAILED - timedelta(minutes=90)
    assert parse_time("2d", now=FAILED) == FAILED - timedelta(days=2)
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_time("yesterday")


def test_topic_names_resolve_through_the_catalog() -> None:
    assert resolve_topics(CATALOG, "all") == tuple(Topic)
    for name in ("tool_call", "tool_call.dlq", "p.tool_call", "p.tool_call.dlq"):
        assert resolve_topics(CATALOG, name) == (Topic.TOOL_CALL,)
    with pytest.raises(UsageError, match=r"unknown topic 'tool_calls'.*user_request"):
        resolve_topics(CATALOG, "tool_calls")
    with pytest.raises(UsageError):
        resolve_topics(CATALOG, "q.tool_call.dlq")  # another deployment's prefix
    with pytest.raises(UsageError):
        resolve_topics(CATALOG, "tool_call.retry")


def test_selection_refuses_what_cannot_mean_anything() -> None:
    with pytest.raises(UsageError, match="single --topic"):
        Selection(offsets=OffsetRange(1, 2))
    with pytest.raises(UsageError, match="single --topic"):
        Selection(partition=0)
    with pytest.raises(UsageError, match="--until"):
        Selection(since=FAILED, until=FAILED)
    Selection((Topic.TOOL_CALL,), offsets=OffsetRange(1, 2), partition=0)


# -- a dead-letter topic filled by hand ----------------------------------------------------


def _call(request_id: str, conversation: str) -> ToolCall:
    return ToolCall(
        id=f"{request_id}-event",
        source="agent-worker",
        request_id=request_id,
        conversation_id=conversation,
        data=ToolCallData(call_id=f"{request_id}-c", step=1, tool="calculator", arguments={}),
    )


def _info(topic: str, offset: int, error: str, attempts: int, at: datetime) -> DeadLetter:
    return DeadLetter(
        topic=topic,
        partition=1,
        offset=offset,
        timestamp=1_746_100_000_000,
        group="p.agentstream-tool",
        error_class=error,
        error_message=f"{error} happened\nwith a second line " + "x" * 200,
        stacktrace=f"Traceback (most recent call last):\n  File 'x.py'\n{error}: boom\n",
        attempts=attempts,
        handler="tool.tool_call",
        failed_at=at,
    )


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus()
    await bus.start()
    await bus.create_topics([s.description() for s in CATALOG.specs()])
    call = _call("r1", "c1")
    key, value, headers = encode(call)
    stale = [*headers, (REPLAYED_FROM, b"p.tool_call.dlq/0/99"), ("x-retry-attempt", b"3")]
    records = [
        # A tool call that failed for good after 6 attempts.
        (
            "p.tool_call.dlq",
            value,
            key,
            dead_letter_headers(stale, _info("p.tool_call", 7, "RuntimeError", 6, FAILED)),
        ),
        # Bytes that never decoded; the request id is only in a header.
        (
            "p.tool_call.dlq",
            b"\xff{not json" + b"!" * 1500,
            b"c2",
            dead_letter_headers(
                [("ce_requestid", b"r2")],
                _info("p.tool_call", 8, "SchemaError", 1, FAILED + timedelta(hours=1)),
            ),
        ),
        # A request that failed after a retry hop, header-less: the request id is in the body.
        (
            "p.user_request.dlq",
            encode(_user("r3", "c3"))[1],
            b"c3",
            dead_letter_headers(
                [], _info("p.user_request.retry", 2, "ValueError", 6, FAILED + timedelta(hours=2))
            ),
        ),
        # Written by hand, no x-dlq-* headers at all.
        ("p.user_request.dlq", b"{}", None, []),
    ]
    for topic, value_, key_, headers_ in records:
        await bus.publish(OutgoingRecord(topic, value_, key_, tuple(headers_), partition=0))
    yield bus
    await bus.stop()


def _user(request_id: str, conversation: str) -> UserRequest:
    return UserRequest(
        source="test",
        request_id=request_id,
        conversation_id=conversation,
        data=UserRequestData(text="hello"),
    )


async def _coordinates(bus: InProcessBus, selection: Selection) -> list[str]:
    return [e.coordinates for e in await select(bus, CATALOG, selection)]


async def test_selection_by_topic_request_error_offsets_and_time(bus: InProcessBus) -> None:
    tool = (Topic.TOOL_CALL,)
    everything = await _coordinates(bus, Selection())
    assert everything == [
        "p.tool_call.dlq/0/0",
        "p.tool_call.dlq/0/1",
        "p.user_request.dlq/0/0",
        "p.user_request.dlq/0/1",
    ]
    assert await _coordinates(bus, Selection(tool)) == everything[:2]
    assert await _coordinates(bus, Selection(request_id="r1")) == everything[:1]  # header
    assert await _coordinates(bus, Selection(request_id="r2")) == everything[1:2]  # header only
    assert await _coordinates(bus, Selection(request_id="r3")) == everything[2:3]  # body only
    assert await _coordinates(bus, Selection(error_class="schemaerror")) == everything[1:2]
    assert await _coordinates(bus, Selection(tool, offsets=OffsetRange(1, 1))) == everything[1:2]
    assert await _coordinates(bus, Selection(tool, offsets=OffsetRange(5))) == []
    assert await _coordinates(bus, Selection(tool, partition=1)) == []
    assert await _coordinates(bus, Selection(tool, partition=0)) == everything[:2]
    window = Selection(since=FAILED + timedelta(minutes=30), until=FAILED + timedelta(hours=2))
    assert await _coordinates(bus, window) == everything[1:2]


async def test_a_missing_topic_is_named_and_all_skips_missing_ones() -> None:
    bus = InProcessBus()
    await bus.start()
    await bus.create_topics([CATALOG.spec(Topic.TOOL_CALL, Kind.DLQ).description()])
    assert await select(bus, CATALOG, Selection()) == []
    with pytest.raises(Exception, match=r"'p\.user_request\.dlq' does not exist"):
        await select(bus, CATALOG, Selection((Topic.USER_REQUEST,)))
    with pytest.raises(Exception, match=r"no dead-letter topic of prefix 'q\.' exists"):
        await select(bus, Catalog(prefix="q."), Selection())


async def test_entries_read_the_dead_letter_headers(bus: InProcessBus) -> None:
    call, bad, request, bare = await select(bus, CATALOG, Selection())
    assert call.info is not None
    assert (call.info.topic, call.info.offset, call.info.attempts) == ("p.tool_call", 7, 6)
    assert call.request_id == "r1"
    assert call.event_id == "r1-event"
    assert bad.event_id is None
    assert request.request_id == "r3"
    assert bare.info is None
    assert bare.problem is not None
    assert "x-dlq-topic" in bare.problem


async def test_list_table_and_json(bus: InProcessBus) -> None:
    entries = await select(bus, CATALOG, Selection())
    lines = format_table(entries).splitlines()
    assert lines[0].split() == [
        "DEAD",
        "LETTER",
        "ORIGIN",
        "FAILED",
        "AT",
        "GROUP",
        "ERROR",
        "ATTEMPTS",
        "HANDLER",
        "REQUEST",
        "MESSAGE",
    ]
    first = lines[1]
    for part in ("p.tool_call.dlq/0/0", "p.tool_call[1]@7", "2025-05-01T12:00:00Z"):
        assert part in first
    assert " RuntimeError " in first
    assert " p.agentstream-tool " in first  # the group that failed it
    assert " 6 " in first
    assert "tool.tool_call" in first
    assert " r1 " in first
    assert "RuntimeError happened with a second line xx" in first  # flattened
    assert first.endswith("…")  # and cut short
    assert "missing or invalid dead-letter headers" in lines[4]
    assert lines[-1] == "4 dead letters"
    assert format_table(entries[:1]).splitlines()[-1] == "1 dead letter"
    assert format_table([]) == "0 dead letters"
    summary = entries[0].summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["dlq_topic"] == "p.tool_call.dlq"
    assert (summary["dlq_partition"], summary["dlq_offset"]) == (0, 0)
    assert (summary["topic"], summary["partition"], summary["offset"]) == ("p.tool_call", 1, 7)
    assert summary["error_class"] == "RuntimeError"
    assert summary["attempts"] == 6
    assert summary["key"] == "c1"
    assert summary["request_id"] == "r1"
    assert summary["failed_at"] == "2025-05-01T12:00:00Z"
    assert set(DeadLetter.model_fields) <= set(summary)


async def test_show_decoded_event_raw_bytes_and_stack_trace(bus: InProcessBus) -> None:
    call, bad, _, bare = await select(bus, CATALOG, Selection())
    text = format_details(call)
    assert text.startswith("== p.tool_call.dlq/0/0 ==")
    assert "x-dlq-error-class: RuntimeError" in text
    assert "x-dlq-stacktrace: (the stack trace, below)" in text
    assert "ce_requestid: r1" in text
    assert '    "tool": "calculator",' in text  # pretty JSON, indented
    assert text.rstrip().endswith("RuntimeError: boom")
    raw = format_details(bad)
    assert "value (1510 bytes, not an event: value is not JSON" in raw
    assert "b'\\xff{not json!!!" in raw
    assert "… (1510 bytes in all)" in raw
    assert "error:     missing or invalid dead-letter headers" in format_details(bare)
    data = details(call)
    assert data["event"]["data"]["tool"] == "calculator"
    assert data["headers"]["x-dlq-attempts"] == "6"
    assert data["value"] is None
    raw_data = details(bad)
    assert raw_data["event"] is None
    assert raw_data["decode_error"].startswith("value is not JSON")
    assert raw_data["value_size"] == 1510
    assert raw_data["value"].encode("latin-1") == bad.record.value
    json.dumps([details(e) for e in (call, bad, bare)])


# -- replay ---------------------------------------------------------------------------------


async def test_replay_record_restores_the_original(bus: InProcessBus) -> None:
    call, bad, request, bare = await select(bus, CATALOG, Selection())
    at = FAILED + timedelta(days=1)
    out = replay_record(call, CATALOG, at=at)
    assert out.topic == "p.tool_call"
    assert (out.key, out.value) == (call.record.key, call.record.value)
    assert out.partition is None  # the partitioner picks it from the key, as for the original
    names = [k for k, _ in out.headers]
    assert not [n for n in names if n.startswith(("x-dlq-", "x-retry-"))]
    assert names.count(REPLAYED_FROM) == 1  # the stale one is gone
    assert dict(out.headers)[REPLAYED_FROM] == b"p.tool_call.dlq/0/0"
    assert dict(out.headers)[REPLAYED_AT] == b"2025-05-02T12:00:00Z"
    assert dict(out.headers)["ce_id"] == b"r1-event"
    # For the group that failed it only (ADR 17); a dead letter naming none, for every group.
    assert dict(out.headers)[REPLAY_GROUP] == b"p.agentstream-tool"
    assert REPLAY_GROUP not in dict(replay_record(bare, CATALOG, at=at).headers)
    assert replay_record(bad, CATALOG, at=at).topic == "p.tool_call"
    # A request's accept-by deadline is long past when it is replayed: dropped, or the
    # replay would be refused (topics/deadline.py).
    stamped = dataclasses.replace(
        call,
        record=dataclasses.replace(
            call.record, headers=(*call.record.headers, accept_by_header(1))
        ),
    )
    assert ACCEPT_BY not in dict(replay_record(stamped, CATALOG, at=at).headers)
    # From a .retry topic, or with no dead-letter headers: the main topic of the DLQ's topic.
    assert target_topic(request, CATALOG) == "p.user_request"
    assert target_topic(bare, CATALOG) == "p.user_request"
    foreign = DeadLetterEntry(Topic.TOOL_CALL, call.record, _info("x.other", 1, "E", 1, FAILED))
    assert target_topic(foreign, CATALOG) == "p.tool_call"


async def test_replay_publishes_and_earlier_replays_are_found(bus: InProcessBus) -> None:
    entries = await select(bus, CATALOG, Selection())
    assert await already_replayed(bus, CATALOG, entries) == set()
    records = [replay_record(e, CATALOG, at=FAILED) for e in entries[:2]]
    progress: list[tuple[int, int]] = []
    metas = await replay(bus, records, lambda done, total: progress.append((done, total)))
    assert [m.topic for m in metas] == ["p.tool_call", "p.tool_call"]
    assert progress == [(2, 2)]
    published = await bus.read("p.tool_call")
    assert sorted(r.value or b"" for r in published) == sorted(r.value or b"" for r in records)
    assert await already_replayed(bus, CATALOG, entries) == {
        "p.tool_call.dlq/0/0",
        "p.tool_call.dlq/0/1",
    }
    assert await already_replayed(bus, CATALOG, entries, limit=1) is None  # too much to read


async def test_replay_failing_part_way_says_how_far_it_got(bus: InProcessBus) -> None:
    good = OutgoingRecord("p.tool_call", b"{}", b"k")
    records = [good] * 100 + [OutgoingRecord("p.gone", b"{}", b"k")] * 5
    with pytest.raises(
        ReplayFailed, match=r"100 of 105 record\(s\) confirmed, up to 5 more"
    ) as failed:
        await replay(bus, records)
    assert len(failed.value.done) == 100


async def test_selection_by_group(bus: InProcessBus) -> None:
    tool = await _coordinates(bus, Selection(group="p.agentstream-tool"))
    assert len(tool) == 3  # the bare record names no group
    assert await _coordinates(bus, Selection(group="p.agentstream-agent")) == []


async def test_an_old_dead_letter_naming_no_group_warns_of_the_dedup_window(
    bus: InProcessBus, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = await select(bus, CATALOG, Selection((Topic.USER_REQUEST,)))
    args = argparse.Namespace(dry_run=True, yes=False, skip_replayed=False, json=False)
    await asyncio.sleep(0.01)
    assert await _replay(args, bus, CATALOG, entries, dedup_ttl_s=0) == 0
    out, err = capsys.readouterr()
    # Of the two (both past a window of 0 s), only the one naming no group goes to groups
    # that completed it.
    assert "1 dead letter(s) name no consumer group and failed more than 0:00:00 ago" in err
    assert "-> p.user_request for every group" in out


async def test_dry_run_plans_and_warns(
    bus: InProcessBus, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = await select(bus, CATALOG, Selection((Topic.TOOL_CALL,)))
    await replay(bus, [replay_record(entries[0], CATALOG, at=FAILED)])
    before = await bus.end_offsets([TopicPartition("p.tool_call", p) for p in (0, 1)])
    args = argparse.Namespace(dry_run=True, yes=False, skip_replayed=False, json=False)
    assert await _replay(args, bus, CATALOG, entries, dedup_ttl_s=3600) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "would replay p.tool_call.dlq/0/0 -> p.tool_call for p.agentstream-tool (key 'c1', "
        f"{len(entries[0].record.value or b'')} bytes, request r1)",
        "would replay p.tool_call.dlq/0/1 -> p.tool_call for p.agentstream-tool (key 'c2', "
        "1510 bytes, request r2)",
        "dry run: 2 dead letter(s) would be replayed; nothing was published",
    ]
    # Replays go to the group that failed: the others never see them, whatever their age.
    assert "dedup window" not in err
    assert "1 of 2 selected dead letter(s) were replayed before: p.tool_call.dlq/0/0" in err
    args.json = True
    args.skip_replayed = True
    assert await _replay(args, bus, CATALOG, entries, dedup_ttl_s=10**9) == 0
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert plan["dry_run"] is True
    assert plan["already_replayed"] == ["p.tool_call.dlq/0/0"]
    assert [r["dlq"] for r in plan["records"]] == ["p.tool_call.dlq/0/1"]  # skipped the other
    assert plan["records"][0]["replayed_to"] is None
    assert "dedup window" not in err
    after = await bus.end_offsets([TopicPartition("p.tool_call", p) for p in (0, 1)])
    assert after == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_confirmation(capsys: pytest.CaptureFixture[str]) -> None:
    assert _confirm("replay 3 dead letter(s)?", io.StringIO("y\n")) == 2  # not a terminal
    assert "refusing to replay 3 dead letter(s) without confirmation" in capsys.readouterr().err
    assert _confirm("replay 3?", _Terminal("y\n")) is None
    assert "replay 3? [y/N]" in capsys.readouterr().err
    assert _confirm("replay 3?", _Terminal("yes\n")) is None
    assert _confirm("replay 3?", _Terminal("\n")) == 1
    assert _confirm("replay 3?", _Terminal("")) == 1  # end of input


# -- the command line, where it needs no broker ---------------------------------------------


def _cli(argv: list[str]) -> tuple[int, str]:
    code, _, err = run_cli(argv)
    return code, err


def test_usage_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code, err = _cli(["dlq", "list"])
    assert code == 2
    assert "needs Kafka" in err
    code, err = _cli(["dlq", "replay", "--offset-range", "9:1"])
    assert code == 2
    assert "not an offset range" in err
    code, err = _cli(["dlq", "show", "--since", "last tuesday"])
    assert code == 2
    monkeypatch.setenv("AGENTSTREAM_BUS", "kafka")
    monkeypatch.setenv("AGENTSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    code, err = _cli(["dlq", "list", "--topic", "nope"])
    assert (code, err.splitlines()[0]) == (
        2,
        "error: unknown topic 'nope': use all or one of "
        "user_request, tool_call, memory_call, tool_result, "
        "agent_response, agent_stats",
    )
    code, err = _cli(["dlq", "list", "--partition", "0"])
    assert code == 2
    assert "single --topic" in err
