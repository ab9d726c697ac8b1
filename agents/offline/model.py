"""The offline model: deterministic, no network, no key, enough to show the whole pipeline.

It is stateless like a real chat model: each call reads the last user message
(:func:`.intents.parse_asks`) and the tool results already in the conversation
after it, and decides the next step, using only the tools it is offered, by name:

1. When a calculation needs a remembered value ("my budget times 3"), it first calls
   ``recall``, alone.
2. Then every tool call the message needs goes out in one reply (they run in parallel):
   ``calculator`` with the recalled value substituted, ``current_time``, ``convert_units``,
   ``remember``...
3. Once every call has a result, it answers, one sentence per ask, and says plainly when a
   tool failed or is not available.

Same conversation, same reply, same tool-call ids (a hash of the conversation), so a
redelivered step asks for exactly the same calls. ``latency_s`` sleeps before each reply, to
stand in for a slow model in benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import operator
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from agentstream.agents.messages import (
    Message,
    ModelReply,
    ToolInvocation,
    ToolOutcome,
    count_tokens,
    messages_tokens,
)
from agentstream.agents.models.base import ModelPrice, ToolSpec, priced
from agentstream.agents.offline.delegation import Delegation, as_output, output_schema_of
from agentstream.agents.offline.intents import Ask, expression_in, parse_asks, substitute_memory
from agentstream.agents.tools import builtin_registry
from agentstream.agents.tools.calculator import format_number
from pydantic import JsonValue

__all__ = ["OfflineModel"]

_Call = tuple[str, dict[str, JsonValue]]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_GREETING = re.compile(r"^\s*(?:hi|hello|hey|good (?:morning|afternoon|evening))\b", re.I)
_TOOL_OF = {
    "remember": "remember",
    "recall": "recall",
    "calculate": "calculator",
    "time": "current_time",
    "convert_time": "convert_time",
    "units": "convert_units",
    "word_count": "word_count",
}
#: Tools the offline model knows by name: every other one is an app's own (.delegation).
_BUILTIN = frozenset(_TOOL_OF.values()) | frozenset(builtin_registry().names())
_CAPABILITIES = "calculate, tell the time in a city, convert units and remember facts for you"


# ``json.dumps`` with options builds a new encoder each call: these are built once (same text).
_SIGNATURE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_DIGEST_JSON = json.JSONEncoder(sort_keys=True)


def _signature(name: str, arguments: dict[str, JsonValue]) -> str:
    return _SIGNATURE_JSON.encode([name, arguments])


def _call_digest(messages: Sequence[Message]) -> str:
    """What the tool-call ids are named after: a hash of the conversation's JSON."""
    # The list as ``json.dumps([m.model_dump(mode="json") ...], sort_keys=True)`` writes it.
    conversation = f"[{', '.join(map(_message_json, messages))}]"
    return hashlib.sha256(conversation.encode()).hexdigest()[:16]


_MessageKey = tuple[str, str | None, str | None, str | None]
_MESSAGE_JSON: dict[_MessageKey, str] = {}
_MESSAGE_JSON_MAX = 512  # messages kept; all are dropped when full (a simple bound)
_MESSAGE_JSON_LONGEST = 2_000  # longer contents are encoded every time rather than kept


def _message_json(message: Message) -> str:
    """``message`` as the call digest's JSON writes it, kept for a message without tool calls.

    Every call sends the whole conversation again (system prompt, history, user message,
    earlier tool results), so most of it was encoded for an earlier call already. Such a
    message's JSON follows from the four fields of the key; a subclass may have more.
    """
    content = message.content
    if (
        type(message) is not Message
        or message.tool_calls
        or (content is not None and len(content) > _MESSAGE_JSON_LONGEST)
    ):
        return _DIGEST_JSON.encode(message.model_dump(mode="json"))
    key = (message.role, content, message.tool_call_id, message.name)
    text = _MESSAGE_JSON.get(key)
    if text is None:
        if len(_MESSAGE_JSON) >= _MESSAGE_JSON_MAX:
            _MESSAGE_JSON.clear()
        text = _MESSAGE_JSON[key] = _DIGEST_JSON.encode(message.model_dump(mode="json"))
    return text


@lru_cache(maxsize=64)
def _tools_tokens(tools: tuple[ToolSpec, ...]) -> int:
    """The prompt tokens of the tool specs: the same for every call with the same tools."""
    return count_tokens(json.dumps([t.model_dump(mode="json") for t in tools], sort_keys=True))


class _OfferedTools:
    """The prompt tokens and names of the tools last offered, kept while the same are offered.

    A worker offers the same spec objects on every call; telling that by identity spares
    hashing every spec to look up :func:`_tools_tokens`, whose cache would answer the same:
    it too finds identical specs equal, whatever their contents.
    """

    __slots__ = ("delegation", "names", "specs", "tokens")

    def __init__(self, tools: Sequence[ToolSpec]) -> None:
        self.specs = tuple(tools)
        self.tokens = _tools_tokens(self.specs)
        self.names = frozenset(tool.name for tool in self.specs)
        self.delegation = Delegation(self.specs, _BUILTIN)

    def same(self, tools: Sequence[ToolSpec]) -> bool:
        return len(tools) == len(self.specs) and all(map(operator.is_, tools, self.specs))


_PARSED_TEXT_MAX = 4_000  # longer messages are parsed every time rather than kept


@lru_cache(maxsize=256)
def _cached_asks(text: str) -> tuple[Ask, ...]:
    return tuple(parse_asks(text))


def _asks(text: str) -> list[Ask]:
    """``parse_asks(text)``, remembered: every step of a run reads the same user message."""
    if not text.strip():
        return [Ask("chat", "")]
    if len(text) > _PARSED_TEXT_MAX:
        return parse_asks(text)
    return list(_cached_asks(text))


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return match.group().replace(",", "") if match else None


class OfflineModel:
    """A rule-based stand-in for a chat model, driven entirely by the conversation."""

    def __init__(
        self, *, name: str = "offline", latency_s: float = 0.0, price: ModelPrice | None = None
    ) -> None:
        self.name = name
        self.latency_s = latency_s
        self.price = price or ModelPrice()
        self._offered = _OfferedTools(())

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> ModelReply:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        offered = self._offered
        if not offered.same(tools):
            offered = self._offered = _OfferedTools(tools)
        turn = _Turn(messages, offered.names)
        prompt = messages_tokens(messages) + offered.tokens
        delegated = _delegate(offered.delegation, turn, messages) if offered.delegation else None
        if isinstance(delegated, dict):
            calls: dict[str, _Call] = delegated
        else:
            calls = {} if delegated is not None else turn.next_calls()
        if calls:
            digest = _call_digest(messages)
            invocations = [
                ToolInvocation(id=f"call_{digest}_{i}", name=name, arguments=args)
                for i, (name, args) in enumerate(calls.values())
            ]
            completion = count_tokens(json.dumps(list(calls)))  # the calls' signatures
            return ModelReply(
                tool_calls=invocations,
                usage=priced(prompt, completion, self.price),
                model=self.name,
                finish_reason="tool_calls",
            )
        text, finish = delegated if isinstance(delegated, str) else turn.answer(), "stop"
        schema = output_schema_of(messages)
        if schema is not None:
            chat_only = all(ask.kind == "chat" for ask in turn.asks)
            text = as_output(schema, turn.text if chat_only and delegated is None else text)
        if max_tokens is not None and count_tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        return ModelReply(
            text=text,
            usage=priced(prompt, count_tokens(text), self.price),
            model=self.name,
            finish_reason=finish,
        )


def _delegate(
    delegation: Delegation, turn: _Turn, messages: Sequence[Message]
) -> dict[str, _Call] | str | None:
    """The delegation of this turn: the call to make, the answer from a delegated call's
    result, or None when the turn is the built-in tools' (see :mod:`.delegation`)."""
    since = list(messages[turn.start :])
    answer = delegation.answer(since)
    if answer is not None:
        return answer
    if delegation.called(since) or any(m.role == "tool" for m in since):
        return None
    doing = [ask for ask in turn.asks if ask.kind != "chat"]
    handled = bool(doing) and all(_TOOL_OF[ask.kind] in turn.offered for ask in doing)
    choice = delegation.choose(turn.text, handled)
    if choice is None:
        return None
    spec, arguments = choice
    return {_signature(spec.name, arguments): (spec.name, arguments)}


class _Turn:
    """One user message, the tool results it has so far, and what follows from them."""

    def __init__(self, messages: Sequence[Message], offered: frozenset[str]) -> None:
        last_user = len(messages) - 1  # the last user message, -1 if there is none
        while last_user >= 0 and messages[last_user].role != "user":
            last_user -= 1
        self.start = last_user + 1
        self.text = (messages[last_user].content or "") if last_user >= 0 else ""
        self.asks = _asks(self.text)
        self.offered = offered
        invoked: dict[str, ToolInvocation] = {}
        self.outcomes: dict[str, ToolOutcome] = {}
        for message in messages[last_user + 1 :]:
            for call in message.tool_calls:
                invoked[call.id] = call
            if message.role == "tool" and message.tool_call_id in invoked:
                call = invoked[message.tool_call_id]
                outcome = ToolOutcome.from_content(message.content)
                self.outcomes[_signature(call.name, call.arguments)] = outcome

    def _outcome(self, call: _Call) -> ToolOutcome | None:
        return self.outcomes.get(_signature(*call))

    def _recalled(self, key: str) -> str | None:
        outcome = self._outcome(("recall", {"query": key}))
        if outcome is None or not outcome.ok:
            return None
        facts = _facts(outcome.output)
        value = facts[0].get("value") if facts else None
        return value if isinstance(value, str) else None

    def _expression(self, ask: Ask) -> str | None:
        """The calculator expression of ``ask``, once its remembered values are known."""
        if not ask.memory:
            value = ask.arguments.get("expression")
            return value if isinstance(value, str) else None
        numbers = {key: _first_number(self._recalled(key) or "") for key in ask.memory}
        if any(number is None for number in numbers.values()):
            return None
        known = {key: number for key, number in numbers.items() if number is not None}
        return expression_in(substitute_memory(ask.text, known))

    def _call(self, ask: Ask) -> _Call | None:
        if ask.kind == "chat":
            return None
        if ask.kind == "calculate":
            expression = self._expression(ask)
            return None if expression is None else ("calculator", {"expression": expression})
        return _TOOL_OF[ask.kind], dict(ask.arguments)

    def next_calls(self) -> dict[str, _Call]:
        """The calls still to make, by signature, or none when it is time to answer."""
        recalls: list[_Call] = [
            ("recall", {"query": key})
            for ask in self.asks
            for key in (ask.memory if ask.kind == "calculate" else ())
        ]
        waiting = any(self._outcome(c) is None for c in recalls)
        wanted = list(recalls)
        if not (waiting and "recall" in self.offered):
            wanted += [c for ask in self.asks if (c := self._call(ask)) is not None]
        calls: dict[str, _Call] = {}
        for call in wanted:
            key = _signature(*call)
            if call[0] in self.offered and key not in self.outcomes:
                calls.setdefault(key, call)
        return calls

    def answer(self) -> str:
        return " ".join(self._sentence(ask) for ask in self.asks)

    def _sentence(self, ask: Ask) -> str:
        if ask.kind == "chat":
            if _GREETING.match(self.text):
                return f"Hello! I am the offline model: I can {_CAPABILITIES}."
            clipped = " ".join(self.text.split())[:120]
            return f'You said: "{clipped}". I am the offline model: I can {_CAPABILITIES}.'
        if ask.kind == "calculate" and ask.memory:
            for key in ask.memory:
                if "recall" not in self.offered:
                    return f"I cannot look up your {key} here: the recall tool is not available."
                value = self._recalled(key)
                if value is None:
                    return f'I do not know your {key} yet; tell me "remember that my {key} is …".'
                if _first_number(value) is None:
                    return f'Your {key} is "{value}", which is not a number I can compute with.'
        call = self._call(ask)
        tool = call[0] if call else _TOOL_OF[ask.kind]
        if tool not in self.offered:
            return f"I cannot {_verb(ask)} here: the {tool} tool is not available."
        outcome = self._outcome(call) if call else None
        if outcome is None:
            return f"I could not {_verb(ask)}."
        if not outcome.ok:
            return f"I could not {_verb(ask)}: {outcome.error}."
        return _report(ask, outcome.output, self._recalled)


def _verb(ask: Ask) -> str:
    args = ask.arguments
    if ask.kind == "calculate":
        return f"compute {args['expression']}" if "expression" in args else "compute that"
    if ask.kind == "units":
        value = format_number(float(args["value"]))
        return f"convert {value} {args['from_unit']} to {args['to_unit']}"
    return {
        "remember": "save that",
        "recall": "look that up in memory",
        "time": f"get the time in {args.get('zone')}",
        "convert_time": "convert that time",
        "word_count": "count the words",
    }.get(ask.kind, "do that")


def _text(value: JsonValue) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_number(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _moment(info: JsonValue) -> str:
    if not isinstance(info, dict):
        return _text(info)
    zone, offset = _text(info.get("zone")), _text(info.get("utc_offset"))
    where = "UTC" if zone == "UTC" else f"{zone} (UTC{offset})"
    day = f"{_text(info.get('weekday'))}, {_text(info.get('date'))}"
    return f"{_text(info.get('time'))} in {where} on {day}"


def _facts(output: JsonValue) -> list[dict[str, JsonValue]]:
    """The facts of a recall output: ``{"facts": [...]}`` or a bare list of facts."""
    listed = output.get("facts") if isinstance(output, dict) else output
    return [f for f in listed if isinstance(f, dict)] if isinstance(listed, list) else []


def _report(ask: Ask, output: JsonValue, recalled: Callable[[str], str | None]) -> str:
    """The sentence that answers ``ask`` from its tool's successful ``output``."""
    out: dict[str, JsonValue] = output if isinstance(output, dict) else {"result": output}
    if ask.kind == "remember":
        fact = out.get("remembered", out)
        if isinstance(fact, dict) and "key" in fact:
            key, value = _text(fact.get("key")), _text(fact.get("value"))
            if value.lower() == _text(ask.arguments.get("fact")).strip(" .").lower():
                return f"I will remember that: {value}."
            return f"I will remember that your {key} is {value}."
        return "I will remember that."
    if ask.kind == "recall":
        listed_facts = out.get("facts")
        facts = (
            [f for f in listed_facts if isinstance(f, dict)]
            if isinstance(listed_facts, list)
            else []
        )
        query = _text(ask.arguments.get("query", ""))
        if not facts:
            return (
                f"I do not have your {query} remembered."
                if query
                else "I do not remember anything yet."
            )
        if query:
            return f"Your {_text(facts[0].get('key'))} is {_text(facts[0].get('value'))}."
        summary = "; ".join(f"{_text(f.get('key'))}: {_text(f.get('value'))}" for f in facts)
        return f"Here is what I remember: {summary}."
    if ask.kind == "calculate":
        sentence = f"{_text(out.get('expression'))} = {_text(out.get('result'))}."
        known = ", ".join(f"your {key} is {recalled(key)}" for key in ask.memory)
        return f"{known[:1].upper()}{known[1:]}, so {sentence}" if known else sentence
    if ask.kind == "time":
        return f"It is {_moment(out)}."
    if ask.kind == "convert_time":
        return f"{_moment(out.get('from'))} is {_moment(out.get('to'))}."
    if ask.kind == "units":
        return (
            f"{_text(out.get('value'))} {_text(out.get('from_unit'))} = "
            f"{_text(out.get('result'))} {_text(out.get('to_unit'))}."
        )
    if ask.kind == "word_count":
        return f"The text has {_text(out.get('words'))} words."
    return _text(output)
