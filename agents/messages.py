"""The conversation a model reads and the reply it gives, plus the token budget of a history.

These are the shapes every model client speaks (:mod:`agentstream.agents.models.base`): a list of
:class:`Message` in, a :class:`ModelReply` out. They are plain pydantic models so the
handlers can keep them in the state store as JSON. Token counts here are estimates
(:func:`count_tokens`, about four characters a token): good enough to budget a history and to
report usage when a server does not, and deterministic, so the same conversation is always
trimmed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from agentstream.schemas import Usage
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "UNPARSED_ARGUMENTS",
    "Message",
    "ModelReply",
    "Role",
    "ToolInvocation",
    "ToolOutcome",
    "count_tokens",
    "message_tokens",
    "messages_tokens",
    "trim_history",
]

Role = Literal["system", "user", "assistant", "tool"]

#: Key under which a client puts tool-call arguments that were not a JSON object, so the
#: registry rejects the call (naming this field) instead of the client guessing.
UNPARSED_ARGUMENTS = "_unparsed_arguments"

_FAILURE_KEYS = frozenset({"error", "error_class"})
_MESSAGE_OVERHEAD = 4  # role and separators, roughly what chat templates add per message
# ``json.dumps`` with options builds a new encoder each call: this one is built once.
_ARGUMENTS_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


class ToolInvocation(BaseModel):
    """One tool call asked by the model: ``id`` pairs it with its result message."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)


class Message(BaseModel):
    """One chat message, in the OpenAI chat-completions shape.

    An assistant message either answers (``content``) or asks for tools (``tool_calls``);
    each tool message answers one of those calls, named by ``tool_call_id``.
    """

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str | None = None
    tool_calls: list[ToolInvocation] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=text)

    @classmethod
    def assistant(cls, text: str | None, tool_calls: Sequence[ToolInvocation] = ()) -> Message:
        return cls(role="assistant", content=text, tool_calls=list(tool_calls))

    @classmethod
    def tool(cls, call_id: str, name: str, content: str) -> Message:
        return cls(role="tool", content=content, tool_call_id=call_id, name=name)


class ToolOutcome(BaseModel):
    """The result of one tool call: as the tool and memory workers record it (under the
    call's idempotency key) and answer it, as the loop records it and the model reads it.

    In a tool message the outcome is JSON: the output itself when ``ok``, else
    ``{"error": ..., "error_class": ...}``, which is how :meth:`from_content` tells them apart.
    ``duration_ms`` is reported in the ``tool_result``; the model never sees it.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    output: JsonValue = None
    error: str | None = None
    error_class: str | None = None
    duration_ms: float = 0.0

    def to_content(self) -> str:
        if self.ok:
            return json.dumps(self.output, ensure_ascii=False, sort_keys=True)
        failure: dict[str, JsonValue] = {"error": self.error or "the tool failed"}
        if self.error_class:
            failure["error_class"] = self.error_class
        return json.dumps(failure, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_content(cls, content: str | None) -> ToolOutcome:
        try:
            value: JsonValue = json.loads(content or "null")
        except json.JSONDecodeError:
            return cls(ok=True, output=content)
        if isinstance(value, dict) and "error" in value and set(value) <= _FAILURE_KEYS:
            error_class = value.get("error_class")
            return cls(
                ok=False,
                error=str(value["error"]),
                error_class=error_class if isinstance(error_class, str) else None,
            )
        return cls(ok=True, output=value)


class ModelReply(BaseModel):
    """What one model call returned: an answer, tool calls, or both, and what it cost."""

    text: str | None = None
    tool_calls: list[ToolInvocation] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str
    finish_reason: str = "stop"

    @property
    def is_empty(self) -> bool:
        """Neither text nor tool calls: nothing the loop can act on."""
        return not (self.text and self.text.strip()) and not self.tool_calls


def count_tokens(text: str | None) -> int:
    """Estimated tokens of ``text``: about one per four characters, never 0 for non-empty."""
    if not text:
        return 0
    return (len(text) + 3) // 4


def message_tokens(message: Message) -> int:
    """Estimated tokens of one message, its tool calls included."""
    tokens = _MESSAGE_OVERHEAD + count_tokens(message.content)
    for call in message.tool_calls:
        tokens += count_tokens(call.name) + count_tokens(_ARGUMENTS_JSON.encode(call.arguments))
    return tokens


def messages_tokens(messages: Sequence[Message]) -> int:
    """``sum(message_tokens(m) for m in messages)``: the estimated tokens of a whole prompt.

    A model client counts every prompt it is sent; most messages have no tool calls, and
    their content is counted inline here rather than with two calls a message.
    """
    tokens = _MESSAGE_OVERHEAD * len(messages)
    for message in messages:
        if message.tool_calls:
            tokens += message_tokens(message) - _MESSAGE_OVERHEAD
        elif content := message.content:
            tokens += (len(content) + 3) // 4  # count_tokens(content), non-empty
    return tokens


def trim_history(messages: Sequence[Message], budget_tokens: int) -> list[Message]:
    """The newest messages of ``messages`` whose estimated tokens fit ``budget_tokens``.

    Leading system messages are always kept (they count against the budget). The rest is
    cut from the oldest end in blocks: an assistant message that asked for tools stays
    together with its tool results, because an API rejects a tool result whose call is gone.
    Tool results whose call was already cut are dropped for the same reason. Whatever is
    kept is contiguous: nothing in the middle of a conversation is skipped.
    """
    head: list[Message] = []
    index = 0
    while index < len(messages) and messages[index].role == "system":
        head.append(messages[index])
        index += 1
    remaining = budget_tokens - sum(message_tokens(m) for m in head)

    blocks: list[list[Message]] = []
    for message in messages[index:]:
        if message.role == "tool":
            if blocks and blocks[-1][0].tool_calls:
                blocks[-1].append(message)
            # else: an orphan result, dropped
            continue
        blocks.append([message])

    kept: list[Message] = []
    for block in reversed(blocks):
        cost = sum(message_tokens(m) for m in block)
        if cost > remaining:
            break
        remaining -= cost
        kept[:0] = block
    return head + kept
