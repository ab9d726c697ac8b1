"""The soak's checks on made-up topics: each kind of order violation, and a 503'd request
processed, is found; a conversation in order is not flagged.

No broker: the topics are lists of records read through a stand-in for the cluster.
"""

from __future__ import annotations

from typing import Any

from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    Envelope,
    MemoryCall,
    ToolCallData,
    Usage,
    UserRequest,
    UserRequestData,
    encode,
)
from agentstream.settings import Settings, TopicSettings
from agentstream.topics import Catalog, Record, Topic

from tests.chaos.invariants import ChaosReport
from tests.chaos.ordering import check_refused, check_turn_order
from tests.workload import Turn

CATALOG: Catalog = Settings(topics=TopicSettings(prefix="t.")).catalog()
CONV = "c-1"


class Topics:
    """Records by topic name, offsets in order of appending; read like the cluster."""

    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {}

    def add(self, topic: Topic, event: Envelope[Any]) -> None:
        name = CATALOG.name(topic)
        key, value, headers = encode(event)
        records = self.records.setdefault(name, [])
        records.append(Record(name, 0, len(records), key, value, tuple(headers)))

    async def read(self, topic: str, *, read_committed: bool = True) -> list[Record]:
        return list(self.records.get(topic, []))


def turns() -> list[Turn]:
    texts = [
        ("Remember that my number is 1111.", "number is 1111"),
        ("What is my number times 2?", "1111 * 2 = 2222"),
        ("Remember that my number is 3333.", "number is 3333"),
        ("What is my number times 3?", "3333 * 3 = 9999"),
    ]
    return [Turn(f"r{i}", CONV, i, text, expect) for i, (text, expect) in enumerate(texts)]


FOREIGN = {"r1": ("number is 3333,",), "r3": ("number is 1111,",)}


def request(turn: Turn) -> UserRequest:
    return UserRequest(
        source="test",
        request_id=turn.request_id,
        conversation_id=CONV,
        data=UserRequestData(text=turn.text),
    )


def answer(turn: Turn, text: str, prompt_tokens: int, status: str = "completed") -> AgentResponse:
    calls = 2 if turn.index % 2 == 0 else 3
    return AgentResponse(
        source="test",
        request_id=turn.request_id,
        conversation_id=CONV,
        data=AgentResponseData(
            status=status,  # type: ignore[arg-type]
            text=text,
            steps=calls,
            usage=Usage(prompt_tokens=prompt_tokens, model_calls=calls),
        ),
    )


RIGHT = {
    "r0": "I will remember that your number is 1111.",
    "r1": "Your number is 1111, so 1111 * 2 = 2222.",
    "r2": "I will remember that your number is 3333.",
    "r3": "Your number is 3333, so 3333 * 3 = 9999.",
}
TOKENS = {"r0": 2000, "r1": 3100, "r2": 2100, "r3": 3300}


async def checked(
    topics: Topics, sent: list[Turn], foreign: dict[str, tuple[str, ...]] | None = None
) -> ChaosReport:
    report = ChaosReport(requests=len(sent), exactly_once=False)
    responses = await topics.read(CATALOG.name(Topic.AGENT_RESPONSE))
    await check_turn_order(
        topics, CATALOG, sent, report, responses=responses, foreign=foreign or FOREIGN
    )
    return report


def in_order(sent: list[Turn]) -> Topics:
    topics = Topics()
    for turn in sent:
        topics.add(Topic.USER_REQUEST, request(turn))
    for turn in sent:
        topics.add(
            Topic.AGENT_RESPONSE, answer(turn, RIGHT[turn.request_id], TOKENS[turn.request_id])
        )
    return topics


async def test_a_conversation_answered_in_order_passes() -> None:
    report = await checked(in_order(turns()), turns())
    assert report.order_violations == []
    assert report.ok
    assert report.order_counts == dict.fromkeys(report.order_counts, 0)


async def test_answers_on_the_topic_in_another_order_than_the_requests() -> None:
    sent = turns()
    topics = Topics()
    for turn in sent:
        topics.add(Topic.USER_REQUEST, request(turn))
    for turn in (sent[0], sent[2], sent[1], sent[3]):
        topics.add(
            Topic.AGENT_RESPONSE, answer(turn, RIGHT[turn.request_id], TOKENS[turn.request_id])
        )
    report = await checked(topics, sent)
    assert report.order_counts["answered_out_of_order"] == 1
    assert report.out_of_order == [CONV]
    assert not report.ok


async def test_an_answer_computed_on_an_older_state() -> None:
    # Turn 3 ran before turn 2 had stored its number: it recalls turn 0's.
    sent = turns()
    topics = Topics()
    for turn in sent:
        topics.add(Topic.USER_REQUEST, request(turn))
    stale = {**RIGHT, "r3": "Your number is 1111, so 1111 * 3 = 3333."}
    for turn in sent:
        topics.add(
            Topic.AGENT_RESPONSE, answer(turn, stale[turn.request_id], TOKENS[turn.request_id])
        )
    report = await checked(topics, sent)
    assert report.order_counts["answer_saw_other_state"] == 1
    assert "turn 3" in report.order_violations[0]


async def test_a_turn_given_a_history_without_the_turn_before() -> None:
    sent = turns()
    topics = Topics()
    for turn in sent:
        topics.add(Topic.USER_REQUEST, request(turn))
    short = {**TOKENS, "r2": 1990}  # no longer than turn 0's prompt: turns 0 and 1 missing
    for turn in sent:
        topics.add(
            Topic.AGENT_RESPONSE, answer(turn, RIGHT[turn.request_id], short[turn.request_id])
        )
    report = await checked(topics, sent)
    assert report.order_counts["history_not_grown"] == 1


async def test_requests_on_the_topic_in_another_order_than_sent() -> None:
    sent = turns()
    topics = Topics()
    for turn in (sent[1], sent[0], sent[2], sent[3]):
        topics.add(Topic.USER_REQUEST, request(turn))
    for turn in (sent[1], sent[0], sent[2], sent[3]):
        topics.add(
            Topic.AGENT_RESPONSE, answer(turn, RIGHT[turn.request_id], TOKENS[turn.request_id])
        )
    report = await checked(topics, sent)
    assert report.order_counts["accepted_out_of_order"] == 1
    # Answered in the order of the topic: that part is in order.
    assert report.order_counts["answered_out_of_order"] == 0


async def test_an_older_state_after_a_failed_turn_is_no_violation() -> None:
    sent = turns()
    topics = Topics()
    for turn in sent:
        topics.add(Topic.USER_REQUEST, request(turn))
    texts = {**RIGHT, "r3": "Your number is 1111, so 1111 * 3 = 3333."}
    for turn in sent:
        status = "failed" if turn.request_id == "r2" else "completed"
        event = answer(turn, texts[turn.request_id], TOKENS[turn.request_id], status)
        topics.add(Topic.AGENT_RESPONSE, event)
    report = await checked(topics, sent)
    assert report.order_violations == []


async def test_a_request_answered_503_and_processed_anyway() -> None:
    topics = in_order(turns())
    refused = UserRequest(
        source="ingress", request_id="late", conversation_id=CONV, data=UserRequestData(text="x")
    )
    topics.add(Topic.USER_REQUEST, refused)
    topics.add(
        Topic.MEMORY_CALL,
        MemoryCall(
            source="agent",
            request_id="late",
            conversation_id=CONV,
            data=ToolCallData(call_id="c", step=0, tool="recall"),
        ),
    )
    topics.add(
        Topic.AGENT_RESPONSE,
        AgentResponse(
            source="agent",
            request_id="never-run",
            conversation_id=CONV,
            data=AgentResponseData(status="rejected", error="refused"),
        ),
    )
    report = ChaosReport(requests=4, exactly_once=False)
    await check_refused(topics, CATALOG, ["late", "never-run", "never-landed"], report)
    assert report.refused == 3
    assert report.refused_processed == ["late"]
    assert report.refused_rejected == 1
    assert not report.ok
    assert "1 of 3 requests answered 503 were processed" in report.violations[0]
