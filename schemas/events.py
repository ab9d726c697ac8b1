"""The v1 event types and their payloads.

One class per event type. The ``type`` string carries the version (``….v1``); a breaking
change is a new class with a new ``.v2`` type, registered beside the old one so that workers
read both during a migration (see docs/adr/0003-envelope-and-evolution.md).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from agentstream.schemas.envelope import Envelope, Payload
from pydantic import Field, JsonValue, field_validator

__all__ = [
    "AGENT_NAME_PATTERN",
    "ALL_TENANTS",
    "DEFAULT_AGENT",
    "EVENT_TYPES",
    "LATENCY_BOUNDS_MS",
    "TERMINAL_STATUSES",
    "AgentName",
    "AgentResponse",
    "AgentResponseData",
    "AgentStats",
    "AgentStatsData",
    "AgentTask",
    "AgentTaskData",
    "AgentTaskKind",
    "LatencyStats",
    "MemoryCall",
    "ResponseStatus",
    "StatsCounts",
    "StatsDimension",
    "SubRunParent",
    "ToolCall",
    "ToolCallData",
    "ToolResult",
    "ToolResultData",
    "Usage",
    "UserRequest",
    "UserRequestData",
    "merge_stats",
    "stats_key",
]

_TEXT_MAX = 1_000_000

#: What an agent name may be: it is part of topic names (``agent.<name>``), consumer group
#: ids and metric labels, so it is short, lower case and plain.
AGENT_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"

#: The one agent of the built-in app (a deployment that declares none).
DEFAULT_AGENT = "assistant"

AgentName = Annotated[
    str,
    Field(
        pattern=AGENT_NAME_PATTERN,
        max_length=32,
        description="A declared agent: lower case letters, digits, '_' and '-', at most 32.",
        examples=["triage"],
    ),
]

ResponseStatus = Literal["completed", "failed", "timed_out", "rejected"]
TERMINAL_STATUSES: tuple[ResponseStatus, ...] = ("completed", "failed", "timed_out", "rejected")


class UserRequestData(Payload):
    """What a user asked. Published by the ingress or straight to Kafka by upstream systems."""

    text: str = Field(min_length=1, max_length=_TEXT_MAX, examples=["What is 12 * 7?"])
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Whose long-term memory to use; defaults to the tenant's shared memory.",
    )
    model: str | None = Field(
        default=None,
        max_length=200,
        description="Ask for a model by name or route ('small', 'large'); default: routing rule.",
    )
    max_steps: int | None = Field(default=None, ge=1, le=64)
    deadline: datetime | None = Field(
        default=None, description="After this instant the request ends as timed_out."
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    agent: AgentName | None = Field(
        default=None,
        description="The declared agent to answer; default: the agent that answered the "
        "conversation's last turn, else the app's default agent (ADR 23).",
    )


class ToolCallData(Payload):
    """One call of one tool, asked by the model at ``step`` of a request."""

    call_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    tool: str = Field(min_length=1, max_length=200)
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    user: str | None = Field(
        default=None,
        max_length=200,
        description="Whom the call acts for (memory scope); set by the agent, never the model.",
    )
    reply_to: AgentName | None = Field(
        default=None,
        description="The agent whose input topic (agent.<name>) gets the result; absent: "
        "the tool_result topic.",
    )
    run_id: str | None = Field(
        default=None,
        max_length=200,
        description="The run that asked, when it is a sub-run (an agent called as a tool); "
        "absent: the request's own run.",
    )


class ToolResultData(Payload):
    """The outcome of one tool call. ``ok`` false carries ``error`` and ``error_class``."""

    call_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    tool: str = Field(min_length=1, max_length=200)
    ok: bool
    output: JsonValue = None
    error: str | None = None
    error_class: str | None = None
    duration_ms: float | None = None
    reply_to: AgentName | None = Field(
        default=None, description="Copied from the call: the agent it is addressed to."
    )
    run_id: str | None = Field(default=None, max_length=200, description="Copied from the call.")
    usage: Usage | None = Field(
        default=None,
        description="Tokens and cost of the call, when it was a sub-run (an agent called as "
        "a tool): they roll up into the caller's usage.",
    )


class Usage(Payload):
    """Tokens and cost of one request, summed over every model call it made."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    cached_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 10),
            model_calls=self.model_calls + other.model_calls,
            cached_calls=self.cached_calls + other.cached_calls,
        )


class AgentResponseData(Payload):
    """The one terminal answer of a request."""

    status: ResponseStatus
    text: str | None = None
    error: str | None = None
    error_class: str | None = None
    steps: int = 0
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    tool_calls: list[str] = Field(
        default_factory=list, description="Names of the tools called, in order."
    )
    agent: str | None = Field(
        default=None,
        max_length=32,
        description="The declared agent that answered (after handoffs, the last one).",
    )
    output: JsonValue = Field(
        default=None,
        description="The answer as JSON, validated against the agent's output type, when "
        "the agent declares one.",
    )
    handoffs: list[str] = Field(
        default_factory=list,
        description="The agents the request went through before the one that answered.",
    )


AgentTaskKind = Literal["turn", "handoff", "subrun"]


class SubRunParent(Payload):
    """Where a sub-run's answer goes: the calling run, agent, step and tool call."""

    run_id: str = Field(min_length=1, max_length=200)
    agent: AgentName
    call_id: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=0)
    tool: str = Field(min_length=1, max_length=200)


class AgentTaskData(Payload):
    """Work for one declared agent, on its input topic ``agent.<name>``.

    ``turn``: the router's forward of a conversation's next request; ``handoff``: another
    agent hands the request over (the run state travels in the store); ``subrun``: another
    agent calls this one as a tool, ``request.text`` being its input."""

    agent: AgentName
    kind: AgentTaskKind
    request: UserRequestData
    requested_at: datetime = Field(description="When the user request was made.")
    from_agent: AgentName | None = None
    reason: str | None = Field(default=None, max_length=2000)
    run_id: str | None = Field(
        default=None, max_length=200, description="The sub-run's id (derived from the call)."
    )
    parent: SubRunParent | None = None
    chain: list[str] = Field(
        default_factory=list,
        description="The agents from the request's root run down to the caller (sub-runs).",
    )
    deadline: datetime | None = Field(
        default=None, description="A sub-run's deadline: its caller's, at most."
    )


class UserRequest(Envelope[UserRequestData]):
    TYPE: ClassVar[str] = "agentstream.user_request.v1"
    type: Literal["agentstream.user_request.v1"] = "agentstream.user_request.v1"


class ToolCall(Envelope[ToolCallData]):
    TYPE: ClassVar[str] = "agentstream.tool_call.v1"
    type: Literal["agentstream.tool_call.v1"] = "agentstream.tool_call.v1"


class MemoryCall(Envelope[ToolCallData]):
    """A call of a memory tool (``remember``, ``recall``), served by the memory worker."""

    TYPE: ClassVar[str] = "agentstream.memory_call.v1"
    type: Literal["agentstream.memory_call.v1"] = "agentstream.memory_call.v1"


class ToolResult(Envelope[ToolResultData]):
    TYPE: ClassVar[str] = "agentstream.tool_result.v1"
    type: Literal["agentstream.tool_result.v1"] = "agentstream.tool_result.v1"


class AgentTask(Envelope[AgentTaskData]):
    """A turn, a handoff or a sub-run for one agent; see :class:`AgentTaskData`."""

    TYPE: ClassVar[str] = "agentstream.agent_task.v1"
    type: Literal["agentstream.agent_task.v1"] = "agentstream.agent_task.v1"


class AgentResponse(Envelope[AgentResponseData]):
    TYPE: ClassVar[str] = "agentstream.agent_response.v1"
    type: Literal["agentstream.agent_response.v1"] = "agentstream.agent_response.v1"


# -- live stats (agent_stats) ---------------------------------------------------------------

StatsDimension = Literal["tenant", "tool", "model", "agent"]

#: The envelope ``tenant`` of stats rows that span every tenant (per tool, per model).
ALL_TENANTS = "*"

#: Upper bounds (milliseconds, inclusive) of the latency histogram's buckets; one more
#: bucket counts everything above the last bound. Partials are merged bucket by bucket, so
#: these bounds are part of the v1 contract (every event carries them too, in ``bounds_ms``).
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000,
    60_000, 120_000, 300_000,
)  # fmt: skip


def _quantile(
    bounds: Sequence[float], buckets: Sequence[int], low: float, high: float, q: float
) -> float:
    """The ``q`` quantile estimated from bucket counts: linear within the bucket that holds
    it, as Prometheus's ``histogram_quantile`` does, within the smallest and largest sample
    (``low``, ``high``), so one sample, or samples all in one bucket, are not smeared."""
    rank = q * sum(buckets)
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lower = max(low, bounds[i - 1] if i > 0 else 0.0)
            upper = min(high, bounds[i] if i < len(bounds) else high)
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return high


class LatencyStats(Payload):
    """Latencies of one window: a fixed-bucket histogram and the percentiles it implies.

    ``buckets[i]`` counts the latencies in (``bounds_ms[i-1]``, ``bounds_ms[i]``], the last
    bucket those above ``bounds_ms[-1]``. Percentiles are estimated from the buckets, so a
    merge of partials (buckets summed) gives the estimate one instance seeing everything
    would have given.
    """

    count: int = Field(default=0, ge=0)
    sum_ms: float = Field(default=0.0, ge=0)
    min_ms: float | None = Field(default=None, ge=0)
    max_ms: float | None = Field(default=None, ge=0)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    bounds_ms: list[float] = Field(default_factory=lambda: list(LATENCY_BOUNDS_MS))
    buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    @classmethod
    def of(cls, samples_ms: Iterable[float]) -> LatencyStats:
        """The histogram of ``samples_ms`` on the fixed bounds."""
        values = [max(0.0, sample) for sample in samples_ms]
        buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        for value in values:
            buckets[bisect_left(LATENCY_BOUNDS_MS, value)] += 1
        low, high = (min(values), max(values)) if values else (None, None)
        return cls.from_buckets(LATENCY_BOUNDS_MS, buckets, sum(values), low, high)

    @classmethod
    def from_buckets(
        cls,
        bounds: Sequence[float],
        buckets: Sequence[int],
        sum_ms: float,
        min_ms: float | None,
        max_ms: float | None,
    ) -> LatencyStats:
        """Counts, sum, min and max as given, percentiles recomputed from the buckets."""
        if len(buckets) != len(bounds) + 1:
            raise ValueError("a histogram has one bucket more than it has bounds")
        count = sum(buckets)
        if not count or min_ms is None or max_ms is None:
            return cls(bounds_ms=list(bounds), buckets=list(buckets))
        p50, p95, p99 = (
            round(_quantile(bounds, buckets, min_ms, max_ms, q), 3) for q in (0.5, 0.95, 0.99)
        )
        return cls(
            count=count,
            sum_ms=round(sum_ms, 3),
            min_ms=round(min_ms, 3),
            max_ms=round(max_ms, 3),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            bounds_ms=list(bounds),
            buckets=list(buckets),
        )


class StatsCounts(Payload):
    """What ended in a window. Requests count in the ``tenant`` and ``model`` rows, tool
    calls in the ``tenant`` and ``tool`` rows."""

    completed: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    timed_out: int = Field(default=0, ge=0)
    rejected: int = Field(default=0, ge=0)
    tool_ok: int = Field(default=0, ge=0)
    tool_error: int = Field(default=0, ge=0)
    late: int = Field(
        default=0,
        ge=0,
        description="Of the above, how many happened in an earlier window that was already "
        "closed when they were processed (counted here rather than dropped).",
    )

    def __add__(self, other: StatsCounts) -> StatsCounts:
        fields = type(self).model_fields
        return StatsCounts(**{f: getattr(self, f) + getattr(other, f) for f in fields})


class AgentStatsData(Payload):
    """One partial of the live stats: what one set of partitions saw in one window for one
    value of one dimension. Partials of the same window, dimension and value add up
    (:func:`merge_stats`); deduplicate them by event id first."""

    window_start: datetime = Field(description="RFC 3339, UTC, inclusive.")
    window_end: datetime = Field(description="RFC 3339, UTC, exclusive.")
    dimension: StatsDimension
    value: str = Field(
        min_length=1, max_length=200, description="The tenant, tool, model or agent name."
    )
    counts: StatsCounts = Field(default_factory=StatsCounts)
    errors: int = Field(
        default=0, ge=0, description="Requests failed or timed out, plus tool calls not ok."
    )
    latency: LatencyStats = Field(
        default_factory=LatencyStats,
        description="Request to response (tenant and model rows) or tool call duration (tool "
        "rows); requests whose user_request the stats worker never saw have no sample.",
    )
    usage: Usage = Field(default_factory=Usage, description="Tokens and cost of the requests.")
    instances: list[str] = Field(default_factory=list, description="Who emitted (merged).")
    partitions: list[int] = Field(
        default_factory=list, description="The input partitions this partial covers."
    )

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AgentStats(Envelope[AgentStatsData]):
    """Live stats for dashboards: per window, one event per (dimension value, partitions).

    ``request_id``, ``conversation_id`` and the key are :func:`stats_key` (so partials of
    one row share a partition); ``tenant`` is the tenant of a tenant row, ``*`` otherwise.
    """

    TYPE: ClassVar[str] = "agentstream.agent_stats.v1"
    type: Literal["agentstream.agent_stats.v1"] = "agentstream.agent_stats.v1"


def stats_key(window_start: datetime, dimension: StatsDimension, value: str) -> str:
    """``stats:<window_start>:<dimension>:<value>``, the correlation ids and key of a stats
    row; a value too long for an id is replaced by ``#`` and its SHA-256 (32 hex digits)."""
    start = window_start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = f"stats:{start}:{dimension}:{value}"
    if len(key) > 200:
        key = f"stats:{start}:{dimension}:#{hashlib.sha256(value.encode()).hexdigest()[:32]}"
    return key


def merge_stats(parts: Sequence[AgentStatsData]) -> AgentStatsData:
    """One row from partials: counts, errors, usage and histogram buckets summed, the least
    min and the largest max, percentiles recomputed, partitions and instances united, the
    window spanning all.

    Raises ``ValueError`` for no parts, parts of different rows (dimension, value) or
    bucket bounds, and for two parts of the same window sharing a partition: that is one
    partial twice, so deduplicate by event id before merging.
    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    seen: set[tuple[datetime, int]] = set()
    for part in parts:
        if (part.dimension, part.value) != (first.dimension, first.value):
            raise ValueError("partials of different rows (dimension, value) do not merge")
        if part.latency.bounds_ms != first.latency.bounds_ms:
            raise ValueError("partials with different histogram bounds do not merge")
        for partition in part.partitions:
            if (part.window_start, partition) in seen:
                raise ValueError(f"partition {partition} twice in one window: deduplicate first")
            seen.add((part.window_start, partition))
    minima = [p.latency.min_ms for p in parts if p.latency.min_ms is not None]
    maxima = [p.latency.max_ms for p in parts if p.latency.max_ms is not None]
    counts, usage = StatsCounts(), Usage()
    for part in parts:
        counts, usage = counts + part.counts, usage + part.usage
    return AgentStatsData(
        window_start=min(p.window_start for p in parts),
        window_end=max(p.window_end for p in parts),
        dimension=first.dimension,
        value=first.value,
        counts=counts,
        errors=sum(p.errors for p in parts),
        latency=LatencyStats.from_buckets(
            first.latency.bounds_ms,
            [sum(col) for col in zip(*(p.latency.buckets for p in parts), strict=True)],
            sum(p.latency.sum_ms for p in parts),
            min(minima) if minima else None,
            max(maxima) if maxima else None,
        ),
        usage=usage,
        instances=sorted({i for p in parts for i in p.instances}),
        partitions=sorted({n for p in parts for n in p.partitions}),
    )


#: Every event type this version of agentstream reads, by its ``type`` string.
EVENT_TYPES: dict[str, type[Envelope[Any]]] = {
    cls.TYPE: cls
    for cls in (
        UserRequest,
        ToolCall,
        MemoryCall,
        ToolResult,
        AgentResponse,
        AgentStats,
        AgentTask,
    )
}
