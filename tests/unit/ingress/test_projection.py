"""The ingress projection's handlers, called directly on the in-process store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agentstream.handlers.runtime.context import Context, Origin
from agentstream.handlers.stores.base import InProcessStore
from agentstream.ingress.projection import (
    LogEntry,
    Projection,
    ProjectionKeys,
    RecentlyRecorded,
    RequestRecord,
    unique_entries,
)
from agentstream.ingress.requests import RequestRepository
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    AgentTask,
    AgentTaskData,
    Envelope,
    SubRunParent,
    ToolCall,
    ToolCallData,
    ToolResult,
    ToolResultData,
    UserRequest,
    UserRequestData,
)
from agentstream.topics import Inbox

NS = "agentstream:test."


def user_request(request_id: str = "r1", tenant: str = "acme") -> UserRequest:
    return UserRequest(
        id=f"{request_id}-ev",
        source="upstream",
        request_id=request_id,
        conversation_id="c1",
        tenant=tenant,
        data=UserRequestData(text="What is 12 * 7?"),
    )


def tool_call(request: UserRequest, step: int = 0) -> ToolCall:
    return request.derive(
        ToolCall,
        ToolCallData(call_id=f"call-{step}", step=step, tool="calculator"),
        step=step,
        source="agent-worker",
    )


def tool_result(call: ToolCall) -> ToolResult:
    return call.derive(
        ToolResult,
        ToolResultData(
            call_id=call.data.call_id, step=call.data.step, tool="calculator", ok=True, output=84
        ),
        step="result",
        source="tool-worker",
    )


def response(
    request: UserRequest, index: int = 0, status: Any = "completed", tools: int = 0
) -> AgentResponse:
    return request.derive(
        AgentResponse,
        AgentResponseData(status=status, text="84", steps=2, tool_calls=["calculator"] * tools),
        step="final",
        index=index,
        source="agent-worker",
    )


async def project(store: InProcessStore, projection: Projection, event: Envelope[Any]) -> bool:
    """Run the projection's handler for ``event`` and commit like the runtime does."""
    ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
    handler = {
        UserRequest: projection.on_user_request,
        ToolCall: projection.on_tool_call,
        ToolResult: projection.on_tool_result,
        AgentResponse: projection.on_agent_response,
    }[type(event)]
    assert await handler(event, ctx) == []
    return await store.commit(expect=ctx.reads, ops=ctx.ops)


async def record_of(store: InProcessStore, request_id: str) -> RequestRecord | None:
    raw = (await store.get(ProjectionKeys(NS).request(request_id))).value
    return None if raw is None else RequestRecord.model_validate_json(raw)


async def log_of(store: InProcessStore, request_id: str) -> list[LogEntry]:
    raw = await store.list_range(ProjectionKeys(NS).log(request_id))
    return [entry for _, entry in unique_entries(raw)]


async def test_request_then_progress_then_response() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    assert await project(store, projection, request)
    record = await record_of(store, "r1")
    assert record is not None
    assert (record.status, record.tenant, record.text) == ("accepted", "acme", "What is 12 * 7?")
    conversation = await store.index_range(ProjectionKeys(NS).conversation("acme", "c1"))
    assert [m for m, _ in conversation] == ["r1"]

    call = tool_call(request)
    assert await project(store, projection, call)
    assert await project(store, projection, tool_result(call))
    assert (await record_of(store, "r1")).status == "running"  # type: ignore[union-attr]

    final = response(request, tools=1)
    assert await project(store, projection, final)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.terminal
    assert record.status == "completed"
    assert record.response is not None
    assert record.response.text == "84"
    kinds = [e.kind for e in await log_of(store, "r1")]
    assert kinds == ["tool_call", "tool_result", "response"]


async def test_terminal_record_never_changes() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    await project(store, projection, request)
    await project(store, projection, response(request))
    # A second, different terminal response and a straggling tool result are ignored.
    await project(store, projection, response(request, index=1, status="failed"))
    await project(store, projection, tool_result(tool_call(request, step=5)))
    record = await record_of(store, "r1")
    assert record is not None
    assert record.status == "completed"
    assert [e.kind for e in await log_of(store, "r1")] == ["response"]


async def test_replayed_event_is_not_logged_twice() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    await project(store, projection, request)
    call = tool_call(request)
    await project(store, projection, call)
    await project(store, projection, call)  # a crash before the runtime's commit
    raw = await store.list_range(ProjectionKeys(NS).log("r1"))
    assert len(raw) == 1


async def test_readers_drop_duplicates_anywhere_in_the_log() -> None:
    entry = LogEntry(event_id="e1", kind="tool_call", time=datetime.now(UTC), data={})
    other = LogEntry(event_id="e2", kind="response", time=datetime.now(UTC), data={})
    raw = [e.model_dump_json().encode() for e in (entry, other, entry)]
    assert [(i, e.event_id) for i, e in unique_entries(raw)] == [(0, "e1"), (1, "e2")]


async def test_progress_before_request_gets_a_placeholder_then_the_text() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    await project(store, projection, tool_call(request))
    record = await record_of(store, "r1")
    assert record is not None
    assert record.text is None
    assert record.status == "running"
    await project(store, projection, request)
    record = await record_of(store, "r1")
    assert record is not None
    assert (record.text, record.status) == ("What is 12 * 7?", "running")


async def test_ingress_accept_and_projection_never_overwrite_each_other() -> None:
    store, projection = InProcessStore(), Projection(NS)
    repo = RequestRepository(store, NS, record_ttl_s=60, idempotency_ttl_s=60)
    request = user_request()
    call = tool_call(request)
    ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
    await projection.on_tool_call(call, ctx)
    # The ingress writes its record between the projection's read and its commit: the
    # projection's commit is refused (the runtime runs the event again).
    await repo.accept(request)
    assert not await store.commit(expect=ctx.reads, ops=ctx.ops)
    assert await project(store, projection, call)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.status == "running"
    assert record.text is not None
    # accept() never regresses a record the projection already advanced.
    assert (await repo.accept(request)).status == "running"
    assert len(await store.list_range(ProjectionKeys(NS).log("r1"))) == 1


async def test_response_fetched_before_its_progress_still_ends_the_log() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    call = tool_call(request)
    # One fetch returned the topics in the "wrong" order: response, result, call, request;
    # the log still tells the story in causal order.
    for event in (response(request, tools=1), tool_result(call), call, request):
        assert await project(store, projection, event)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.status == "completed"
    assert record.response_logged
    assert [e.kind for e in await log_of(store, "r1")] == ["tool_call", "tool_result", "response"]


async def test_a_timed_out_response_does_not_wait_for_missing_results() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    await project(store, projection, request)
    await project(store, projection, tool_call(request))
    await project(store, projection, response(request, status="timed_out", tools=1))
    assert [e.kind for e in await log_of(store, "r1")] == ["tool_call", "response"]


async def test_a_held_response_is_released_by_readers_when_progress_never_comes() -> None:
    store, projection = InProcessStore(), Projection(NS)
    repo = RequestRepository(store, NS, record_ttl_s=60, idempotency_ttl_s=60)
    request = user_request()
    await project(store, projection, request)
    await project(store, projection, response(request, tools=2))
    record = await record_of(store, "r1")
    assert record is not None
    assert record.terminal  # GET and wait see the answer at once
    assert await log_of(store, "r1") == []  # the stream waits for the two calls
    assert await repo.release_held("r1")
    assert not await repo.release_held("r1")
    assert [e.kind for e in await log_of(store, "r1")] == ["response"]
    await project(store, projection, tool_call(request))  # too late: not logged
    assert [e.kind for e in await log_of(store, "r1")] == ["response"]


# -- requests the ingress of the same process recorded itself ----------------------------


class CountingStore(InProcessStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key: str) -> Any:
        self.reads += 1
        return await super().get(key)


def test_recently_recorded_is_taken_once_and_bounded() -> None:
    recorded = RecentlyRecorded(capacity=3)
    for request_id in ("r1", "r2", "r3", "r4"):
        recorded.add(request_id)
    assert len(recorded) == 3
    assert not recorded.take("r1")  # the oldest went first
    assert recorded.take("r2")
    assert not recorded.take("r2")  # asked once
    assert not recorded.take("unknown")


async def test_a_request_recorded_by_the_ingress_is_not_read_back() -> None:
    """The projection of the process that accepted a request skips its read; the stored
    record and index are the same as when it reads them back and finds nothing to do."""
    states = []
    request = user_request()
    for shared in (False, True):
        store = CountingStore()
        recorded = RecentlyRecorded()
        repo = RequestRepository(
            store, NS, record_ttl_s=60, idempotency_ttl_s=60, recorded=recorded
        )
        projection = Projection(NS, recorded=recorded if shared else None)
        await repo.accept(request)
        assert len(recorded) == 1
        reads = store.reads
        ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
        assert await projection.on_user_request(request, ctx) == []
        assert store.reads - reads == (0 if shared else 1)
        if shared:
            assert (ctx.reads, ctx.ops) == ({}, [])
        assert await store.commit(expect=ctx.reads, ops=ctx.ops)
        index = ProjectionKeys(NS).conversation("acme", "c1")
        states.append((await record_of(store, "r1"), await store.index_range(index)))
        # A redelivery of the same event reads the record again, as before.
        reads = store.reads
        await projection.on_user_request(request, ctx)
        assert store.reads - reads == 1
    assert states[0] == states[1]
    assert states[0][0] is not None
    assert states[0][0].text == "What is 12 * 7?"


async def test_only_a_record_the_ingress_wrote_itself_counts() -> None:
    """When the projection wrote the record first, the ingress's commit is refused and
    the id is not noted: an upstream or earlier record is always read."""
    store, recorded = InProcessStore(), RecentlyRecorded()
    repo = RequestRepository(store, NS, record_ttl_s=60, idempotency_ttl_s=60, recorded=recorded)
    request = user_request()
    assert await project(store, Projection(NS), request)
    await repo.accept(request)
    assert len(recorded) == 0


async def refuse(store: InProcessStore, projection: Projection, event: UserRequest) -> bool:
    """Run the projection's ``on_refused`` (what the runtime calls for a ``user_request``
    appended after its accept-by deadline) and commit like the runtime does."""
    ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
    [route] = [r for r in projection.routes() if r.on_refused is not None]
    assert route.on_refused is not None
    assert await route.on_refused(event, ctx) == []
    return await store.commit(expect=ctx.reads, ops=ctx.ops)


async def test_a_refused_request_is_recorded_as_such_and_ends_its_log() -> None:
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    assert await refuse(store, projection, request)
    record = await record_of(store, "r1")
    assert record is not None
    assert (record.status, record.text, record.terminal) == ("refused", "What is 12 * 7?", True)
    [entry] = await log_of(store, "r1")
    assert (entry.kind, entry.terminal, entry.data["status"]) == ("refused", True, "refused")
    # Not a turn of its conversation (it never ran).
    assert await store.index_range(ProjectionKeys(NS).conversation("acme", "c1")) == []
    # Seen again (a redelivery), or after the ingress recorded the refusal: one entry.
    assert await refuse(store, projection, request)
    assert len(await log_of(store, "r1")) == 1


async def test_a_refusal_never_overwrites_an_accepted_request() -> None:
    """Cannot happen with one append time per record; if it ever did, the record that
    says the request ran stays."""
    store, projection = InProcessStore(), Projection(NS)
    request = user_request()
    assert await project(store, projection, request)
    assert await refuse(store, projection, request)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.status == "accepted"
    assert await log_of(store, "r1") == []


# -- declared agents: handoffs, agents as tools, results on the agents' input topics ------


def task(request: UserRequest, agent: str, kind: Any, **data: Any) -> AgentTask:
    return request.derive(
        AgentTask,
        AgentTaskData(
            agent=agent,
            kind=kind,
            request=UserRequestData(text=data.pop("text", request.data.text)),
            requested_at=request.time,
            **data,
        ),
        step=f"{kind}:{agent}",
        source="agent-worker",
    )


def agent_call(request: UserRequest, call_id: str, tool: str, reply_to: str) -> ToolCall:
    return request.derive(
        ToolCall,
        ToolCallData(call_id=call_id, step=1, tool=tool, reply_to=reply_to),
        step=call_id,
        source="agent-worker",
    )


def agent_result(request: UserRequest, call_id: str, tool: str, reply_to: str) -> ToolResult:
    return request.derive(
        ToolResult,
        ToolResultData(call_id=call_id, step=1, tool=tool, ok=True, output="ok", reply_to=reply_to),
        step=f"result:{call_id}",
        source="tool-worker",
    )


async def on_inbox(store: InProcessStore, projection: Projection, event: Envelope[Any]) -> bool:
    """Run the handler of the input-topic route of the agent ``event`` is addressed to."""
    agent = event.data.agent if isinstance(event, AgentTask) else event.data.reply_to
    (route,) = [r for r in projection.routes() if r.topic == Inbox(agent)]
    ctx = Context(store, Origin("t", 0, 0, "g"), NS, lambda: datetime.now(UTC))
    assert await route.handler(event, ctx) == []
    return await store.commit(expect=ctx.reads, ops=ctx.ops)


def test_the_projection_reads_every_declared_agents_input_topic() -> None:
    projection = Projection(NS, agents=("triage", "billing", "math"))
    inboxes = [r for r in projection.routes() if isinstance(r.topic, Inbox)]
    assert [r.topic for r in inboxes] == [Inbox("triage"), Inbox("billing"), Inbox("math")]
    assert [r.name for r in inboxes] == [
        "projection.agent.triage",
        "projection.agent.billing",
        "projection.agent.math",
    ]
    assert not [r for r in Projection(NS).routes() if isinstance(r.topic, Inbox)]


def test_the_ingress_projection_and_the_registry_read_the_apps_agents() -> None:
    from agentstream.agents.app import load_app
    from agentstream.settings import Settings
    from agentstream.workers import WORKERS

    app = "examples.support"
    declared = WORKERS.get("projection").declared(Settings(app=app)).consumes()
    assert {t.agent for t in declared if isinstance(t, Inbox)} == set(load_app(app).names())


async def test_handoffs_and_sub_runs_are_logged_and_the_response_waits_for_them() -> None:
    """triage calls math as a tool (math calls the calculator), then hands the request to
    billing, which calls lookup_invoice and answers. Fetched in an unlucky order, the log
    still holds every step, each result after its call, and ends with the response."""
    store = InProcessStore()
    projection = Projection(NS, agents=("triage", "billing", "math"))
    request = user_request()
    turn = task(request, "triage", "turn")
    subrun = task(
        request,
        "math",
        "subrun",
        text="12 * 7 + 3",
        from_agent="triage",
        run_id="sub-1",
        parent=SubRunParent(run_id="r1", agent="triage", call_id="c-ask", step=1, tool="ask_math"),
    )
    calc = agent_call(request, "c-calc", "calculator", "math")
    calc_result = agent_result(request, "c-calc", "calculator", "math")
    subrun_answer = agent_result(request, "c-ask", "ask_math", "triage")
    handoff = task(request, "billing", "handoff", from_agent="triage", reason="refund")
    lookup = agent_call(request, "c-look", "lookup_invoice", "billing")
    lookup_result = agent_result(request, "c-look", "lookup_invoice", "billing")
    final = request.derive(
        AgentResponse,
        AgentResponseData(
            status="completed",
            text="refunded",
            steps=4,
            tool_calls=["ask_math", "lookup_invoice"],
            agent="billing",
            handoffs=["triage"],
        ),
        step="final",
        source="agent-worker",
    )
    assert await project(store, projection, request)
    assert await on_inbox(store, projection, turn)
    assert await on_inbox(store, projection, subrun_answer)  # before the sub-run: held
    assert await project(store, projection, final)  # the response waits
    for event in (calc, lookup):
        assert await project(store, projection, event)
    for event in (calc_result, lookup_result, subrun):
        assert await on_inbox(store, projection, event)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.status == "completed"
    assert not record.response_logged, "the handoff is not logged yet"
    assert await on_inbox(store, projection, handoff)
    record = await record_of(store, "r1")
    assert record is not None
    assert record.response_logged
    entries = await log_of(store, "r1")
    assert [(e.kind, e.data.get("call_id") or e.data.get("to_agent")) for e in entries] == [
        ("tool_call", "c-calc"),
        ("tool_call", "c-look"),
        ("tool_result", "c-calc"),
        ("tool_result", "c-look"),
        ("subrun", "c-ask"),
        ("tool_result", "c-ask"),
        ("handoff", "billing"),
        ("response", None),
    ]
    by_kind = {e.kind: e for e in entries}
    assert by_kind["handoff"].data == {
        "from_agent": "triage",
        "to_agent": "billing",
        "reason": "refund",
    }
    assert by_kind["subrun"].data == {
        "call_id": "c-ask",
        "step": 1,
        "tool": "ask_math",
        "caller": "triage",
        "callee": "math",
        "run_id": "sub-1",
        "input": "12 * 7 + 3",
    }
    assert by_kind["response"].data["agent"] == "billing"
    assert by_kind["response"].data["handoffs"] == ["triage"]
    # A turn task adds no entry; a replayed handoff is not logged twice.
    assert await on_inbox(store, projection, handoff)
    assert len(await log_of(store, "r1")) == len(entries)
