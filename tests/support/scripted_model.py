"""A model scripted by the test, for handler and loop tests, in the manner of pydantic-ai's
``FunctionModel`` (``pydantic_ai/models/function.py``).

:class:`FunctionModel` hands every call to a test function that sees what a real model sees
(the messages and the offered tools) and returns the reply: plain text, tool calls, or a
whole :class:`ModelReply`. It records each call, so a test can check what the model was
asked, and how often. :func:`scripted` builds one from a fixed list of turns: like a real
chat model it is stateless, choosing its turn from the conversation (the number of
assistant messages since the last user message), so a redelivered step gets the same reply.

Tool calls without an id get one derived by the loop from the request and the step, which
is what makes the ``tool_call`` events of a step deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from agentstream.agents import Message, ModelReply, ToolInvocation, ToolSpec
from agentstream.schemas import Usage
from pydantic import JsonValue

__all__ = [
    "Call",
    "FunctionModel",
    "Reply",
    "answer",
    "call",
    "scripted",
    "tools",
    "turn_of",
]

Reply: TypeAlias = ModelReply | str | Sequence[ToolInvocation]
ReplyFunction: TypeAlias = Callable[[Sequence[Message], Sequence[ToolSpec]], Reply]


@dataclass(frozen=True)
class Call:
    """One call the model got: the conversation and the tools offered."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]


@dataclass
class FunctionModel:
    """A :class:`agentstream.agents.Model` whose replies ``function`` decides."""

    function: ReplyFunction
    name: str = "scripted"
    usage: Usage = field(
        default_factory=lambda: Usage(
            prompt_tokens=10, completion_tokens=2, total_tokens=12, model_calls=1
        )
    )
    calls: list[Call] = field(default_factory=list)

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        self.calls.append(Call(tuple(messages), tuple(tools)))
        reply = self.function(messages, tools)
        if isinstance(reply, ModelReply):
            return reply
        if isinstance(reply, str):
            return ModelReply(text=reply, usage=self.usage, model=self.name)
        return ModelReply(
            tool_calls=list(reply), usage=self.usage, model=self.name, finish_reason="tool_calls"
        )


def call(name: str, arguments: dict[str, JsonValue] | None = None, id: str = "") -> ToolInvocation:
    """A tool call as the model asks it; without ``id`` the loop derives one."""
    return ToolInvocation(id=id, name=name, arguments=arguments or {})


def tools(*calls: ToolInvocation) -> list[ToolInvocation]:
    """One reply asking for ``calls``, all in parallel."""
    return list(calls)


def answer(text: str) -> str:
    """One reply answering with ``text``."""
    return text


def turn_of(messages: Sequence[Message]) -> int:
    """Which model call of the current run this is, counted from 0: the assistant messages
    after the last user message."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return sum(1 for m in messages[last_user + 1 :] if m.role == "assistant")


def scripted(*turns: Reply, name: str = "scripted") -> FunctionModel:
    """A model replying ``turns[n]`` to the n-th call of each run; past the script, the
    last turn again (so a model that keeps asking for tools keeps asking)."""
    if not turns:
        raise ValueError("a script needs at least one turn")

    def reply(messages: Sequence[Message], offered: Sequence[ToolSpec]) -> Reply:
        return turns[min(turn_of(messages), len(turns) - 1)]

    return FunctionModel(reply, name=name)
