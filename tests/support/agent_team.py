"""A checkable workload for the support team of declared agents (``examples.support``).

Each conversation follows one of three scripts whose every turn is answered by a known
agent, so a test can check the routing rules besides the answers: handoffs (triage hands
billing and quote matters on), agents as tools (triage asks ``math``), structured output
(``quote``), requests that name their agent, and the post-handoff rule (a turn that names
no agent is answered by the agent that answered the conversation's last turn).

:class:`TeamTurn` is a :class:`tests.workload.Turn`, so :func:`tests.workload.check`,
:func:`tests.chaos.invariants.verify` and :func:`tests.chaos.ordering.check_turn_order`
take these turns as they are; :func:`check_team` adds what is particular to a team: who
answered, which handoffs it took, that each agent-tool call ran one sub-run whose result
was used once, and that no event id on an agent's input topic carries two different events.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentstream.schemas import (
    AgentResponse,
    AgentTask,
    SchemaError,
    ToolResult,
    UserRequest,
    UserRequestData,
    decode,
)
from agentstream.topics import Catalog, Kind, Record

from tests.chaos.cluster import Cluster
from tests.chaos.invariants import Reader, copies_of
from tests.workload import Turn

__all__ = [
    "APP",
    "ARITHMETIC",
    "MATH_SAYS",
    "SCRIPTS",
    "TeamCluster",
    "TeamReport",
    "TeamTurn",
    "check_team",
    "make_team_turns",
    "refusals",
    "responses_by_request",
]

APP = "examples.support"
#: How triage's answer starts when it used the math agent's result (the offline model).
MATH_SAYS = "The math agent says:"
SCRIPTS = ("billing", "math", "quote")
#: Not among the default scripts: five sums and products triage asks math (five sub-runs).
ARITHMETIC = "arithmetic"


@dataclass(frozen=True)
class TeamTurn(Turn):
    #: The agent the request names (``None``: the router picks it).
    agent: str | None = None
    #: The agent that must answer it.
    answered_by: str = "triage"
    #: The agents the request must have been handed from, in order.
    handoffs: tuple[str, ...] = ()
    #: The status its answer must have.
    status: str = "completed"
    #: Whether triage answers it with the math agent's result (one sub-run).
    via_math: bool = False

    def event(self) -> UserRequest:
        return UserRequest(
            source="workload",
            request_id=self.request_id,
            conversation_id=self.conversation_id,
            data=UserRequestData(
                text=self.text, user=f"user-{self.conversation_id}", agent=self.agent
            ),
        )


def _script(kind: str, c: int, seed: int) -> list[dict[str, Any]]:
    """The turns of conversation ``c`` following script ``kind``."""
    a, b, k = 3 + c, 11 + 2 * c + seed, 5 + c % 9
    seats = 2 + c % 40
    if kind == "billing":
        return [
            # triage hands the request to billing, which looks the invoice up and answers
            {
                "text": "I was charged twice for invoice INV-1042, I want a refund",
                "expect": "paid twice",
                "answered_by": "billing",
                "handoffs": ("triage",),
            },
            # no agent named: billing answered the last turn, so billing answers this one
            {
                "text": "What is the status of invoice INV-2001?",
                "expect": "INV-2001",
                "answered_by": "billing",
            },
            # naming triage takes the conversation back; triage asks math (a sub-run)
            {
                "text": f"What is {a} + {b}?",
                "expect": f"{a + b}",
                "agent": "triage",
                "via_math": True,
            },
            {"text": f"What is 7 * {k}?", "expect": f"{7 * k}", "via_math": True},
            {
                "text": f"I need a quote for {seats} seats on the pro plan",
                "expect": f'"seats": {seats}',
                "answered_by": "quote",
                "handoffs": ("triage",),
            },
        ]
    if kind == ARITHMETIC:
        return [
            {"text": f"What is {a + i} + {b * i}?", "expect": f"{a + i + b * i}", "via_math": True}
            if i % 2 == 0
            else {"text": f"What is {k + i} * 7?", "expect": f"{(k + i) * 7}", "via_math": True}
            for i in range(5)
        ]
    if kind == "math":
        return [
            {
                "text": f"What is {a} * {k}?",
                "expect": f"{a * k}",
                "agent": "math",
                "answered_by": "math",
            },
            {"text": f"What is {a} + {b}?", "expect": f"{a + b}", "answered_by": "math"},
            {
                "text": "Is invoice INV-2001 paid?",
                "expect": "INV-2001",
                "agent": "triage",
                "answered_by": "billing",
                "handoffs": ("triage",),
            },
            {"text": "And invoice INV-1042?", "expect": "INV-1042", "answered_by": "billing"},
            {
                "text": "Hello, what time is it in Paris?",
                "expect": "Paris",
                "agent": "triage",
            },
        ]
    return [
        {
            "text": f"I need a quote for {seats} seats on the pro plan",
            "expect": f'"seats": {seats}',
            "answered_by": "quote",
            "handoffs": ("triage",),
        },
        {
            "text": f"I need a quote for {seats + 1} seats on the enterprise plan",
            "expect": '"plan": "enterprise"',
            "answered_by": "quote",
        },
        {"text": f"What is {b} + {k}?", "expect": f"{b + k}", "agent": "triage", "via_math": True},
        {"text": f"Remember that my number is {100 + c}.", "expect": f"{100 + c}"},
        {
            "text": "I was charged twice for invoice INV-1042",
            "expect": "INV-1042",
            "answered_by": "billing",
            "handoffs": ("triage",),
        },
    ]


def make_team_turns(
    conversations: int, *, scripts: Sequence[str] = SCRIPTS, seed: int = 0
) -> list[TeamTurn]:
    """Five turns per conversation, the scripts taken in turn, interleaved across
    conversations in send order (every conversation's first turn, then every second...)."""
    run = uuid.uuid4().hex[:6]
    per_conv: list[list[TeamTurn]] = []
    for c in range(conversations):
        kind = scripts[c % len(scripts)]
        conv = f"team-{run}-{kind}-{c}"
        per_conv.append(
            [
                TeamTurn(request_id=f"req-{run}-{c}-{i}", conversation_id=conv, index=i, **spec)
                for i, spec in enumerate(_script(kind, c, seed))
            ]
        )
    return [conv[i] for i in range(5) for conv in per_conv]


def refusals(run: str | None = None) -> list[TeamTurn]:
    """Requests that must be refused, each in the middle of its conversation: one naming an
    undeclared agent (the router answers ``rejected``) and one carrying a card number (the
    input guardrail of billing, which has the conversation then, answers ``rejected``). The
    turns around them must be answered, and in order: a refusal does not overtake the turn
    before it."""
    run = run or uuid.uuid4().hex[:6]
    turns = []
    for name, refused in (
        ("unknown", {"text": "Hello, can you help me?", "agent": "nobody", "answered_by": ""}),
        # after billing's turn, billing's own guardrail refuses it
        (
            "card",
            {"text": "Please charge my card 4111 1111 1111 1111 again", "answered_by": "billing"},
        ),
    ):
        conv = f"refuse-{run}-{name}"
        turns.append(
            [
                TeamTurn(
                    request_id=f"req-{run}-{name}-0",
                    conversation_id=conv,
                    index=0,
                    text="I was charged twice for invoice INV-1042, I want a refund",
                    expect="paid twice",
                    answered_by="billing",
                    handoffs=("triage",),
                ),
                TeamTurn(
                    request_id=f"req-{run}-{name}-1",
                    conversation_id=conv,
                    index=1,
                    expect="",
                    status="rejected",
                    **refused,  # type: ignore[arg-type]
                ),
                TeamTurn(
                    request_id=f"req-{run}-{name}-2",
                    conversation_id=conv,
                    index=2,
                    text="What time is it in Tokyo?",
                    expect="Tokyo",
                    agent="triage",
                ),
            ]
        )
    return [conv[i] for i in range(3) for conv in turns]


@dataclass
class TeamReport:
    """What :func:`check_team` found; ``ok`` when nothing."""

    #: Answers by another agent than the turn's, or with other handoffs or status.
    misrouted: list[str] = field(default_factory=list)
    #: Agent-tool calls (request, call id) that got more than one sub-run id.
    extra_subruns: list[str] = field(default_factory=list)
    #: Agent-tool calls whose result the caller's input topic got in two different events.
    conflicting_results: list[str] = field(default_factory=list)
    #: Answers that used the math agent's result other than once.
    misused_results: list[str] = field(default_factory=list)
    #: Event ids on an agent's input topic carried by two events that differ.
    inbox_conflicts: dict[str, list[str]] = field(default_factory=dict)
    #: Copies beyond the first per agent input topic (allowed in at_least_once mode).
    inbox_copies: dict[str, int] = field(default_factory=dict)
    #: Records on each agent's dead-letter topic.
    inbox_dead_letters: dict[str, int] = field(default_factory=dict)
    #: Sub-runs started per agent (distinct run ids), and answers per agent.
    subruns: dict[str, int] = field(default_factory=dict)
    answered_by: dict[str, int] = field(default_factory=dict)
    #: Per shape of math-using turn (steps), the set of model calls its usage counts: one
    #: value each, or a sub-run's usage was rolled up twice (or not at all).
    rolled_up_calls: dict[int, set[int]] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        found = []
        for name in ("misrouted", "extra_subruns", "conflicting_results", "misused_results"):
            items = getattr(self, name)
            if items:
                found.append(f"{len(items)} {name.replace('_', ' ')} (e.g. {items[:3]})")
        for topic, ids in self.inbox_conflicts.items():
            if ids:
                found.append(f"{topic}: {len(ids)} ids with differing events (e.g. {ids[:2]})")
        for steps, calls in self.rolled_up_calls.items():
            if len(calls) > 1:
                found.append(f"math-using answers of {steps} steps count {sorted(calls)} calls")
        return found

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> dict[str, Any]:
        return {
            "answered_by": self.answered_by,
            "subruns": self.subruns,
            "inbox_copies": self.inbox_copies,
            "inbox_dead_letters": self.inbox_dead_letters,
        }

    def describe(self) -> str:
        return "\n".join([json.dumps(self.summary()), *(f"- {v}" for v in self.violations)])


def _decode(record: Record) -> Any:
    try:
        return decode(record.value)
    except SchemaError:
        return None


async def check_team(
    reader: Reader,
    catalog: Catalog,
    turns: Sequence[TeamTurn],
    *,
    responses: list[Record],
) -> TeamReport:
    """The team's own rules, on the first response of each turn and the agents' topics."""
    report = TeamReport()
    wanted = {t.request_id: t for t in turns}
    first: dict[str, AgentResponse] = {}
    for record in responses:
        event = _decode(record)
        if isinstance(event, AgentResponse) and event.request_id in wanted:
            first.setdefault(event.request_id, event)
    for rid, response in first.items():
        turn, d = wanted[rid], response.data
        who = d.agent or ""
        report.answered_by[who or "router"] = report.answered_by.get(who or "router", 0) + 1
        if (who, tuple(d.handoffs), d.status) != (turn.answered_by, turn.handoffs, turn.status):
            report.misrouted.append(
                f"{turn.text!r} (agent {turn.agent}): answered by {who or None} "
                f"{d.status} after {d.handoffs}, want {turn.answered_by or None} {turn.status} "
                f"after {list(turn.handoffs)} [{rid}]"
            )
        if turn.via_math and d.status == "completed":
            uses = (d.text or "").count(MATH_SAYS)
            if uses != 1:
                report.misused_results.append(f"{rid}: {uses} uses in {d.text!r}")
            calls = d.usage.model_calls + d.usage.cached_calls
            report.rolled_up_calls.setdefault(d.steps, set()).add(calls)
    # Sub-runs: the tasks on each callee's topic, the results on each caller's.
    runs_of_call: dict[tuple[str, str], set[str]] = defaultdict(set)
    results_of_call: dict[tuple[str, str], set[str]] = defaultdict(set)
    for agent in catalog.agents:
        records = await reader.read(catalog.inbox(agent), read_committed=True)
        started: set[str] = set()
        for record in records:
            event = _decode(record)
            if isinstance(event, AgentTask) and event.data.kind == "subrun":
                parent = event.data.parent
                call = parent.call_id if parent is not None else "?"
                runs_of_call[(event.request_id, call)].add(event.data.run_id or "")
                started.add(event.data.run_id or "")
            if isinstance(event, ToolResult) and event.data.usage is not None:
                content = json.dumps(
                    [event.data.ok, event.data.output, event.data.error], sort_keys=True
                )
                results_of_call[(event.request_id, event.data.call_id)].add(content)
        topic = catalog.inbox(agent)
        report.inbox_conflicts[topic], report.inbox_copies[topic] = copies_of(records)
        dlq = catalog.inbox(agent, Kind.DLQ)
        report.inbox_dead_letters[topic] = len(await reader.read(dlq, read_committed=True))
        if started:
            report.subruns[agent] = len(started)
    report.extra_subruns = [
        f"{r} {c}: {sorted(ids)}" for (r, c), ids in runs_of_call.items() if len(ids) > 1
    ]
    report.conflicting_results = [
        f"{r} {c}: {len(s)} results" for (r, c), s in results_of_call.items() if len(s) > 1
    ]
    return report


def responses_by_request(records: Sequence[Record]) -> dict[str, list[AgentResponse]]:
    out: dict[str, list[AgentResponse]] = defaultdict(list)
    for record in records:
        event = _decode(record)
        if isinstance(event, AgentResponse):
            out[event.request_id].append(event)
    return dict(out)


class TeamCluster(Cluster):
    """A :class:`~tests.chaos.cluster.Cluster` of the support app: its catalog has every
    agent's input topic, and :meth:`spawn_agent` starts one agent's worker process
    (``agentstream worker agent --agent NAME``, its own consumer group)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.env["AGENTSTREAM_APP"] = APP
        self.settings = self.settings.model_copy(update={"app": APP})
        self.catalog = self.settings.catalog()

    def spawn_agent(self, name: str, agent: str) -> None:
        """Start (or restart) ``name``: a worker of ``agent`` alone."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is running already")
        self._start(name, ["worker", "agent", "--agent", agent], None)
        self.kinds[name] = (f"agent.{agent}",)  # its group: ``agentstream-agent.<agent>``

    def spawn_team(self) -> None:
        """The router, a tool and a memory worker, and one worker process per agent."""
        for kind in ("router", "tool", "memory"):
            self.spawn(kind, kind)
        for agent in self.catalog.agents:
            self.spawn_agent(agent, agent)
