"""Long-term memory: facts per tenant (and user), and the ``remember``/``recall`` tools over them.

A :class:`MemoryBook` holds the facts of one scope (:func:`memory_scope`). The memory worker
keeps one book per scope in the state store and applies each ``memory_call`` event to it
with :func:`apply_memory_call`. Everything here is deterministic and keyed by content (a
fact's key is normalized from its text, the newest value of a key wins, the time is the
event's), so replaying the topics rebuilds the same books and a redelivered call changes
nothing: that is what makes ``agentstream memory rebuild`` possible.

The agent routes calls of :data:`MEMORY_TOOLS` to the memory worker instead of the tool
worker, and offers the model :func:`memory_tool_specs` next to the registry's tools.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from agentstream.agents.memory.keywords import keywords, stem, words
from agentstream.agents.models.base import ToolSpec
from agentstream.agents.tools.registry import InvalidArguments, UnknownTool, validation_problems
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

__all__ = [
    "MAX_FACTS",
    "MEMORY_TOOLS",
    "Fact",
    "MemoryBook",
    "RecallArgs",
    "RememberArgs",
    "apply_memory_call",
    "memory_scope",
    "memory_tool_specs",
    "parse_fact",
]

#: Tools served by the memory worker rather than the tool worker.
MEMORY_TOOLS = frozenset({"remember", "recall"})
#: Facts kept per scope; past it the least recently stated fact is dropped.
MAX_FACTS = 1000

_EVERYTHING = frozenset({"everything", "all", "memory", "remembered", "fact", "about"})
_COMMAND = re.compile(
    r"^(?:please\s+)?(?:can you\s+|could you\s+)?(?:remember|note|save|store|memorize|"
    r"keep in mind|don'?t forget|do not forget)(?:\s+that)?[\s:,]+",
    re.IGNORECASE,
)
_OWNER = re.compile(r"^(?:that\s+)?(?:my|our|the user'?s|user'?s|the|your)\s+", re.IGNORECASE)
_LEADING_THAT = re.compile(r"^that\s+", re.IGNORECASE)
_IS = re.compile(r"^(?P<key>[^.?!]{1,60}?)\s+(?:is|are|was|=)\s+(?P<value>.+)$", re.IGNORECASE)
_APOSTROPHE_S = re.compile(r"^(?P<key>[^.?!']{1,60}?)['\u2019]s\s+(?P<value>.+)$", re.IGNORECASE)
_FIRST_PERSON: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?:call me|i am called|i'm called)\s+(?P<value>.+)$", re.I), "name"),
    (re.compile(r"^i (?:live|reside) in\s+(?P<value>.+)$", re.I), "location"),
    (re.compile(r"^i work (?:at|for)\s+(?P<value>.+)$", re.I), "employer"),
    (re.compile(r"^i(?: am|'m) from\s+(?P<value>.+)$", re.I), "hometown"),
]


class Fact(BaseModel):
    """One remembered fact: a normalized ``key``, its ``value``, and where it came from."""

    model_config = ConfigDict(frozen=True)

    key: str
    value: str
    text: str = Field(description="The fact as it was stated.")
    source_request_id: str | None = None
    time: datetime


class RememberArgs(BaseModel):
    """Arguments of the ``remember`` tool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fact: str = Field(
        min_length=1,
        max_length=2000,
        description="The fact, as the user stated it: 'my budget is 1200', 'call me Ada'.",
    )
    key: str | None = Field(
        default=None,
        max_length=100,
        description="Optional short name of the fact ('budget'); derived from the fact if absent.",
    )


class RecallArgs(BaseModel):
    """Arguments of the ``recall`` tool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(
        default="",
        max_length=500,
        description="What to look for ('budget', 'name'); empty or 'everything' for all facts.",
    )


def memory_scope(tenant: str, user: str | None) -> str:
    """The key of a memory scope: the tenant's shared memory, or one user's within it."""
    scope = quote(tenant, safe="")
    return scope if user is None else f"{scope}/{quote(user, safe='')}"


def _normalize_key(text: str) -> str:
    text = _OWNER.sub("", text.strip())
    parts = words(text)
    if not parts:
        return ""
    parts[-1] = stem(parts[-1])
    return " ".join(parts)


_QUOTES = "\"' \u201c\u201d\u2018\u2019"


def _clean_value(text: str) -> str:
    return text.strip().rstrip(".!?;, ").strip(_QUOTES)


def parse_fact(text: str) -> tuple[str, str]:
    """``(key, value)`` of a stated fact.

    "my budget is 1200" gives ``("budget", "1200")``; "call me Ada" gives ``("name", "Ada")``;
    free text ("I like green tea") is keyed by its keywords and keeps the whole text as value.
    """
    statement = _COMMAND.sub("", text.strip()).strip().rstrip(".!? ")
    statement = _LEADING_THAT.sub("", statement)
    for pattern, key in _FIRST_PERSON:
        found = pattern.match(statement)
        if found:
            return key, _clean_value(found["value"])
    for pattern in (_IS, _APOSTROPHE_S):
        found = pattern.match(statement)
        if found and (key := _normalize_key(found["key"])) and not key.startswith("i "):
            return key, _clean_value(found["value"])
    key = " ".join(keywords(statement)[:5]) or "note"
    return key, _clean_value(statement) or statement


class MemoryBook(BaseModel):
    """The long-term facts of one scope: a tenant, or one user of a tenant."""

    tenant: str = "default"
    user: str | None = None
    facts: dict[str, Fact] = Field(default_factory=dict)

    @property
    def scope(self) -> str:
        return memory_scope(self.tenant, self.user)

    def remember(
        self,
        fact: str,
        *,
        now: datetime,
        key: str | None = None,
        request_id: str | None = None,
    ) -> Fact:
        """Store ``fact`` (parsed by :func:`parse_fact`) under its key; the newest value wins."""
        parsed_key, value = parse_fact(fact)
        if key and _normalize_key(key):
            if _normalize_key(key) != parsed_key:
                value = _clean_value(fact)
            parsed_key = _normalize_key(key)
        stored = Fact(
            key=parsed_key, value=value, text=fact, source_request_id=request_id, time=now
        )
        self.facts.pop(parsed_key, None)  # re-insert: dict order is recency
        self.facts[parsed_key] = stored
        while len(self.facts) > MAX_FACTS:
            del self.facts[next(iter(self.facts))]
        return stored

    def recall(self, query: str = "", *, limit: int = 20) -> list[Fact]:
        """Facts matching ``query`` by keyword overlap, best first; all facts for an empty query.

        A word of the key counts twice a word of the value. Ties are ordered by key, so the
        answer never depends on insertion order.
        """
        wanted = [w for w in keywords(query) if w not in _EVERYTHING]
        if not wanted:
            return sorted(self.facts.values(), key=lambda f: f.key)[:limit]
        scored: list[tuple[int, str, Fact]] = []
        for fact in self.facts.values():
            key_words = {stem(w) for w in words(fact.key)}
            value_words = set(keywords(fact.value))
            score = sum(2 * (w in key_words) + (w in value_words) for w in wanted)
            if score:
                scored.append((-score, fact.key, fact))
        return [fact for _, _, fact in sorted(scored, key=lambda s: (s[0], s[1]))][:limit]


def memory_tool_specs() -> list[ToolSpec]:
    """``remember`` and ``recall`` as the model sees them."""
    specs = []
    for name, model, description in (
        (
            "recall",
            RecallArgs,
            "Look up facts the user asked you to remember earlier (their name, budget...).",
        ),
        (
            "remember",
            RememberArgs,
            "Store a fact the user wants remembered across conversations.",
        ),
    ):
        schema = model.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        specs.append(ToolSpec(name=name, description=description, parameters=schema))
    return specs


def _fact_output(fact: Fact) -> dict[str, JsonValue]:
    return {"key": fact.key, "value": fact.value}


def apply_memory_call(
    book: MemoryBook,
    tool: str,
    arguments: Mapping[str, Any],
    *,
    now: datetime,
    request_id: str | None = None,
) -> JsonValue:
    """Run one memory tool call against ``book`` (mutating it for ``remember``); its output.

    Raises :class:`~agentstream.agents.tools.registry.UnknownTool` or
    :class:`~agentstream.agents.tools.InvalidArguments` (both :class:`~schemas.ToolRejected`) like
    the tool registry does.
    """
    if tool not in MEMORY_TOOLS:
        raise UnknownTool(f"unknown memory tool {tool!r} (available: recall, remember)")
    model = RememberArgs if tool == "remember" else RecallArgs
    try:
        args = model.model_validate(dict(arguments))
    except ValidationError as exc:
        fields, problems = validation_problems(exc)
        raise InvalidArguments(
            f"invalid arguments for tool {tool!r}: {problems}", fields=fields
        ) from None
    if isinstance(args, RememberArgs):
        fact = book.remember(args.fact, key=args.key, request_id=request_id, now=now)
        return {"remembered": _fact_output(fact), "scope": book.scope}
    assert isinstance(args, RecallArgs)
    facts = book.recall(args.query)
    return {"query": args.query, "facts": [_fact_output(f) for f in facts], "count": len(facts)}
