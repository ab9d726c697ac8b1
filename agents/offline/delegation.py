"""What the offline model does with declared agents: hand off, call an agent or an app's
own tool, and answer in an agent's output type. Deterministic, like the rest of it.

- A handoff tool (``transfer_to_<agent>``) or an agent tool (its one argument ``input``)
  is called when the user's message shares enough words with the tool's description (the
  target agent's description), and the tools offered directly cannot do what is asked.
- A tool that is neither built in nor a delegation (an app's own tool) is called when its
  description matches the message, its arguments filled from the message: a string with a
  ``pattern`` gets the first match, another string the message, a number its first number.
- An agent tool's result is the answer (``The <agent> agent says: ...``); an app tool's
  result is reported as JSON.
- When the system prompt asks for a JSON object with a schema (an agent's output type), the
  answer is such an object built from the text answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from agentstream.agents.app import OUTPUT_SCHEMA_MARK
from agentstream.agents.messages import Message, ToolInvocation, ToolOutcome
from agentstream.agents.models.base import ToolSpec
from pydantic import JsonValue

__all__ = ["Delegation", "as_output", "output_schema_of"]

_WORD = re.compile(r"[a-z][a-z0-9]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ARITHMETIC = re.compile(r"\d\s*(?:[-+*/x\u00d7^%]|plus|minus|times|divided)\s*\d", re.I)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "please",
        "that",
        "the",
        "their",
        "them",
        "then",
        "they",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "agent",
        "agents",
        "hand",
        "conversation",
        "handle",
        "handles",
        "questions",
        "about",
        "ask",
    ]
)
#: Words a message implies without saying them.
_IMPLIED = {"calculate": ("arithmetic", "math", "calculation", "compute", "calculations")}


def _words(text: str) -> set[str]:
    """The words of ``text`` that say something, each once, a plural as its singular."""
    words = {w for w in _WORD.findall(text.lower()) if w not in _STOP}
    return {w[:-1] if len(w) > 4 and w.endswith("s") else w for w in words}


def _is_agent_tool(spec: ToolSpec) -> bool:
    props = spec.parameters.get("properties")
    return isinstance(props, dict) and set(props) == {"input"}


def _is_handoff(spec: ToolSpec) -> bool:
    return spec.name.startswith("transfer_to_")


class Delegation:
    """The delegation and app tools among ``tools``, as the offline model uses them."""

    def __init__(self, tools: Sequence[ToolSpec], builtin: frozenset[str]) -> None:
        self.handoffs = [t for t in tools if _is_handoff(t)]
        self.agents = [t for t in tools if _is_agent_tool(t)]
        self.own = [
            t
            for t in tools
            if t.name not in builtin and not _is_handoff(t) and not _is_agent_tool(t)
        ]

    def __bool__(self) -> bool:
        return bool(self.handoffs or self.agents or self.own)

    def choose(self, text: str, handled: bool) -> tuple[ToolSpec, dict[str, JsonValue]] | None:
        """The delegation or app tool to call for ``text``, if one fits; ``handled``: the
        tools offered directly can answer it, so only a clearly better match delegates."""
        words = _words(text)
        if _ARITHMETIC.search(text):
            words |= {"calculate", *_IMPLIED["calculate"]}
        best: tuple[int, ToolSpec] | None = None
        for spec in [*self.own, *self.agents, *self.handoffs]:
            score = len(words & _words(spec.description)) + 2 * _pattern_hits(spec, text)
            if score and (best is None or score > best[0]):
                best = (score, spec)
        if best is None or (handled and best[0] < 2):
            return None
        spec = best[1]
        if _is_handoff(spec):
            return spec, {"reason": f"the request is about {_topic(words, spec)}"}
        if _is_agent_tool(spec):
            return spec, {"input": text}
        return spec, _arguments(spec, text)

    def answer(self, messages: Sequence[Message]) -> str | None:
        """The answer from a delegation or app tool result of this turn, if there is one."""
        calls: dict[str, ToolInvocation] = {}
        by_name = {t.name: t for t in [*self.agents, *self.own]}
        answer: str | None = None
        for message in messages:
            for call in message.tool_calls:
                calls[call.id] = call
            if message.role != "tool" or message.tool_call_id not in calls:
                continue
            call = calls[message.tool_call_id]
            spec = by_name.get(call.name)
            if spec is None:
                continue
            outcome = ToolOutcome.from_content(message.content)
            if not outcome.ok:
                answer = f"I could not get an answer from {call.name}: {outcome.error}."
            elif spec in self.agents:
                who = call.name.removeprefix("ask_")
                answer = f"The {who} agent says: {_plain(outcome.output)}"
            else:
                answer = f"{call.name} found: {_fields(outcome.output)}."
        return answer

    def called(self, messages: Sequence[Message]) -> bool:
        """Whether this turn already called a delegation or app tool."""
        names = {t.name for t in [*self.agents, *self.own, *self.handoffs]}
        return any(c.name in names for m in messages for c in m.tool_calls)


def _pattern_hits(spec: ToolSpec, text: str) -> int:
    """How many of the tool's patterned string arguments the message has a value for."""
    props = spec.parameters.get("properties")
    if not isinstance(props, dict):
        return 0
    patterns = [p.get("pattern") for p in props.values() if isinstance(p, dict)]
    return sum(
        1
        for p in patterns
        if isinstance(p, str) and _specific(p) and re.search(p.strip("^$"), text)
    )


def _specific(pattern: str) -> bool:
    """Whether a pattern names something of its own (``INV-\\d{4}``), rather than a shape
    any text has (``^[a-z0-9-]+$``): two letters or digits outside classes and escapes."""
    bare = re.sub(r"\[[^\]]*\]|\\.|\{[^}]*\}", "", pattern)
    return re.search(r"[A-Za-z0-9]{2,}", bare) is not None


def _topic(words: set[str], spec: ToolSpec) -> str:
    shared = sorted(words & _words(spec.description))
    return ", ".join(shared[:3]) or spec.name


def _arguments(spec: ToolSpec, text: str) -> dict[str, JsonValue]:
    props = spec.parameters.get("properties")
    args: dict[str, JsonValue] = {}
    if not isinstance(props, dict):
        return args
    for name, schema in props.items():
        if not isinstance(schema, dict):
            continue
        kind, pattern = schema.get("type"), schema.get("pattern")
        if isinstance(pattern, str):
            found = re.search(pattern.strip("^$"), text)
            args[name] = found.group() if found else text
        elif kind in ("number", "integer"):
            number = _NUMBER.search(text)
            value = float(number.group()) if number else 0.0
            args[name] = int(value) if kind == "integer" else value
        elif kind == "string":
            args[name] = text
    return args


def _fields(output: JsonValue) -> str:
    if isinstance(output, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in output.items())
    return _plain(output)


def _plain(output: JsonValue) -> str:
    if isinstance(output, str):
        return output
    return json.dumps(output, ensure_ascii=False, sort_keys=True)


def output_schema_of(messages: Sequence[Message]) -> Mapping[str, JsonValue] | None:
    """The JSON Schema the system prompt asks the answer to match, if it asks."""
    for message in messages:
        if message.role == "system" and message.content and OUTPUT_SCHEMA_MARK in message.content:
            body = message.content.split(OUTPUT_SCHEMA_MARK, 1)[1].strip()
            try:
                schema = json.loads(body)
            except ValueError:
                return None
            return schema if isinstance(schema, dict) else None
    return None


def as_output(schema: Mapping[str, JsonValue], text: str) -> str:
    """A JSON object for ``schema`` built from the answer ``text``: strings get the text (an
    enum its first value named in the text, else its first), numbers the text's first
    number, booleans true, lists and objects empty."""
    props = schema.get("properties")
    obj: dict[str, JsonValue] = {}
    if isinstance(props, dict):
        for name, prop in props.items():
            obj[name] = _value(prop if isinstance(prop, dict) else {}, text, schema)
    return json.dumps(obj, ensure_ascii=False)


def _value(prop: Mapping[str, JsonValue], text: str, root: Mapping[str, JsonValue]) -> JsonValue:
    ref = prop.get("$ref")
    if isinstance(ref, str):
        defs = root.get("$defs")
        target = defs.get(ref.rsplit("/", 1)[-1]) if isinstance(defs, dict) else None
        prop = target if isinstance(target, dict) else {}
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        lowered = text.lower()
        named = [e for e in enum if isinstance(e, str) and e.lower() in lowered]
        return named[0] if named else enum[0]
    kind = prop.get("type")
    if kind in ("number", "integer"):
        number = _NUMBER.search(text)
        value = float(number.group()) if number else 0.0
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return text
