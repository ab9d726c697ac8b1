"""Model routing: the cheap model first, the large one when asked for or when needed.

:class:`ModelRouter` picks the model of each call. A request can ask for a route
(``"small"``/``"cheap"``, ``"large"``/``"big"``) or a configured model by name; an unknown
name is refused (:class:`UnknownModel`, permanent, so the request ends ``rejected`` rather
than silently running on another model). Otherwise the small model answers, unless the
prompt is longer than ``large_prompt_tokens``. After a small-model reply,
:meth:`ModelRouter.needs_escalation` says whether to ask the large model instead: an empty
reply, a call of a tool that was not offered, or arguments that were not JSON.
:meth:`ModelRouter.complete` does both steps and sums the usage of both calls; it never
overrides a model the request asked for.

The router holds models but no state. A handler that caches replies calls :meth:`choose`
(then :meth:`needs_escalation`) itself and keys the cache by the chosen model's name;
:meth:`complete` is the same thing without a cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agentstream.agents.messages import UNPARSED_ARGUMENTS, Message, ModelReply, message_tokens
from agentstream.agents.models.base import Model, ToolSpec
from agentstream.agents.models.cache import (
    cache_key,
)  # re-exported: routing and caching are decided together
from agentstream.agents.run import RunState
from agentstream.schemas import PermanentError

__all__ = ["LARGE_ROUTES", "SMALL_ROUTES", "ModelRouter", "UnknownModel", "cache_key"]

SMALL_ROUTES = frozenset({"small", "cheap", "default"})
LARGE_ROUTES = frozenset({"large", "big"})


class UnknownModel(PermanentError):
    """The request asked for a model that is not configured."""


class ModelRouter:
    """Chooses between a small (cheap) and a large model; either may be the same model."""

    def __init__(
        self,
        small: Model,
        large: Model | None = None,
        *,
        others: Sequence[Model] = (),
        large_prompt_tokens: int | None = 6000,
        escalate_on_bad_reply: bool = True,
    ) -> None:
        self.small = small
        self.large = large or small
        self.large_prompt_tokens = large_prompt_tokens
        self.escalate_on_bad_reply = escalate_on_bad_reply
        self._by_name: dict[str, Model] = {m.name: m for m in (*others, self.large, self.small)}

    @property
    def models(self) -> Mapping[str, Model]:
        return dict(self._by_name)

    @property
    def default_name(self) -> str:
        """The name of the model used when nothing else applies: the small one."""
        return self.small.name

    def choose(self, state: RunState) -> Model:
        """The model for the next call of a run (its requested model, its prompt size)."""
        return self.route(state.requested_model, state.messages)

    def route(self, requested: str | None, messages: Sequence[Message]) -> Model:
        """The model for a call asking for ``requested`` (a route, a name, or None)."""
        if requested:
            route = requested.strip().lower()
            if route in LARGE_ROUTES:
                return self.large
            if route in SMALL_ROUTES:
                return self.small
            if requested in self._by_name:
                return self._by_name[requested]
            known = ", ".join(sorted({*self._by_name, "small", "large"}))
            raise UnknownModel(f"unknown model {requested!r} (known: {known})")
        limit = self.large_prompt_tokens
        if limit is not None and sum(message_tokens(m) for m in messages) > limit:
            return self.large
        return self.small

    def needs_escalation(self, model: Model, reply: ModelReply, tools: Sequence[ToolSpec]) -> bool:
        """Whether the large model should redo a call the small model answered badly."""
        if not self.escalate_on_bad_reply or model is not self.small or self.large is self.small:
            return False
        if reply.is_empty:
            return True
        offered = {t.name for t in tools}
        return any(
            call.name not in offered or UNPARSED_ARGUMENTS in call.arguments
            for call in reply.tool_calls
        )

    async def complete(
        self,
        requested: str | None,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        """One routed model call, escalated once if needed; usage covers every call made."""
        model = self.route(requested, messages)
        reply = await model.complete(messages, tools, max_tokens=max_tokens)
        if requested or not self.needs_escalation(model, reply, tools):
            return reply  # a model asked for by name or route is not second-guessed
        retried = await self.large.complete(messages, tools, max_tokens=max_tokens)
        return retried.model_copy(update={"usage": reply.usage + retried.usage})
