"""The invariants every chaos scenario checks, read from the topics as a consumer sees them.

:func:`verify` reads every pipeline topic with ``read_committed`` (what a transactional
consumer, the ingress projection and any downstream reader see) and compares it with the
requests that were accepted. It wraps :func:`tests.workload.check` and adds what a fault
can break elsewhere in the pipeline:

- *lost*: an accepted request without any ``agent_response``;
- *conflicting*: a request with more than one distinct response (ids, status, text, error),
  or an event id on any topic carried by two events that differ in content;
- *non-terminal*: a response whose status is not terminal;
- *out of order*: a conversation whose first responses are not in turn order on the topic;
- *wrong*: a completed answer that is not the known right one, in a conversation whose every
  turn completed (a failed turn may rightly make a later one answer differently);
- in ``exactly_once`` mode, *any* copy beyond the first of any event id on any topic.

Copies beyond the first (``duplicates``) are reported in ``at_least_once`` mode, not failed:
the design allows them there, with the same ids. Failed answers (``not_completed``) are
reported too: they are terminal answers, so they break no guarantee.

Two checks take more than the responses, and scenarios call them after :func:`verify`; they
live in :mod:`tests.chaos.ordering` and add their findings to the same report:

- ``check_turn_order`` (DESIGN.md §3.7): each conversation's turns, in the order of their
  requests on the ``user_request`` partition, must be answered in that order on
  ``agent_response``, and each answer must show that its turn ran after the turn before it
  (the agent's history grew, and no answer carries another turn's state);
- ``check_refused`` (DESIGN.md §3.1): a request the ingress answered ``503`` is never
  processed, even if its record reached the topic later.

The module also measures recovery from the response timestamps (the producer's clock, the
same machine as the test's): see :meth:`ChaosReport.recovery`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentstream.schemas import AgentResponse, SchemaError, decode
from agentstream.topics import Catalog, Inbox, Kind, LogicalTopic, Record, Topic

from tests.workload import Turn, check

__all__ = ["TERMINAL", "ChaosReport", "Reader", "copies_of", "verify"]

TERMINAL = frozenset({"completed", "failed", "timed_out", "rejected"})
#: Topics whose events are deduplicated by id downstream; checked for conflicts and copies.
SIDE_TOPICS = (Topic.TOOL_CALL, Topic.MEMORY_CALL, Topic.TOOL_RESULT)


class Reader(Protocol):
    """Reads a whole topic: the Kafka bus, or a test cluster that retries through faults."""

    async def read(self, topic: str, *, read_committed: bool = True) -> list[Record]: ...


@dataclass
class ChaosReport:
    requests: int
    exactly_once: bool
    lost: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)
    non_terminal: list[str] = field(default_factory=list)
    #: Per side topic: event ids carried by events that differ (ignoring ``time``).
    side_conflicts: dict[str, list[str]] = field(default_factory=dict)
    #: Per side topic: copies beyond the first, by event id.
    side_duplicates: dict[str, int] = field(default_factory=dict)
    #: A few copied events, with where and when each copy landed (for diagnosis).
    copy_samples: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: (partition, producer timestamp in s) of every response record of an accepted request.
    response_times: list[tuple[int, float]] = field(default_factory=list)
    #: What ``ordering.check_turn_order`` found, one line per pair of turns (or turn).
    order_violations: list[str] = field(default_factory=list)
    #: Its findings by kind (``ordering.ORDER_KINDS``).
    order_counts: dict[str, int] = field(default_factory=dict)
    #: Requests answered 503 that ``ordering.check_refused`` looked at; ``None``: not checked.
    refused: int | None = None
    #: Of those, the ones the pipeline processed anyway (a call or a non-rejected answer).
    refused_processed: list[str] = field(default_factory=list)
    #: Of those, the ones answered ``rejected`` without being run (reported, not failed).
    refused_rejected: int = 0

    @property
    def violations(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} lost (e.g. {self.lost[:3]})")
        if self.conflicting:
            found.append(f"{len(self.conflicting)} conflicting (e.g. {self.conflicting[:3]})")
        if self.non_terminal:
            found.append(f"non-terminal responses: {self.non_terminal[:3]}")
        if self.out_of_order:
            found.append(f"{len(self.out_of_order)} conversations out of order")
        if self.wrong:
            found.append(f"{len(self.wrong)} wrong answers (e.g. {self.wrong[:2]})")
        if self.order_violations:
            counts = {k: n for k, n in self.order_counts.items() if n}
            found.append(
                f"{len(self.order_violations)} turns out of order {counts} "
                f"(e.g. {self.order_violations[:3]})"
            )
        if self.refused_processed:
            found.append(
                f"{len(self.refused_processed)} of {self.refused} requests answered 503 were "
                f"processed (e.g. {self.refused_processed[:3]})"
            )
        for topic, ids in self.side_conflicts.items():
            if ids:
                found.append(f"{topic}: {len(ids)} ids with differing events (e.g. {ids[:2]})")
        if self.exactly_once:
            if self.duplicates:
                found.append(f"exactly_once: {self.duplicates} duplicate response copies")
            for topic, copies in self.side_duplicates.items():
                if copies:
                    found.append(f"exactly_once: {copies} duplicate copies on {topic}")
        return found

    @property
    def ok(self) -> bool:
        return not self.violations

    def recovery(self, fault_start: float, fault_end: float) -> tuple[float | None, float | None]:
        """``(recovery_s, last_response_s)`` for a fault from ``fault_start`` to
        ``fault_end`` (wall-clock seconds).

        ``recovery_s``: how long after the fault ended every partition that still had work
        answered again (the slowest partition's first response after the fault, minus the
        fault's end). ``last_response_s``: from the fault's start to the last response.
        """
        after: dict[int, float] = {}
        last = None
        for partition, ts in self.response_times:
            last = ts if last is None else max(last, ts)
            if ts > fault_end and (partition not in after or ts < after[partition]):
                after[partition] = ts
        recovery = max((ts - fault_end for ts in after.values()), default=None)
        last_s = None if last is None else max(0.0, last - fault_start)
        return recovery, last_s

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "conflicting": len(self.conflicting),
            "out_of_order": len(self.out_of_order),
            "wrong": len(self.wrong),
            "not_completed": len(self.not_completed),
            "side_duplicates": self.side_duplicates,
            "side_conflicts": {t: len(v) for t, v in self.side_conflicts.items()},
            "dead_letters": self.dead_letters,
            **({"turn_order": self.order_counts} if self.order_counts else {}),
            **(
                {
                    "refused": self.refused,
                    "refused_processed": len(self.refused_processed),
                    "refused_rejected": self.refused_rejected,
                }
                if self.refused is not None
                else {}
            ),
        }

    def describe(self) -> str:
        lines = [json.dumps(self.summary())]
        lines += [f"- {v}" for v in self.violations]
        lines += [f"  not completed: {n}" for n in self.not_completed[:5]]
        lines += [f"  copies: {c}" for c in self.copy_samples[:12]]
        return "\n".join(lines)


async def verify(
    reader: Reader,
    catalog: Catalog,
    turns: list[Turn],
    *,
    exactly_once: bool = False,
    answers: bool = True,
    responses: list[Record] | None = None,
) -> ChaosReport:
    """Read every topic (read_committed) and check the invariants for ``turns``.

    ``responses``: the response records if the caller already read them (read_committed).
    ``answers=False`` skips comparing answer texts (for requests that are not
    :func:`tests.workload.make_turns` turns).
    """
    if responses is None:
        responses = await reader.read(catalog.name(Topic.AGENT_RESPONSE), read_committed=True)
    base = check(turns, responses, answers=answers)
    report = ChaosReport(
        requests=base.requests,
        exactly_once=exactly_once,
        lost=base.lost,
        conflicting=base.conflicting,
        duplicates=base.duplicate_copies,
        out_of_order=base.out_of_order,
        not_completed=base.not_completed,
    )
    wanted = {t.request_id: t for t in turns}
    first: dict[str, AgentResponse] = {}
    failed_convs = set()
    for record in responses:
        event = _decode(record)
        if not isinstance(event, AgentResponse) or event.request_id not in wanted:
            continue
        first.setdefault(event.request_id, event)
        report.response_times.append((record.partition, record.timestamp_ms / 1000))
        if event.data.status not in TERMINAL:
            report.non_terminal.append(f"{event.request_id}: {event.data.status}")
        if event.data.status != "completed":
            failed_convs.add(wanted[event.request_id].conversation_id)
    if answers:
        # A wrong answer counts only where every turn of its conversation completed.
        for rid, event in first.items():
            turn = wanted[rid]
            if event.data.status != "completed" or turn.conversation_id in failed_convs:
                continue
            if turn.expect not in (event.data.text or ""):
                report.wrong.append(f"{turn.text!r} -> {event.data.text!r} (want {turn.expect})")
    side: tuple[LogicalTopic, ...] = (*SIDE_TOPICS, *(Inbox(a) for a in catalog.agents))
    for topic in side:
        records = await reader.read(catalog.name(topic), read_committed=True)
        conflicts, copies = copies_of(records)
        report.side_conflicts[topic.value] = conflicts
        report.side_duplicates[topic.value] = copies
        report.copy_samples += _copy_samples(topic.value, records)
    for topic in catalog.topics():
        dlq = catalog.name(topic, Kind.DLQ)
        report.dead_letters[topic.value] = len(await reader.read(dlq, read_committed=True))
    return report


def _decode(record: Record) -> Any:
    try:
        return decode(record.value)
    except SchemaError:
        return None


def copies_of(records: Sequence[Record]) -> tuple[list[str], int]:
    """Event ids whose events differ (ignoring ``time``) and copies beyond the first."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        event = _decode(record)
        if event is None:
            continue
        body = event.model_dump(mode="json")
        body.pop("time", None)
        seen[event.id].append(body)
    conflicts = [i for i, bodies in seen.items() if any(b != bodies[0] for b in bodies[1:])]
    copies = sum(len(bodies) - 1 for bodies in seen.values())
    return conflicts, copies


def _copy_samples(topic: str, records: list[Record], limit: int = 4) -> list[str]:
    """``topic id: p<partition>@<offset> <ms>, ...`` for the first ``limit`` copied ids."""
    where: dict[str, list[str]] = defaultdict(list)
    for record in records:
        event = _decode(record)
        if event is not None:
            where[event.id].append(f"p{record.partition}@{record.offset} {record.timestamp_ms}")
    copied = [(i, places) for i, places in where.items() if len(places) > 1]
    return [f"{topic} {i}: {', '.join(places)}" for i, places in copied[:limit]]
