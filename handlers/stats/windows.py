"""The windows of the stats worker, without I/O: the fact filed for each request and tool
call, the store keys it is filed under, and how a window's facts add up to rows.

A fact is stored as its JSON (:func:`member_of`), a member of the index of its partition and
window, so filing one is an index addition with no version check; closing a window reads
the members back and adds them up per dimension value (:func:`aggregate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agentstream.schemas import ResponseStatus, StatsDimension, Usage
from pydantic import BaseModel

__all__ = ["Row", "StatsFact", "WindowKeys", "aggregate", "latency_ms", "member_of"]


class StatsFact(BaseModel):
    """One request or tool call as filed under its window; ``id`` (its event's) keeps the
    index members distinct."""

    id: str
    kind: Literal["request", "tool"]
    tenant: str
    status: ResponseStatus | None = None
    model: str | None = None
    #: The declared agent that answered (a request's, from ``agent_response.data.agent``).
    agent: str | None = None
    tool: str | None = None
    ok: bool | None = None
    latency_ms: float | None = None
    usage: Usage | None = None
    late: bool = False


def member_of(fact: StatsFact) -> str:
    return fact.model_dump_json(exclude_none=True, exclude_defaults=True)


def latency_ms(start: datetime, end: datetime) -> float:
    return round(max(0.0, (end - start).total_seconds() * 1000), 3)


@dataclass(frozen=True)
class WindowKeys:
    """The store keys of one partition's windows."""

    namespace: str
    partition: int

    @property
    def windows(self) -> str:
        return f"{self.namespace}:stats:{self.partition}:windows"

    @property
    def sealed(self) -> str:
        return f"{self.namespace}:stats:{self.partition}:sealed"

    def facts(self, start: int) -> str:
        return f"{self.namespace}:stats:{self.partition}:facts:{start}"


@dataclass
class Row:
    """One (dimension, value) of a window while it is being added up."""

    counts: dict[str, int] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def add(self, fact: StatsFact, *, timing: bool) -> None:
        if fact.kind == "request":
            outcome = str(fact.status)
        else:
            outcome = "tool_ok" if fact.ok else "tool_error"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if fact.late:
            self.counts["late"] = self.counts.get("late", 0) + 1
        if timing and fact.latency_ms is not None:
            self.samples.append(fact.latency_ms)
        if fact.kind == "request" and fact.usage is not None:
            self.usage = self.usage + fact.usage


def aggregate(facts: Iterable[StatsFact]) -> dict[tuple[StatsDimension, str], Row]:
    """The rows of a window's facts: a request counts for its tenant, its model and the agent
    that answered it (with its latency, tokens and cost), a tool call for its tenant and its
    tool (with its duration in the tool row only). A request that never reached a model has
    no model row; one no agent answered (the router refused it) has no agent row."""
    rows: dict[tuple[StatsDimension, str], Row] = {}

    def row(dimension: StatsDimension, value: str) -> Row:
        return rows.setdefault((dimension, value[:200]), Row())

    for fact in facts:
        if fact.kind == "request":
            row("tenant", fact.tenant).add(fact, timing=True)
            if fact.model:
                row("model", fact.model).add(fact, timing=True)
            if fact.agent:
                row("agent", fact.agent).add(fact, timing=True)
        else:
            row("tenant", fact.tenant).add(fact, timing=False)
            row("tool", fact.tool or "unknown").add(fact, timing=True)
    return rows
