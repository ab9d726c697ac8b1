"""``agentstream tail`` on a real broker: events, undecodable records, dead letters, filters.

The command runs as ``agentstream.cli.main`` in a worker thread (it has its own event loop),
with ``KAFKA_BOOTSTRAP_SERVERS`` and the test's topic prefix in the environment, while the
test's loop publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from agentstream.schemas import ToolCall, ToolCallData, UserRequest, UserRequestData
from agentstream.schemas.codec import encode
from agentstream.schemas.deadletter import DeadLetter, dead_letter_headers, now
from agentstream.tail import describe_record, format_line, matches, resolve_topic
from agentstream.topics import Catalog, KafkaConfig, Kind, OutgoingRecord, Record, Topic
from agentstream.topics.kafka import KafkaBus

# -- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """``cli.main`` configures logging for a process; give the test run its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _cli(argv: list[str], out: io.StringIO | None = None) -> tuple[int, str, str]:
    from agentstream.cli import main

    out = out or io.StringIO()
    err = io.StringIO()
    with _kept_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


async def tail_json(*args: str) -> list[dict[str, Any]]:
    code, out, err = await asyncio.to_thread(_cli, ["--json", "tail", *args])
    assert code == 0, err
    assert "Traceback" not in err
    return [json.loads(line) for line in out.splitlines()]


def _request(request_id: str, conversation: str, text: str) -> UserRequest:
    return UserRequest(
        source="test",
        request_id=request_id,
        conversation_id=conversation,
        data=UserRequestData(text=text),
    )


def _record(event: UserRequest | ToolCall, topic: str, *, headers: bool = True) -> OutgoingRecord:
    key, value, written = encode(event)
    return OutgoingRecord(topic, value, key, tuple(written) if headers else ())


@pytest.fixture
def env(kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_TOPICS__PREFIX", prefix)
    return Catalog(prefix=prefix, partitions=2)


async def _bus(bootstrap: str, catalog: Catalog, *specs: tuple[Topic, Kind]) -> KafkaBus:
    bus = KafkaBus(KafkaConfig(bootstrap_servers=bootstrap))
    await bus.start()
    await bus.create_topics([catalog.spec(t, k).description() for t, k in specs])
    return bus


# -- on Kafka -------------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_tail_shows_events_and_undecodable_records_and_filters(
    kafka_bootstrap: str, env: Catalog
) -> None:
    topic = env.name(Topic.USER_REQUEST)
    bus = await _bus(kafka_bootstrap, env, (Topic.USER_REQUEST, Kind.MAIN))
    try:
        first, second = _request("r1", "c1", "What is 12 * 7?"), _request("r2", "c2", "hi")
        bare = _request("r1", "c1", "no headers, body only")
        await bus.publish(_record(first, topic))
        await bus.publish(_record(second, topic))
        await bus.publish(_record(bare, topic, headers=False))
        await bus.publish(OutgoingRecord(topic, b"{not json", b"c1"))
        await bus.publish(OutgoingRecord(topic, None, b"c1"))  # a tombstone
        # Headers say r1/c1, the body is garbage: the filter matches without parsing.
        await bus.publish(
            OutgoingRecord(
                topic, b"garbage", b"c1", (("ce_requestid", b"r1"), ("ce_conversationid", b"c1"))
            )
        )
    finally:
        await bus.stop()

    everything = await tail_json("user_request", "--from-beginning", "--no-follow")
    assert len(everything) == 6
    assert all(e["topic"] == topic for e in everything)
    by_id = {e["id"]: e for e in everything if e["id"]}
    assert by_id[first.id]["type"] == "agentstream.user_request.v1"
    assert by_id[first.id]["summary"] == "'What is 12 * 7?'"
    assert by_id[first.id]["event"]["data"]["text"] == "What is 12 * 7?"
    assert by_id[bare.id]["request_id"] == "r1"  # from the body: it had no headers
    errors = sorted(e["error"] for e in everything if e["error"])
    assert len(errors) == 3
    assert any("not JSON" in e for e in errors)
    assert any("tombstone" in e for e in errors)

    r1 = await tail_json("user_request", "--from-beginning", "--no-follow", "-r", "r1")
    assert len(r1) == 3
    assert {e["id"] for e in r1 if e["id"]} == {first.id, bare.id}
    assert [e["value"] for e in r1 if e["error"]] == ["garbage"]

    c2 = await tail_json(topic, "--from-beginning", "--no-follow", "--conversation", "c2")
    assert [e["id"] for e in c2] == [second.id]  # the full topic name works too

    both = await tail_json(
        "user_request", "--from-beginning", "--no-follow", "-r", "r1", "-c", "c2"
    )
    assert both == []
    one = await tail_json("user_request", "--from-beginning", "--no-follow", "-r", "r1", "-n", "1")
    assert len(one) == 1

    code, human, err = await asyncio.to_thread(
        _cli, ["tail", "user_request", "--from-beginning", "--no-follow"]
    )
    assert code == 0, err
    lines = human.splitlines()
    assert len(lines) == 6
    assert any("user_request.v1 req=r1 conv=c1 'What is 12 * 7?'" in line for line in lines)
    assert any("UNDECODABLE" in line and "value='{not json'" in line for line in lines)
    assert any("UNDECODABLE (empty record value (tombstone))" in line for line in lines)


@pytest.mark.kafka
async def test_tail_of_a_dead_letter_topic_shows_why(kafka_bootstrap: str, env: Catalog) -> None:
    dlq = env.name(Topic.TOOL_CALL, Kind.DLQ)
    bus = await _bus(kafka_bootstrap, env, (Topic.TOOL_CALL, Kind.DLQ))
    call = ToolCall(
        source="agent-worker",
        request_id="r7",
        conversation_id="c7",
        data=ToolCallData(call_id="k1", step=2, tool="calculator", arguments={"expr": "1/0"}),
    )
    key, value, headers = encode(call)
    info = DeadLetter(
        topic=env.name(Topic.TOOL_CALL),
        partition=1,
        offset=41,
        timestamp=1_700_000_000_000,
        group=f"{env.prefix}agentstream-tool",
        error_class="ToolRejected",
        error_message="division by zero",
        stacktrace="Traceback (most recent call last): ...",
        attempts=6,
        handler="tool.tool_call",
        failed_at=now(),
    )
    try:
        await bus.publish(
            OutgoingRecord(dlq, value, key, tuple(dead_letter_headers(headers, info)))
        )
        undecodable = info.model_copy(update={"error_class": "SchemaError", "attempts": 1})
        await bus.publish(
            OutgoingRecord(dlq, b"\xff\xfe", b"c7", tuple(dead_letter_headers([], undecodable)))
        )
    finally:
        await bus.stop()

    entries = await tail_json("tool_call.dlq", "--from-beginning", "--no-follow")
    assert len(entries) == 2
    dead = next(e for e in entries if e["id"] == call.id)
    assert dead["type"] == "agentstream.tool_call.v1"
    assert dead["summary"] == 'calculator({"expr":"1/0"}) step 2'
    assert dead["dead_letter"]["error-class"] == "ToolRejected"
    assert dead["dead_letter"]["error-message"] == "division by zero"
    assert dead["dead_letter"]["offset"] == "41"
    assert dead["dead_letter"]["group"] == f"{env.prefix}agentstream-tool"
    broken = next(e for e in entries if e["error"])
    assert broken["dead_letter"]["error-class"] == "SchemaError"

    code, human, _ = await asyncio.to_thread(
        _cli, ["tail", "tool_call.dlq", "--from-beginning", "--no-follow", "-r", "r7"]
    )
    assert code == 0
    assert (
        f"dead letter from {env.name(Topic.TOOL_CALL)}[1]@41 group {env.prefix}agentstream-tool "
        "handler tool.tool_call: ToolRejected: division by zero (attempts 6" in human
    )
    assert "Traceback" not in human  # the stack trace stays in --json


@pytest.mark.kafka
async def test_tail_follows_new_records(kafka_bootstrap: str, env: Catalog) -> None:
    topic = env.name(Topic.USER_REQUEST)
    bus = await _bus(kafka_bootstrap, env, (Topic.USER_REQUEST, Kind.MAIN))
    try:
        await bus.publish(_record(_request("old", "c1", "before"), topic))
        out = io.StringIO()
        # From the beginning, following: the old record, then two that arrive later.
        running = asyncio.create_task(
            asyncio.to_thread(
                _cli, ["--json", "tail", "user_request", "--from-beginning", "-n", "3"], out
            )
        )
        for _ in range(200):
            if out.getvalue().count("\n") >= 1:
                break
            await asyncio.sleep(0.1)
        assert out.getvalue().count("\n") == 1
        assert not running.done()  # it waits for more
        await bus.publish(_record(_request("new1", "c1", "after"), topic))
        await bus.publish(_record(_request("new2", "c2", "after"), topic))
        code, text, err = await asyncio.wait_for(running, 60)
        assert code == 0, err
        assert [json.loads(line)["request_id"] for line in text.splitlines()] == [
            "old",
            "new1",
            "new2",
        ]

        # From the end (the default): only what is published after it started.
        out = io.StringIO()
        running = asyncio.create_task(
            asyncio.to_thread(_cli, ["--json", "tail", "user_request", "-n", "1"], out)
        )
        sent = 0
        while not running.done() and sent < 100:
            await bus.publish(_record(_request(f"live{sent}", "c3", "live"), topic))
            sent += 1
            await asyncio.sleep(0.2)
        code, text, err = await asyncio.wait_for(running, 60)
        assert code == 0, err
        (line,) = text.splitlines()
        assert json.loads(line)["request_id"].startswith("live")
    finally:
        await bus.stop()


@pytest.mark.kafka
def test_tail_of_a_missing_topic_is_one_line_and_a_hint(env: Catalog) -> None:
    code, out, err = _cli(["tail", "tool_result.retry", "--no-follow"])
    assert code == 1
    assert out == ""
    assert f"error: topic '{env.prefix}tool_result.retry' does not exist" in err
    assert "Traceback" not in err


# -- no Kafka needed ------------------------------------------------------------------------------


def test_tail_on_the_in_process_bus_says_it_needs_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code, out, err = _cli(["tail", "user_request"])
    assert code == 2
    assert out == ""
    assert "`agentstream tail` needs Kafka" in err


def test_logical_names_get_the_prefix_and_full_names_stay() -> None:
    catalog = Catalog(prefix="prod.")
    assert resolve_topic(catalog, "user_request") == "prod.user_request"
    assert resolve_topic(catalog, "tool_call.dlq") == "prod.tool_call.dlq"
    assert resolve_topic(catalog, "agent_response.retry") == "prod.agent_response.retry"
    assert resolve_topic(catalog, "prod.tool_call.dlq") == "prod.tool_call.dlq"
    assert resolve_topic(catalog, "somebody.elses.topic") == "somebody.elses.topic"


def test_filters_prefer_headers_and_fall_back_to_the_body() -> None:
    event = _request("r1", "c1", "x")
    key, value, headers = encode(event)
    with_headers = Record("t", 0, 0, key, b"not even json", tuple(headers))
    body_only = Record("t", 0, 1, key, value)
    for record in (with_headers, body_only):
        assert matches(record, request_id="r1", conversation=None)
        assert matches(record, request_id="r1", conversation="c1")
        assert not matches(record, request_id="r2", conversation=None)
        assert not matches(record, request_id=None, conversation="c2")
    assert matches(Record("t", 0, 2, None, None), request_id=None, conversation=None)
    assert not matches(Record("t", 0, 2, None, b"[1]"), request_id="r1", conversation=None)


def test_a_retried_record_shows_its_retry_headers() -> None:
    event = _request("r1", "c1", "again")
    key, value, headers = encode(event)
    retry = (
        ("x-retry-attempt", b"3"),
        ("x-retry-due", b"1700000000000"),
        ("x-retry-origin-topic", b"user_request"),
        ("x-retry-origin-partition", b"4"),
        ("x-retry-origin-offset", b"99"),
        ("x-retry-origin-timestamp", b"1699999999000"),
    )
    entry = describe_record(
        Record("user_request.retry", 4, 7, key, value, (*headers, *retry), 1_700_000_000_000)
    )
    assert entry["retry"]["attempt"] == "3"
    assert entry["dead_letter"] is None
    line = format_line(entry)
    assert "user_request.retry[4]@7 user_request.v1 req=r1 conv=c1 'again'" in line
    assert "retry attempt 3 from user_request[4]@99, due 2023-11-14T22:13:20.000Z" in line
