"""The router: one hop that sequences each conversation's turns and picks the agent of each.

Upstream systems and the ingress publish every request to ``user_request``; each declared
agent reads only its own input topic ``agent.<name>`` (ADR 23). The router group reads
``user_request`` and ``agent_response`` and, per conversation (``route:<id>`` in the store):

- forwards a request to its agent's input topic as a ``turn`` task when no earlier turn of
  the conversation is still unanswered, otherwise queues it, in arrival order;
- on the terminal ``agent_response`` of the turn in progress, forwards the next queued one
  (also when that answer's record cannot be read: its dead letter ends the turn).

So the turns of one conversation run one after another in the order of their requests on the
``user_request`` partition, whichever agents answer them. The agent of a turn is the one the
request names, else the agent that answered the conversation's last turn (after a handoff,
the target keeps the conversation), else the app's default. A request naming an undeclared
agent is answered ``rejected`` here when its turn comes (its answer does not overtake the
turns before it), as is one whose record does not decode.

A request already routed (``routed:<request_id>``) is a duplicate and changes nothing, so a
replay or a second publish of a request cannot block its conversation behind a turn that
will never be answered.

The conversation's state is read and written on every request and every answer, while a
queued turn is needed once, when it is forwarded: queued turns are kept as their JSON text
and parsed only then. Validating every queued request on every read made a conversation
with a backlog of turns cost the router time in proportion to that backlog, twice per turn
(bench/README.md, 2026-12-08).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Literal

from agentstream.handlers.agent.events import Correlated, ids_from_raw, response_event
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.route import Route
from agentstream.schemas import (
    AgentResponse,
    AgentResponseData,
    AgentTask,
    AgentTaskData,
    Envelope,
    UserRequest,
    derive_id,
)
from agentstream.topics import Inbox, LogicalTopic, Topic
from pydantic import BaseModel, Field, TypeAdapter

__all__ = ["ConversationRoute", "Refusal", "RouterHandlers", "turn_task"]

log = logging.getLogger(__name__)

SOURCE = "router"


class Refusal(BaseModel):
    """A request that could not be read (its record did not decode or validate), waiting in
    its conversation's queue for its ``rejected`` answer, so that the answer does not
    overtake the turns before it."""

    refusal: Literal[True] = True
    request_id: str
    conversation_id: str
    tenant: str
    traceparent: str | None = None
    reason: str


class ConversationRoute(BaseModel):
    """The router's state of one conversation."""

    active: str | None = Field(None, description="The request whose answer is awaited.")
    queued: list[str] = Field(
        default_factory=list,
        description="The later turns in arrival order, each the JSON text of a UserRequest "
        "or a Refusal, parsed when its turn comes (see the module docstring).",
    )
    queue: list[UserRequest | Refusal] = Field(
        default_factory=list,
        description="Turns queued by a router of before 2026-12-08 (they come before "
        "``queued``); read, never added to.",
    )
    last_agent: str | None = Field(None, description="Who answered the last turn.")

    def push(self, turn: UserRequest | Refusal) -> None:
        """Queue ``turn`` behind the others."""
        self.queued.append(turn.model_dump_json())

    def pop(self) -> UserRequest | Refusal | None:
        """The first queued turn, taken out of the queue (None when there is none)."""
        if self.queue:
            return self.queue.pop(0)
        if self.queued:
            return _QUEUED.validate_json(self.queued.pop(0))
        return None


_QUEUED: TypeAdapter[UserRequest | Refusal] = TypeAdapter(UserRequest | Refusal)


class _Routed(BaseModel):
    """The mark of a request the router has taken (its presence is all that counts)."""


def turn_task(request: UserRequest, agent: str) -> AgentTask:
    """The forward of ``request`` to ``agent``: its id derived from the request's, its time
    the request's, so a rerun forwards the very same bytes."""
    return AgentTask(
        id=derive_id(request.request_id, "turn"),
        source=SOURCE,
        time=request.time,
        request_id=request.request_id,
        conversation_id=request.conversation_id,
        causation_id=request.id,
        tenant=request.tenant,
        traceparent=request.traceparent,
        data=AgentTaskData(
            agent=agent, kind="turn", request=request.data, requested_at=request.time
        ),
    )


def _rejected(request: Correlated, reason: str) -> AgentResponse:
    """The ``rejected`` answer of a request the router cannot forward: the same id as any
    answer of that request (:func:`response_event`)."""
    return response_event(request, AgentResponseData(status="rejected", error=reason), SOURCE)


class RouterHandlers:
    """The router's routes for an app whose agents are ``agents``, ``default`` among them."""

    def __init__(self, agents: Collection[str], default: str, *, ttl_s: int) -> None:
        self.agents = frozenset(agents)
        self.default = default
        self.ttl_s = ttl_s
        self.publishes: tuple[LogicalTopic, ...] = (
            *(Inbox(a) for a in sorted(self.agents)),
            Topic.AGENT_RESPONSE,
        )

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.USER_REQUEST,
                self.on_user_request,
                "router.user_request",
                on_dead_letter=self.on_dead_letter,
                publishes=self.publishes,
            ),
            Route(
                Topic.AGENT_RESPONSE,
                self.on_agent_response,
                "router.agent_response",
                on_dead_letter=self.on_answer_dead_letter,
                publishes=self.publishes,
            ),
        ]

    async def on_user_request(self, event: UserRequest, ctx: Context) -> list[Envelope[Any]]:
        conv_key = ctx.key("route", event.conversation_id)
        routed_key = ctx.key("routed", event.request_id)
        await ctx.prefetch(conv_key, routed_key)
        if await ctx.load(routed_key, _Routed) is not None:
            log.info("request %s already routed; duplicate ignored", event.request_id)
            return []
        conv = await ctx.load(conv_key, ConversationRoute) or ConversationRoute()
        ctx.save(routed_key, _Routed(), self.ttl_s)
        if conv.active is not None:
            # Queued even when it will be refused: its answer must not overtake the turns
            # before it.
            conv.push(event)
            ctx.save(conv_key, conv, self.ttl_s)
            return []
        return self._next(event.conversation_id, conv, ctx, event)

    async def on_agent_response(self, event: AgentResponse, ctx: Context) -> list[Envelope[Any]]:
        conv_key = ctx.key("route", event.conversation_id)
        conv = await ctx.load(conv_key, ConversationRoute)
        if conv is None:
            return []  # a conversation this router never saw (a rejected request, say)
        answered_by = event.data.agent if event.data.agent in self.agents else None
        if conv.active != event.request_id:
            if answered_by is not None and answered_by != conv.last_agent:
                conv.last_agent = answered_by
                ctx.save(conv_key, conv, self.ttl_s)
            return []  # nothing changes: no write
        if answered_by is not None:
            conv.last_agent = answered_by
        return self._release(event.conversation_id, conv, ctx)

    async def on_answer_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        """An answer the router could not handle (its record did not decode: a newer
        agent's, say) still ends its turn: the conversation's next turn starts, so no later
        request waits for an answer the router will never read. Its ids come from the
        event or, undecoded, from its raw bytes."""
        if isinstance(event, AgentResponse):
            request_id, conversation_id = event.request_id, event.conversation_id
        elif event is None and (ids := ids_from_raw(raw)) is not None:
            request_id, conversation_id = ids["request_id"], ids["conversation_id"]
        else:
            return []
        conv = await ctx.load(ctx.key("route", conversation_id), ConversationRoute)
        if conv is None or conv.active != request_id:
            return []
        log.warning(
            "answer of %s could not be read (%s); the conversation's next turn starts",
            request_id,
            error,
        )
        return self._release(conversation_id, conv, ctx)

    def _release(
        self, conversation_id: str, conv: ConversationRoute, ctx: Context
    ) -> list[Envelope[Any]]:
        """The active turn is answered: start the next queued one, if any."""
        conv.active = None
        return self._next(conversation_id, conv, ctx)

    def _next(
        self,
        conversation_id: str,
        conv: ConversationRoute,
        ctx: Context,
        first: UserRequest | None = None,
    ) -> list[Envelope[Any]]:
        """Start the first queued request (``first``, then the queue's): the answers of the
        ones naming an undeclared agent (``rejected``), then the forward of the first one
        that names none or a declared one (it becomes the active turn)."""
        out: list[Envelope[Any]] = []
        while (request := first or conv.pop()) is not None:
            first = None
            if isinstance(request, Refusal):
                out.append(_rejected(request, request.reason))
                continue
            wanted = request.data.agent
            if wanted is not None and wanted not in self.agents:
                known = ", ".join(sorted(self.agents))
                out.append(_rejected(request, f"unknown agent {wanted!r} (declared: {known})"))
                continue
            agent = wanted or conv.last_agent or self.default
            if agent not in self.agents:
                agent = self.default  # the last agent is no longer declared
            conv.active = request.request_id
            out.append(turn_task(request, agent))
            break
        ctx.save(ctx.key("route", conversation_id), conv, self.ttl_s)
        return out

    async def on_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        """A request that cannot be routed (undecodable, invalid) is answered ``rejected``
        from the correlation ids it has, in its turn: while an earlier turn of its
        conversation is unanswered, the refusal waits in the queue. Without ids, the dead
        letter is all there is."""
        reason = f"{type(error).__name__}: {error}"
        if isinstance(event, UserRequest):
            refusal = Refusal(
                request_id=event.request_id,
                conversation_id=event.conversation_id,
                tenant=event.tenant,
                traceparent=event.traceparent,
                reason=reason,
            )
        elif event is None and (ids := ids_from_raw(raw)) is not None:
            refusal = Refusal(
                request_id=ids["request_id"],
                conversation_id=ids["conversation_id"],
                tenant=ids["tenant"],
                reason=reason,
            )
        else:
            return []
        conv_key = ctx.key("route", refusal.conversation_id)
        conv = await ctx.load(conv_key, ConversationRoute)
        if conv is None or conv.active is None:
            return [_rejected(refusal, reason)]
        conv.push(refusal)
        ctx.save(conv_key, conv, self.ttl_s)
        return []
