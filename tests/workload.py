"""A checkable workload: conversations whose right answers are known in advance.

Each conversation remembers a number, asks arithmetic, then asks for the remembered number
times two (which needs the memory of an earlier turn), then more arithmetic. The checker
reads the response topic and reports what a user would care about: lost requests, requests
with more than one distinct answer, turns answered out of order, wrong answers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from agentstream.schemas import (
    AgentResponse,
    SchemaError,
    UserRequest,
    UserRequestData,
    decode,
    encode,
)
from agentstream.topics import Bus, Catalog, OutgoingRecord, Record, Topic

__all__ = ["Report", "Turn", "check", "collect", "make_turns", "publish"]


@dataclass(frozen=True)
class Turn:
    request_id: str
    conversation_id: str
    index: int
    text: str
    expect: str

    def event(self) -> UserRequest:
        return UserRequest(
            source="workload",
            request_id=self.request_id,
            conversation_id=self.conversation_id,
            data=UserRequestData(text=self.text, user=f"user-{self.conversation_id}"),
        )


def make_turns(conversations: int, *, seed: int = 0) -> list[Turn]:
    """Four turns per conversation, interleaved across conversations in send order."""
    run = uuid.uuid4().hex[:6]
    per_conv: list[list[Turn]] = []
    for c in range(conversations):
        conv = f"conv-{run}-{c}"
        n = 100 + 7 * c + seed
        a, b, k = 3 + c, 11 + 2 * c, 5 + c % 9
        texts = [
            (f"Remember that my number is {n}.", f"{n}"),
            (f"What is {a} + {b}?", f"{a + b}"),
            ("What is my number times 2?", f"{2 * n}"),
            (f"What is 7 * {k}?", f"{7 * k}"),
        ]
        per_conv.append(
            [
                Turn(f"req-{run}-{c}-{i}", conv, i, text, expect)
                for i, (text, expect) in enumerate(texts)
            ]
        )
    return [conv[i] for i in range(4) for conv in per_conv]


async def publish(bus: Bus, catalog: Catalog, turns: list[Turn], *, pace_s: float = 0.0) -> None:
    topic = catalog.name(Topic.USER_REQUEST)
    for turn in turns:
        key, value, headers = encode(turn.event())
        await bus.publish(OutgoingRecord(topic, value, key, tuple(headers)))
        if pace_s:
            await asyncio.sleep(pace_s)


async def collect(
    bus: Bus, catalog: Catalog, turns: list[Turn], *, timeout_s: float, settle_s: float = 1.0
) -> list[Record]:
    """Every record of the response topic once each request has an answer (or at timeout)."""
    wanted = {t.request_id for t in turns}
    topic = catalog.name(Topic.AGENT_RESPONSE)
    deadline = time.monotonic() + timeout_s
    records: list[Record] = []
    while time.monotonic() < deadline:
        records = await bus.read(topic)
        answered = {_request_id(r) for r in records}
        if wanted <= answered:
            await asyncio.sleep(settle_s)  # let late duplicates arrive, to count them
            return await bus.read(topic)
        await asyncio.sleep(0.5)
    return records


def _request_id(record: Record) -> str | None:
    for k, v in record.headers:
        if k == "ce_requestid":
            return v.decode()
    return None


@dataclass
class Report:
    requests: int
    lost: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    duplicate_copies: int = 0
    out_of_order: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.conflicting or self.out_of_order or self.wrong or self.not_completed
        )

    def summary(self) -> str:
        return json.dumps(
            {
                "requests": self.requests,
                "lost": len(self.lost),
                "conflicting": len(self.conflicting),
                "duplicate_copies": self.duplicate_copies,
                "out_of_order": len(self.out_of_order),
                "wrong": self.wrong[:5],
                "not_completed": self.not_completed[:5],
            }
        )


def check(turns: list[Turn], records: list[Record], *, answers: bool = True) -> Report:
    """Compare the responses on the topic with the turns that were sent."""
    report = Report(requests=len(turns))
    by_request: dict[str, list[tuple[Record, AgentResponse]]] = defaultdict(list)
    for record in records:
        try:
            event = decode(record.value)
        except SchemaError:
            continue
        if isinstance(event, AgentResponse):
            by_request[event.request_id].append((record, event))
    first_offset: dict[str, tuple[int, int]] = {}
    for turn in turns:
        copies = by_request.get(turn.request_id, [])
        if not copies:
            report.lost.append(turn.request_id)
            continue
        distinct = {(e.id, e.data.status, e.data.text, e.data.error) for _, e in copies}
        if len(distinct) > 1:
            report.conflicting.append(turn.request_id)
        report.duplicate_copies += len(copies) - 1
        record, event = copies[0]
        first_offset[turn.request_id] = (record.partition, record.offset)
        if event.data.status != "completed":
            report.not_completed.append(
                f"{turn.request_id}: {event.data.status} {event.data.error}"
            )
        elif answers and turn.expect not in (event.data.text or ""):
            report.wrong.append(f"{turn.text!r} -> {event.data.text!r} (want {turn.expect})")
    by_conv: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_conv[turn.conversation_id].append(turn)
    for conv, conv_turns in by_conv.items():
        placed = [
            first_offset[t.request_id]
            for t in sorted(conv_turns, key=lambda t: t.index)
            if t.request_id in first_offset
        ]
        if placed != sorted(placed):
            report.out_of_order.append(conv)
    return report
