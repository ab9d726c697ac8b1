"""The agent worker's handlers: ``user_request`` and ``tool_result`` drive the tool loop.

Run state lives in the store, so any instance continues any request:

- ``conv:<id>``: the conversation's short-term history, the request being answered, and the
  requests waiting their turn. Turns of one conversation run one after another, in arrival
  order, so every turn sees the history of the turns before it.
- ``run:<request_id>``: the :class:`agents.RunState` of one request.
- ``deadlines:<partition>``: active runs by deadline, for the sweeper that ends runs whose
  tools never answered (:class:`agentstream.handlers.agent.deadlines.DeadlineSweeper`).

Every request ends in exactly one terminal ``agent_response``: its id is derived from the
request id alone, and it is emitted only by the step that moves the run to a terminal state.
Those moves are the loop's (:mod:`agentstream.agents.loop`: ``apply_reply``, ``expire``,
``fail``, ``refuse``); this module stores their states and publishes ``response_data``.
A model reply takes effect with the commit of the state it leads to (the step's idempotency
key is ``request_id`` + step): a redelivered event finds its dedup mark and gets the
recorded outputs back, so the model is not called again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentstream.agents import (
    CallTools,
    Message,
    Model,
    ModelReply,
    RunState,
    ToolSpec,
    apply_reply,
    apply_tool_result,
    compact,
    fail,
    history_after,
    refuse,
    start_run,
)
from agentstream.agents import expire as expire_run
from agentstream.agents.models import ModelRouter, UnknownModel, cache_key
from agentstream.handlers.agent.deadlines import DeadlineSweeper
from agentstream.handlers.agent.events import call_for, ids_from_raw, response_for
from agentstream.handlers.agent.metrics import AgentMetrics
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.schemas import Envelope, SchemaError, ToolResult, UserRequest
from agentstream.topics import Topic
from pydantic import BaseModel, Field

__all__ = ["AgentConfig", "AgentHandlers", "ConversationState", "DeadlineSweeper"]

log = logging.getLogger(__name__)


#: A step of a run calls tools and memory, or answers (a dead letter answers too).
_PUBLISHES = (Topic.TOOL_CALL, Topic.MEMORY_CALL, Topic.AGENT_RESPONSE)


def _is_rejection(error: BaseException) -> bool:
    """The request itself is at fault, not the pipeline."""
    return isinstance(error, SchemaError | UnknownModel)


class ConversationState(BaseModel):
    history: list[Message] = Field(default_factory=list)
    active: str | None = None
    waiting: list[UserRequest] = Field(default_factory=list)


@dataclass(frozen=True)
class AgentConfig:
    system_prompt: str
    max_steps: int = 8
    deadline_s: float = 120.0
    history_budget_tokens: int = 2000
    cache: bool = True
    cache_ttl_s: int = 24 * 3600
    run_ttl_s: int = 7 * 24 * 3600


class AgentHandlers:
    """The routes of the agent worker, bound to a model router and the tools it may offer."""

    def __init__(
        self,
        router: ModelRouter,
        tools: Sequence[ToolSpec],
        config: AgentConfig,
        metrics: AgentMetrics,
    ) -> None:
        self.router = router
        self.tools = list(tools)
        self.config = config
        self.metrics = metrics

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.USER_REQUEST,
                self.on_user_request,
                "agent.user_request",
                on_dead_letter=self.on_dead_letter,
                publishes=_PUBLISHES,
            ),
            Route(
                Topic.TOOL_RESULT,
                self.on_tool_result,
                "agent.tool_result",
                on_dead_letter=self.on_dead_letter,
                publishes=_PUBLISHES,
            ),
        ]

    # -- events -------------------------------------------------------------------------

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        conv_key = ctx.key("conv", event.conversation_id)
        await ctx.prefetch(ctx.key("run", event.request_id), conv_key)
        if await ctx.load(ctx.key("run", event.request_id), RunState) is not None:
            log.info("request %s already started; duplicate user_request ignored", event.request_id)
            return []
        conv = await ctx.load(conv_key, ConversationState) or ConversationState()
        if conv.active is not None and conv.active != event.request_id:
            if all(w.request_id != event.request_id for w in conv.waiting):
                conv.waiting.append(event)
                ctx.save(conv_key, conv, self.config.run_ttl_s)
            return []
        return await self._start(event, conv, ctx)

    async def on_tool_result(self, event: ToolResult, ctx: Context) -> list[Envelope[Any]]:
        run_key = ctx.key("run", event.request_id)
        await ctx.prefetch(run_key, ctx.key("conv", event.conversation_id))
        state = await ctx.load(run_key, RunState)
        if state is None or state.terminal:
            return []  # a late result of a finished run
        d = event.data
        state, complete = apply_tool_result(
            state, d.call_id, d.ok, d.output, d.error, error_class=d.error_class
        )
        ctx.save(run_key, state, self.config.run_ttl_s)
        if not complete:
            return []
        return await self._step(state, ctx)

    async def on_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        """A request whose processing failed for good still gets its terminal answer.

        ``rejected`` when the request itself is invalid (undecodable, wrong schema, an
        unknown model), ``failed`` otherwise. The run is stored as terminal, so a replay
        of the dead letter cannot produce a second answer.
        """
        reason = f"{type(error).__name__}: {error}"
        ids = ids_from_raw(raw) if event is None else None
        if event is not None:
            request_id = event.request_id
        elif ids is not None:
            request_id = ids["request_id"]
        else:
            return []  # nothing tells whom to answer; the dead letter is all there is
        state = await ctx.load(ctx.key("run", request_id), RunState)
        if state is not None:
            state, ended = fail(state, reason)
            return [] if ended is None else await self._finish(state, ctx)
        if ids is not None:  # an undecodable request: answered, not stored (nothing to replay)
            refused = refuse(
                request_id=request_id,
                conversation_id=ids["conversation_id"],
                tenant=ids["tenant"],
                reason=reason,
                rejected=True,
            )
            return [response_for(refused)]
        if not isinstance(event, UserRequest):
            return []
        refused = refuse(
            request_id=event.request_id,
            conversation_id=event.conversation_id,
            tenant=event.tenant,
            traceparent=event.traceparent,
            user=event.data.user,
            reason=reason,
            rejected=_is_rejection(error),
        )
        ctx.save(ctx.key("run", event.request_id), refused, self.config.run_ttl_s)
        return [response_for(refused)]

    # -- the loop -----------------------------------------------------------------------

    async def _start(
        self, event: UserRequest, conv: ConversationState, ctx: Context
    ) -> list[Envelope[Any]]:
        state = start_run(
            event,
            conv.history,
            system_prompt=self.config.system_prompt,
            max_steps=event.data.max_steps or self.config.max_steps,
            default_deadline_s=self.config.deadline_s,
            history_budget_tokens=self.config.history_budget_tokens,
            partition=ctx.origin.partition,
        )
        conv.active = event.request_id
        conv.waiting = [w for w in conv.waiting if w.request_id != event.request_id]
        ctx.save(ctx.key("conv", event.conversation_id), conv, self.config.run_ttl_s)
        if state.deadline is not None:
            ctx.index_add(
                ctx.key("deadlines", str(ctx.origin.partition)),
                f"{state.request_id}|{state.conversation_id}",
                state.deadline.timestamp(),
            )
        return await self._step(state, ctx)

    async def _step(self, state: RunState, ctx: Context) -> list[Envelope[Any]]:
        state, expired = expire_run(state, ctx.now())
        if expired is not None:
            return await self._finish(state, ctx)
        reply = await self._complete(state, ctx)
        state, decision = apply_reply(state, reply, ctx.now())
        if isinstance(decision, CallTools):
            ctx.save(ctx.key("run", state.request_id), state, self.config.run_ttl_s)
            return [call_for(state, inv, i) for i, inv in enumerate(decision.invocations)]
        return await self._finish(state, ctx)  # Finish or Fail: the state is terminal

    async def _complete(self, state: RunState, ctx: Context) -> ModelReply:
        model = self.router.choose(state)
        cache = (
            ctx.key("cache", cache_key(model.name, state.messages, self.tools))
            if self.config.cache
            else None
        )

        # The reply is not recorded on its own: it takes effect with the commit of the state
        # it leads to, and a redelivered event finds its dedup mark and gets its recorded
        # outputs back without running. A crash before that commit asks the model again,
        # which only costs the call (nothing of the step was published). ADR 14 update.
        reply = await self._cached_call(model, state, cache, ctx)
        if not reply.usage.cached_calls:
            self._count(reply, state.tenant)
            if cache is not None:
                ctx.put_value(cache, reply.model_dump_json().encode(), self.config.cache_ttl_s)
        return reply

    async def _cached_call(
        self, model: Model, state: RunState, cache: str | None, ctx: Context
    ) -> ModelReply:
        if cache is not None and (cached := await ctx.store.fetch(cache)) is not None:
            reply = ModelReply.model_validate_json(cached)
            usage = reply.usage.model_copy(
                update={"cost_usd": 0.0, "cached_calls": 1, "model_calls": 0}
            )
            return reply.model_copy(update={"usage": usage})
        try:
            return await model.complete(state.messages, self.tools)
        except Exception:
            self.metrics.llm_calls.labels(model.name, "error").inc()
            raise

    def _count(self, reply: ModelReply, tenant: str) -> None:
        u = reply.usage
        self.metrics.llm_calls.labels(reply.model, "ok").inc()
        self.metrics.llm_tokens.labels(reply.model, "prompt", tenant).inc(u.prompt_tokens)
        self.metrics.llm_tokens.labels(reply.model, "completion", tenant).inc(u.completion_tokens)
        self.metrics.llm_cost.labels(reply.model, tenant).inc(u.cost_usd)

    async def _finish(
        self, state: RunState, ctx: Context, *, keep_deadline: bool = False
    ) -> list[Envelope[Any]]:
        """Publish the answer of a run the loop has ended, and start the conversation's next
        request, if one is waiting."""
        ctx.save(ctx.key("run", state.request_id), compact(state), self.config.run_ttl_s)
        if not keep_deadline:
            ctx.index_remove(
                ctx.key("deadlines", str(state.partition)),
                f"{state.request_id}|{state.conversation_id}",
            )
        self.metrics.responses.labels(state.status, state.tenant).inc()
        outputs: list[Envelope[Any]] = [response_for(state)]
        conv_key = ctx.key("conv", state.conversation_id)
        conv = await ctx.load(conv_key, ConversationState) or ConversationState()
        if state.status == "completed":
            conv.history = history_after(state)
        if conv.active == state.request_id:
            conv.active = None
        if conv.waiting:
            following = conv.waiting.pop(0)
            outputs += await self._start(following, conv, ctx)
        else:
            ctx.save(conv_key, conv, self.config.run_ttl_s)
        return outputs

    # -- deadlines ----------------------------------------------------------------------

    async def expire(self, request_id: str, ctx: Context) -> list[Envelope[Any]]:
        state = await ctx.load(ctx.key("run", request_id), RunState)
        if state is None:
            return []
        state, expired = expire_run(state, ctx.now())
        if expired is None:
            return []  # finished meanwhile, or its deadline moved on
        # The deadline entry stays until the answer is delivered (the sweeper removes it
        # then): a crash between this commit and the publish leaves it for the next sweep,
        # whose job replays the recorded answer instead of losing it.
        return await self._finish(state, ctx, keep_deadline=True)
