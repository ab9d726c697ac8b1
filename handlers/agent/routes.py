"""The agent worker's handler: one declared agent's input topic drives its tool loop.

Each declared agent reads only its input topic ``agent.<name>`` (ADR 23), which carries:

- ``agent_task`` ``turn``: the router's forward of a conversation's next request (the
  router runs a conversation's turns one after another, whichever agents answer them);
- ``agent_task`` ``handoff``: another agent hands it a request, whose run state is in the
  store; this agent continues the same run and answers it;
- ``agent_task`` ``subrun``: another agent calls it as a tool; its answer goes back to the
  caller's input topic as the call's ``tool_result``, with its usage;
- ``tool_result``: the answers of its own tool, memory and agent-tool calls.

Run state lives in the store, so any instance continues any request:

- ``conv:<id>``: the conversation's short-term history, shared by the agents that answer it.
- ``run:<run id>``: the :class:`agents.RunState` of one run (the request id for a request's
  run, a sub-run's derived id otherwise); ``agent`` names who runs it now.
- ``deadlines:<agent>:<partition>``: the agent's active runs by deadline, for the sweeper
  that ends runs whose tools never answered (:class:`DeadlineSweeper`).

Every request ends in exactly one terminal ``agent_response``: its id is derived from the
request id alone, and it is emitted only by the step that moves the run to a terminal state.
Those moves are the loop's (:mod:`agentstream.agents.loop`); this module stores their states
and publishes ``response_data``. A model reply takes effect with the commit of the state it
leads to: a redelivered event finds its dedup mark and gets the recorded outputs back, so the
model is not called again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from agentstream.agents import (
    Agent,
    App,
    AskAgain,
    CallTools,
    HandOff,
    Message,
    Model,
    ModelReply,
    RunContext,
    RunState,
    ToolInvocation,
    ToolSpec,
    apply_reply,
    apply_tool_result,
    compact,
    fail,
    handoff_tool_name,
    history_after,
    refuse,
    reject_answer,
    run_guardrails,
    start_run,
    take_over,
)
from agentstream.agents import expire as expire_run
from agentstream.agents.app import AgentTool
from agentstream.agents.models import ModelRouter, UnknownModel, cache_key
from agentstream.handlers.agent.deadlines import DeadlineSweeper
from agentstream.handlers.agent.events import (
    call_for,
    handoff_task,
    ids_from_raw,
    response_for,
    subrun_result,
    subrun_task,
)
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.schemas import (
    AgentTask,
    Envelope,
    SchemaError,
    ToolResult,
    UserRequest,
)
from agentstream.topics import Inbox, LogicalTopic, Topic
from pydantic import BaseModel, Field

__all__ = ["AgentConfig", "AgentHandlers", "ConversationState", "DeadlineSweeper"]

log = logging.getLogger(__name__)

#: What a guard failure says; a caller that gets it from a sub-run fails too.
CALL_LIMIT = "AgentCallLimit"


def _is_rejection(error: BaseException) -> bool:
    """The request itself is at fault, not the pipeline."""
    return isinstance(error, SchemaError | UnknownModel)


class ConversationState(BaseModel):
    history: list[Message] = Field(default_factory=list)
    active: str | None = None
    #: Requests queued by a worker of the one-agent layout before the router existed;
    #: read so an upgrade loses none (they are started in order as the turn ends).
    waiting: list[UserRequest] = Field(default_factory=list)


@dataclass(frozen=True)
class AgentConfig:
    """The deployment's defaults; an agent's own limits win over them."""

    max_steps: int = 8
    deadline_s: float = 120.0
    history_budget_tokens: int = 2000
    cache: bool = True
    cache_ttl_s: int = 24 * 3600
    run_ttl_s: int = 7 * 24 * 3600
    #: How deep agents may call agents as tools (a request's run is depth 0).
    max_depth: int = 3
    #: How often one request may be handed from agent to agent.
    max_handoffs: int = 8


class AgentHandlers:
    """The route of one declared agent of ``app``, bound to a model router."""

    def __init__(
        self,
        app: App,
        agent: str,
        router: ModelRouter,
        config: AgentConfig,
        metrics: AgentMetrics,
    ) -> None:
        self.app = app
        self.agent: Agent = app.get(agent)
        self.name = agent
        self.router = router
        self.config = config
        self.metrics = metrics
        self.tools: list[ToolSpec] = app.tool_specs(self.agent)
        handoff_names = {handoff_tool_name(t) for t in self.agent.handoffs}
        #: In a sub-run the agent answers its caller: it cannot hand the request on.
        self.subrun_tools = [t for t in self.tools if t.name not in handoff_names]
        self.handoffs = {handoff_tool_name(t): t for t in self.agent.handoffs}
        self.agent_tools: dict[str, AgentTool] = {
            t.name: app.agent_tool(t) for t in self.agent.agent_tools
        }
        self.max_steps = self.agent.max_steps or config.max_steps
        self.deadline_s = self.agent.deadline_s or config.deadline_s
        self.history_budget = (
            self.agent.history_budget_tokens
            if self.agent.history_budget_tokens is not None
            else config.history_budget_tokens
        )
        self.check_output = self.agent.validate_output if self.agent.output_type else None

    @property
    def inbox(self) -> Inbox:
        return Inbox(self.name)

    def publishes(self) -> tuple[LogicalTopic, ...]:
        """Tool and memory calls, tasks for the agents it hands off to or calls, answers
        for the agents that may call it (any of the app's), the terminal response."""
        others = [Inbox(a) for a in self.app.names() if a != self.name]
        return (Topic.TOOL_CALL, Topic.MEMORY_CALL, *others, Topic.AGENT_RESPONSE)

    def routes(self) -> list[Route]:
        return [
            Route(
                self.inbox,
                self.on_event,
                f"agent.{self.name}",
                on_dead_letter=self.on_dead_letter,
                publishes=self.publishes(),
            )
        ]

    def deadline_index(self, partition: int | str) -> str:
        return f"deadlines:{self.name}:{partition}"

    # -- events -------------------------------------------------------------------------

    # While a handler awaits its model (thousands of them at once in one worker, ADR 24),
    # it holds its run state, not its event: ``on_event`` is a plain function (no frame of
    # its own), and each handler drops its event once it has what the run needs. The decoded
    # event was a sixth of a running handler's memory (issue 17).

    def on_event(self, event: Envelope[Any], ctx: Context) -> Awaitable[list[Envelope[Any]]]:
        if isinstance(event, ToolResult):
            return self.on_tool_result(event, ctx)
        if isinstance(event, AgentTask):
            if event.data.agent != self.name:
                log.warning("task for agent %s on %s's topic ignored", event.data.agent, self.name)
                return _nothing()
            if event.data.kind == "turn":
                return self.on_turn(event, ctx)
            if event.data.kind == "handoff":
                return self.on_handoff(event, ctx)
            return self.on_subrun(event, ctx)
        raise SchemaError(f"{event.type} does not belong on agent.{self.name}")

    def on_turn(self, task: AgentTask, ctx: Context) -> Awaitable[list[Envelope[Any]]]:
        return self._start(_request_of(task), None, ctx)

    async def on_handoff(self, task: AgentTask, ctx: Context) -> list[Envelope[Any]]:
        run_key = ctx.key("run", task.request_id)
        await ctx.prefetch(run_key, ctx.key("conv", task.conversation_id))
        state = await ctx.load(run_key, RunState)
        if state is None:
            raise SchemaError(f"handoff of request {task.request_id} without its run state")
        if state.terminal or state.agent != self.name or state.awaiting != "handoff":
            return []  # taken over already (a duplicate), or ended meanwhile
        conv = await ctx.load(ctx.key("conv", task.conversation_id), ConversationState)
        source = task.data.from_agent or "another agent"
        note = f"The {source} agent handed this conversation to you" + (
            f": {task.data.reason}" if task.data.reason else "."
        )
        state = take_over(
            state,
            system_prompt=self.agent.prompt(self._context(state)),
            history=conv.history if conv else [],
            max_steps=self.max_steps,
            history_budget_tokens=self.history_budget,
            note=note,
        )
        state = state.model_copy(update={"partition": ctx.origin.partition})
        self._index_deadline(state, ctx)
        del task, conv
        return await self._step(state, ctx)

    async def on_subrun(self, task: AgentTask, ctx: Context) -> list[Envelope[Any]]:
        d = task.data
        run_id = d.run_id or ""
        if not run_id or d.parent is None:
            raise SchemaError("a subrun task needs run_id and parent")
        run_key = ctx.key("run", run_id)
        if await ctx.load(run_key, RunState) is not None:
            return []  # started already: one sub-run per call
        request = _request_of(task)
        state = start_run(
            request,
            [],
            system_prompt=self.agent.prompt(
                RunContext(
                    agent=self.name,
                    request_id=task.request_id,
                    conversation_id=task.conversation_id,
                    tenant=task.tenant,
                    user=d.request.user,
                    subrun=True,
                )
            ),
            max_steps=self.max_steps,
            default_deadline_s=self.deadline_s,
            history_budget_tokens=self.history_budget,
            partition=ctx.origin.partition,
            agent=self.name,
            run_id=run_id,
            parent=d.parent,
            chain=d.chain,
            deadline_at_most=d.deadline,
        )
        del task, d, request
        rejected = await self._guard_input(state, ctx)
        if rejected is not None:
            return await self._finish(rejected, ctx)
        self._index_deadline(state, ctx)
        return await self._step(state, ctx)

    async def on_tool_result(self, event: ToolResult, ctx: Context) -> list[Envelope[Any]]:
        d = event.data
        run_key = ctx.key("run", d.run_id or event.request_id)
        await ctx.prefetch(run_key, ctx.key("conv", event.conversation_id))
        state = await ctx.load(run_key, RunState)
        if state is None or state.terminal or state.agent not in (self.name, None):
            return []  # a late result of a finished run, or of a run handed on
        if d.error_class == CALL_LIMIT and d.call_id in state.pending:
            state, ended = fail(state, d.error or "agent call limit")
            return [] if ended is None else await self._finish(state, ctx)
        if d.usage is not None and d.call_id in state.pending:
            callee = self.agent_tools.get(d.tool)
            outcome = "ok" if d.ok else "error"
            if callee is not None and d.call_id not in state.results:
                self.metrics.subruns.labels(self.name, callee.agent, outcome).inc()
        state, complete = apply_tool_result(
            state, d.call_id, d.ok, d.output, d.error, error_class=d.error_class, usage=d.usage
        )
        ctx.save(run_key, state, self.config.run_ttl_s)
        if not complete:
            return []
        del event, d
        return await self._step(state, ctx)

    async def on_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        """A task or result whose processing failed for good still ends its run with one
        answer: ``rejected`` when the request itself is invalid (an unknown model, a bad
        task), ``failed`` otherwise. The run is stored as terminal, so a replay of the dead
        letter cannot produce a second answer."""
        reason = f"{type(error).__name__}: {error}"
        if event is None:
            ids = ids_from_raw(raw)
            if ids is None:
                return []  # nothing tells whom to answer; the dead letter is all there is
            state = await ctx.load(ctx.key("run", ids["request_id"]), RunState)
            if state is not None:
                state, ended = fail(state, reason)
                return [] if ended is None else await self._finish(state, ctx)
            refused = refuse(
                request_id=ids["request_id"],
                conversation_id=ids["conversation_id"],
                tenant=ids["tenant"],
                reason=reason,
                rejected=True,
                agent=self.name,
            )
            return [response_for(refused)]
        run_id = _run_id_of(event)
        state = await ctx.load(ctx.key("run", run_id), RunState)
        if state is not None:
            state, ended = fail(state, reason)
            return [] if ended is None else await self._finish(state, ctx)
        if not isinstance(event, AgentTask):
            return []
        if event.data.kind == "subrun" and event.data.parent is not None:
            request = _request_of(event)
            state = start_run(
                request,
                [],
                system_prompt=None,
                agent=self.name,
                run_id=run_id,
                parent=event.data.parent,
                chain=event.data.chain,
            )
            state, _ = fail(state, reason)
            return await self._finish(state, ctx)
        refused = refuse(
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            tenant=event.tenant,
            traceparent=event.traceparent,
            user=event.data.request.user,
            reason=reason,
            rejected=_is_rejection(error),
            agent=self.name,
        )
        refused = refused.model_copy(update={"requested_at": event.data.requested_at})
        return await self._finish(refused, ctx)

    # -- the loop -----------------------------------------------------------------------

    def _context(self, state: RunState) -> RunContext:
        return RunContext(
            agent=self.name,
            request_id=state.request_id,
            conversation_id=state.conversation_id,
            tenant=state.tenant,
            user=state.user,
            subrun=state.parent is not None,
        )

    async def _guard_input(self, state: RunState, ctx: Context) -> RunState | None:
        """The state of a run an input guardrail rejected; None when they let it pass."""
        if not self.agent.input_guardrails:
            return None
        text = state.user_message.content or ""
        rejection = await run_guardrails(self.agent.input_guardrails, self._context(state), text)
        if rejection is None:
            return None
        self.metrics.guardrail_rejections.labels(self.name, "input").inc()
        reason = f"input guardrail {rejection}"
        return state.model_copy(
            update={"status": "rejected", "awaiting": None, "error": reason, "pending": {}}
        )

    async def _start(
        self, request: UserRequest, conv: ConversationState | None, ctx: Context
    ) -> list[Envelope[Any]]:
        """Start the run of ``request``: a turn from the router (``conv`` None: read here,
        a duplicate turn ignored), or a request left waiting in ``conv``."""
        conv_key = ctx.key("conv", request.conversation_id)
        if conv is None:
            run_key = ctx.key("run", request.request_id)
            await ctx.prefetch(run_key, conv_key)
            if await ctx.load(run_key, RunState) is not None:
                log.info("request %s already started; duplicate turn ignored", request.request_id)
                return []
            conv = await ctx.load(conv_key, ConversationState) or ConversationState()
        context = RunContext(
            agent=self.name,
            request_id=request.request_id,
            conversation_id=request.conversation_id,
            tenant=request.tenant,
            user=request.data.user,
            metadata=request.data.metadata,
        )
        state = start_run(
            request,
            conv.history,
            system_prompt=self.agent.prompt(context),
            max_steps=request.data.max_steps or self.max_steps,
            default_deadline_s=self.deadline_s,
            history_budget_tokens=self.history_budget,
            partition=ctx.origin.partition,
            agent=self.name,
        )
        if state.requested_model is None and self.agent.model is not None:
            state = state.model_copy(update={"requested_model": self.agent.model})
        conv.active = request.request_id
        conv.waiting = [w for w in conv.waiting if w.request_id != request.request_id]
        ctx.save(conv_key, conv, self.config.run_ttl_s)
        del request, context
        rejected = await self._guard_input(state, ctx)
        if rejected is not None:
            return await self._finish(rejected, ctx)
        self._index_deadline(state, ctx)
        return await self._step(state, ctx)

    def _index_deadline(self, state: RunState, ctx: Context) -> None:
        if state.deadline is not None:
            ctx.index_add(
                ctx.key(self.deadline_index(ctx.origin.partition)),
                f"{state.id}|{state.conversation_id}",
                state.deadline.timestamp(),
            )

    def _unindex_deadline(self, state: RunState, ctx: Context) -> None:
        ctx.index_remove(
            ctx.key(self.deadline_index(str(state.partition))),
            f"{state.id}|{state.conversation_id}",
        )

    async def _step(self, state: RunState, ctx: Context) -> list[Envelope[Any]]:
        while True:
            state, expired = expire_run(state, ctx.now())
            if expired is not None:
                return await self._finish(state, ctx)
            reply = await self._complete(state, ctx)
            state, decision = apply_reply(
                state,
                reply,
                ctx.now(),
                handoffs=self.handoffs if state.parent is None else None,
                check_output=self.check_output,
                output_retries=self.agent.output_retries,
                max_handoffs=self.config.max_handoffs,
            )
            if not isinstance(decision, AskAgain):
                break
        if isinstance(decision, CallTools):
            limit = self._call_limit(state, decision.invocations)
            if limit is None:
                return self._call_tools(state, decision.invocations, ctx)
            state, _ = fail(state, limit)
            return await self._finish(state, ctx)
        if isinstance(decision, HandOff):
            return self._hand_off(state, decision, ctx)
        if state.status == "completed" and self.agent.output_guardrails:
            rejection = await run_guardrails(
                self.agent.output_guardrails, self._context(state), state.answer or ""
            )
            if rejection is not None:
                self.metrics.guardrail_rejections.labels(self.name, "output").inc()
                state = reject_answer(state, f"output guardrail {rejection}")
        return await self._finish(state, ctx)  # Finish or Fail: the state is terminal

    def _call_limit(self, state: RunState, invocations: list[ToolInvocation]) -> str | None:
        """Why this step may not call the agents it asks for (a cycle, the depth limit)."""
        path = [*state.chain, self.name]
        for invocation in invocations:
            callee = self.agent_tools.get(invocation.name)
            if callee is None:
                continue
            if callee.agent in path:
                cycle = " -> ".join([*path, callee.agent])
                return f"agent call limit: the call of {callee.agent} would loop ({cycle})"
            if len(path) >= self.config.max_depth:
                return (
                    f"agent call limit: depth {self.config.max_depth} reached "
                    f"({' -> '.join([*path, callee.agent])})"
                )
        return None

    def _call_tools(
        self, state: RunState, invocations: list[ToolInvocation], ctx: Context
    ) -> list[Envelope[Any]]:
        """The calls of one step: tools, memory, agents (each a sub-run)."""
        ctx.save(ctx.key("run", state.id), state, self.config.run_ttl_s)
        out: list[Envelope[Any]] = []
        for index, invocation in enumerate(invocations):
            callee = self.agent_tools.get(invocation.name)
            if callee is None:
                out.append(call_for(state, invocation, index))
                continue
            try:
                text = AgentTool.input_of(invocation.arguments)
            except ValueError:
                text = str(invocation.arguments.get("input") or invocation.arguments)
            out.append(subrun_task(state, invocation, callee.agent, text or "(no input)"))
        return out

    def _hand_off(self, state: RunState, decision: HandOff, ctx: Context) -> list[Envelope[Any]]:
        ctx.save(ctx.key("run", state.id), state, self.config.run_ttl_s)
        self._unindex_deadline(state, ctx)
        self.metrics.handoffs.labels(self.name, decision.target).inc()
        return [handoff_task(state, self.name, decision.reason)]

    async def _complete(self, state: RunState, ctx: Context) -> ModelReply:
        model = self.router.choose(state)
        tools = self.tools if state.parent is None else self.subrun_tools
        cache = (
            ctx.key("cache", cache_key(model.name, state.messages, tools))
            if self.config.cache
            else None
        )

        # The reply is not recorded on its own: it takes effect with the commit of the state
        # it leads to, and a redelivered event finds its dedup mark and gets its recorded
        # outputs back without running. A crash before that commit asks the model again,
        # which only costs the call (nothing of the step was published). ADR 14 update.
        reply = await self._cached_call(model, state, tools, cache, ctx)
        if not reply.usage.cached_calls:
            self._count(reply, state.tenant)
            if cache is not None:
                ctx.put_value(cache, reply.model_dump_json().encode(), self.config.cache_ttl_s)
        return reply

    async def _cached_call(
        self,
        model: Model,
        state: RunState,
        tools: list[ToolSpec],
        cache: str | None,
        ctx: Context,
    ) -> ModelReply:
        if cache is not None and (cached := await ctx.store.fetch(cache)) is not None:
            reply = ModelReply.model_validate_json(cached)
            usage = reply.usage.model_copy(
                update={"cost_usd": 0.0, "cached_calls": 1, "model_calls": 0}
            )
            return reply.model_copy(update={"usage": usage})
        try:
            return await model.complete(state.messages, tools)
        except Exception:
            self.metrics.llm_calls.labels(self.name, model.name, "error").inc()
            raise

    def _count(self, reply: ModelReply, tenant: str) -> None:
        u, m, a = reply.usage, self.metrics, self.name
        m.llm_calls.labels(a, reply.model, "ok").inc()
        m.llm_tokens.labels(a, reply.model, "prompt", tenant).inc(u.prompt_tokens)
        m.llm_tokens.labels(a, reply.model, "completion", tenant).inc(u.completion_tokens)
        m.llm_cost.labels(a, reply.model, tenant).inc(u.cost_usd)

    async def _finish(
        self, state: RunState, ctx: Context, *, keep_deadline: bool = False
    ) -> list[Envelope[Any]]:
        """Publish the answer of a run the loop has ended: the request's terminal response,
        or a sub-run's result for its caller."""
        ctx.save(ctx.key("run", state.id), compact(state), self.config.run_ttl_s)
        if not keep_deadline:
            self._unindex_deadline(state, ctx)
        if state.parent is not None:
            limit = state.error is not None and state.error.startswith("agent call limit")
            return [subrun_result(state, error_class=CALL_LIMIT if limit else None)]
        self.metrics.responses.labels(self.name, state.status, state.tenant).inc()
        if state.requested_at is not None:
            elapsed = (ctx.now() - state.requested_at).total_seconds()
            self.metrics.answer_seconds.labels(self.name, state.status).observe(max(0.0, elapsed))
        outputs: list[Envelope[Any]] = [response_for(state)]
        conv_key = ctx.key("conv", state.conversation_id)
        conv = await ctx.load(conv_key, ConversationState) or ConversationState()
        if state.status == "completed":
            conv.history = history_after(state)
        if conv.active == state.request_id:
            conv.active = None
        if conv.waiting:  # left by a worker of the one-agent layout (see ConversationState)
            following = conv.waiting.pop(0)
            outputs += await self._start(following, conv, ctx)
        else:
            ctx.save(conv_key, conv, self.config.run_ttl_s)
        return outputs

    # -- deadlines ----------------------------------------------------------------------

    async def expire(self, run_id: str, ctx: Context) -> list[Envelope[Any]]:
        state = await ctx.load(ctx.key("run", run_id), RunState)
        if state is None or state.agent not in (self.name, None):
            return []
        state, expired = expire_run(state, ctx.now())
        if expired is None:
            return []  # finished meanwhile, or its deadline moved on
        # The deadline entry stays until the answer is delivered (the sweeper removes it
        # then): a crash between this commit and the publish leaves it for the next sweep,
        # whose job replays the recorded answer instead of losing it.
        return await self._finish(state, ctx, keep_deadline=True)


async def _nothing() -> list[Envelope[Any]]:
    return []


def _request_of(task: AgentTask) -> UserRequest:
    """The user request a task carries, as the loop starts runs from one."""
    return UserRequest(
        id=task.causation_id or task.id,
        source=task.source,
        time=task.data.requested_at,
        request_id=task.request_id,
        conversation_id=task.conversation_id,
        causation_id=task.causation_id,
        tenant=task.tenant,
        traceparent=task.traceparent,
        data=task.data.request,
    )


def _run_id_of(event: Envelope[Any]) -> str:
    if isinstance(event, AgentTask) and event.data.kind == "subrun" and event.data.run_id:
        return event.data.run_id
    if isinstance(event, ToolResult) and event.data.run_id:
        return event.data.run_id
    return event.request_id
