"""The offline model's hot paths read exactly as their slower first versions did.

``zones_in`` scans once with a precompiled alternation, ``expression_in`` skips text that
cannot hold a number, and ``cache_key`` and the offline prompt count reuse the tool specs'
JSON. Each is compared here with the straightforward implementation it replaced (kept
below as the reference) over a corpus of texts and inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Sequence

import pytest
from agentstream.agents.memory.book import memory_tool_specs
from agentstream.agents.memory.keywords import keywords, words
from agentstream.agents.messages import Message, ToolInvocation, count_tokens, message_tokens
from agentstream.agents.models.base import ToolSpec
from agentstream.agents.models.cache import CACHE_KEY_VERSION, cache_key
from agentstream.agents.offline.intents import (
    _ARITHMETIC_RULES,
    _spaced,
    expression_in,
    parse_asks,
    zones_in,
)
from agentstream.agents.offline.model import OfflineModel
from agentstream.agents.tools.builtin import builtin_registry
from agentstream.agents.tools.timezones import CITY_ZONES, UnknownZone, resolve_zone
from agentstream.agents.tools.units import ConversionError, parse_unit

# --- the reference implementations (as they were before the hot paths were optimised) ---

_REF_ZONE_NAMES = sorted((n for n in CITY_ZONES if len(n) > 1), key=len, reverse=True)
_REF_IANA = re.compile(r"\b[A-Z][A-Za-z]+/[A-Za-z_]+(?:/[A-Za-z_]+)?\b")
_REF_SPAN = re.compile(r"(?:\d+(?:\.\d+)?|sqrt|abs|round|min|max|log|pi|\*\*|[-+*/%()^,]|\s)+")
_REF_OPERATION = re.compile(
    r"[\d)]\s*(?:\*\*|//|[-+*/%^])\s*[-(\d]|\b(?:sqrt|abs|round|min|max|log)\s*\("
)


def reference_zones_in(text: str) -> list[str]:
    found: list[tuple[int, str]] = []
    taken: list[range] = []
    for match in _REF_IANA.finditer(text):
        try:
            resolve_zone(match.group())
        except UnknownZone:
            continue
        found.append((match.start(), match.group()))
        taken.append(range(match.start(), match.end()))
    lower = text.lower()
    for name in _REF_ZONE_NAMES:
        for match in re.finditer(rf"(?<![\w/]){re.escape(name)}(?![\w/])", lower):
            if not any(match.start() in r or match.end() - 1 in r for r in taken):
                found.append((match.start(), CITY_ZONES[name]))
                taken.append(range(match.start(), match.end()))
    return [zone for _, zone in sorted(found)]


def reference_expression_in(text: str) -> str | None:
    normalized = text.lower()
    for pattern, replacement in _ARITHMETIC_RULES:
        normalized = re.sub(pattern, replacement, normalized)
    spans = [m.group().strip(" ,") for m in _REF_SPAN.finditer(normalized)]
    found = [s for s in spans if _REF_OPERATION.search(s) and re.search(r"\d", s)]
    if not found:
        return None
    expression = re.sub(r"[-+*/%^,\s]+$", "", max(found, key=len))
    return _spaced(expression)


def reference_cache_key(
    model_name: str, messages: Sequence[Message], tools: Sequence[ToolSpec]
) -> str:
    canonical = json.dumps(
        {
            "v": CACHE_KEY_VERSION,
            "model": model_name,
            "messages": [m.model_dump(mode="json", exclude_defaults=True) for m in messages],
            "tools": sorted(
                (t.model_dump(mode="json") for t in tools), key=lambda spec: str(spec["name"])
            ),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def reference_prompt_tokens(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> int:
    return sum(message_tokens(m) for m in messages) + count_tokens(
        json.dumps([t.model_dump(mode="json") for t in tools], sort_keys=True)
    )


# --- zones ---

_FILLER = ["what", "time", "is it in", "and", "from", "to", "3pm", "the", "x", "now", "newer"]
_IANA_SAMPLES = ["Asia/Tokyo", "America/New_York", "Europe/Paris", "Mars/Olympus", "UTC/Foo"]


def _zone_corpus() -> list[str]:
    names = list(CITY_ZONES)
    texts: list[str] = []
    for name in names:
        texts += [
            name,
            name.upper(),
            name.title(),
            f"what time is it in {name}?",
            f"time in {name.title()}, please",
            f"{name}/{name}",
            f"x{name} {name}x",
            f"({name})",
            f"{name}-{name}",
            f"{name}_{name}",
            f"3pm {name} to {name}",
        ]
    for first, second in itertools.product(names, repeat=2):
        texts.append(f"{first} {second}")
    for iana, name in itertools.product(_IANA_SAMPLES, names[::5]):
        texts += [f"{iana} {name}", f"{name} {iana}", f"{iana}{name}", f"{name}{iana}"]
    rng = random.Random(20240506)
    pieces = names + _FILLER + _IANA_SAMPLES + [",", ".", "/", "İ", "ǅ", "ß"]
    for _ in range(3000):
        texts.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))))
    # lower-casing that changes lengths shifts positions: the exact slow path covers it
    texts += [
        "İİ Asia/Tokyo new delhi",
        "İİİİ America/New_York delhi",
        "İ" * 20 + " Asia/Tokyo tokyo",
    ]
    for shift in range(1, 25):
        texts += ["İ" * shift + f" {city} Asia/Tokyo" for city in ("tokyo", "new delhi", "utc")]
    return texts


def test_zones_in_reads_like_one_search_per_name() -> None:
    corpus = _zone_corpus()
    assert len(corpus) > 10_000
    every_zone: set[str] = set()
    for text in corpus:
        expected = reference_zones_in(text)
        assert zones_in(text) == expected, text
        every_zone.update(expected)
    assert set(CITY_ZONES.values()) <= every_zone  # every city was found at least once


def test_zone_names_never_partly_overlap() -> None:
    """What lets one leftmost-longest scan replace a longest-name-first search per name.

    Two names could only partly overlap if a tail of one, starting after a non-word
    character, began another name that goes on past it and ends before one.
    """
    names = [n for n in CITY_ZONES if len(n) > 1]
    for first, second in itertools.product(names, repeat=2):
        for cut in range(1, len(first)):
            tail = first[cut:]
            if (
                second.startswith(tail)
                and len(second) > len(tail)
                and not re.match(r"[\w/]", first[cut - 1])
                and not re.match(r"[\w/]", second[len(tail)])
            ):
                raise AssertionError(f"{first!r} and {second!r} can overlap")


# --- arithmetic ---


def test_expression_in_is_unchanged() -> None:
    corpus = [
        "what is 12 * 7?",
        "What is 12 times 7",
        "compute (2+3)^2",
        "half of 10",
        "twice three plus 4",
        "what is 5 squared",
        "three cubed",
        "triple 7",
        "square root of 16",
        "sqrt 81 plus 1",
        "20% of 50",
        "15 percent of 200",
        "1,200 divided by 4",
        "$1,000 x 3",
        "2 to the power of 10",
        "7 mod 3",
        "10 over 4",
        "9 ÷ 3",
        "6 \u00d7 7",
        "hello there",
        "how are you",
        "double it",
        "what's the half life",
        "my budget times 3",
        "1 times my budget",
        "٣ + ٤",
        "abs(-3) + max(1, 2)",
        "",
    ]
    for text in corpus:
        assert expression_in(text) == reference_expression_in(text), text
    assert expression_in("half of 10") == "0.5 * 10"
    assert expression_in("hello there") is None


# --- tool specs: cache keys and prompt tokens ---


def _tool_sets() -> list[list[ToolSpec]]:
    builtin = builtin_registry().specs()
    memory = memory_tool_specs()
    same_name = [
        ToolSpec(name="dup", description="second", parameters={"b": 1, "a": [1, "é"]}),
        ToolSpec(name="dup", description="first"),
    ]
    return [[], builtin, builtin + memory, (builtin + memory)[::-1], memory, same_name]


def test_cache_key_matches_the_one_json_recipe() -> None:
    conversations = [
        [],
        [Message.user("hi")],
        [Message.system("s"), Message.user("what is 2+2? ünïcødé")],
        [
            Message.user("what time is it in Tokyo"),
            Message.assistant(
                None, [ToolInvocation(id="1", name="current_time", arguments={"zone": "Tokyo"})]
            ),
            Message.tool("1", "current_time", '{"time": "12:00"}'),
        ],
    ]
    for model_name in ("offline", "gpt-4o", 'naïve "quoted"'):
        for messages in conversations:
            for tools in _tool_sets():
                expected = reference_cache_key(model_name, messages, tools)
                assert cache_key(model_name, messages, tools) == expected
                assert cache_key(model_name, messages, tuple(tools)) == expected


def test_cache_key_follows_tool_content_not_identity() -> None:
    messages = [Message.user("hi")]
    fresh = [memory_tool_specs(), memory_tool_specs()]
    assert fresh[0][0] is not fresh[1][0]
    assert cache_key("m", messages, fresh[0]) == cache_key("m", messages, fresh[1])
    changed = [fresh[0][0].model_copy(update={"parameters": {"type": "object"}}), fresh[0][1]]
    assert changed[0] != fresh[0][0]
    assert hash(changed[0]) == hash(fresh[0][0])  # same name and description
    assert cache_key("m", messages, changed) == reference_cache_key("m", messages, changed)
    assert cache_key("m", messages, changed) != cache_key("m", messages, fresh[0])


def test_tool_spec_hash_agrees_with_equality() -> None:
    a = ToolSpec(name="t", description="d", parameters={"x": [1, 2]})
    b = ToolSpec(name="t", description="d", parameters={"x": [1, 2]})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, ToolSpec(name="t", description="d")}) == 2


async def test_offline_prompt_tokens_are_unchanged() -> None:
    model = OfflineModel()
    for tools in _tool_sets():
        for text in ("Hello there, how are you?", "What is 12 * 7?", "time in Tokyo"):
            messages = [Message.system("You are helpful."), Message.user(text)]
            reply = await model.complete(messages, tools)
            assert reply.usage.prompt_tokens == reference_prompt_tokens(messages, tools)


async def test_offline_replies_are_the_same_when_a_message_is_read_again() -> None:
    model = OfflineModel()
    tools = builtin_registry().specs() + memory_tool_specs()
    for text in ("What is 12 * 7?", "remember that my budget is 1200", "Hello there"):
        messages = [Message.user(text)]
        first = await model.complete(messages, tools)
        again = await model.complete(messages, tools)
        assert first == again
        assert [a.kind for a in parse_asks(text)] == [a.kind for a in parse_asks(text)]


# --- cached pure lookups ---


def test_cached_lookups_return_fresh_lists_and_raise_as_before() -> None:
    first = words("My Budgets, the budgets")
    first.append("mutated")
    assert words("My Budgets, the budgets") == ["my", "budgets", "the", "budgets"]
    found = keywords("My Budgets, the budgets")
    found.clear()
    assert keywords("My Budgets, the budgets") == ["budget"]
    long_text = "budget " * 200
    assert keywords(long_text) == ["budget"]
    assert len(words(long_text)) == 200
    assert parse_unit("Kilometres").symbol == "km"
    assert parse_unit("degrees F").symbol == "°F"
    for _ in range(2):
        with pytest.raises(ConversionError, match="unknown unit 'furlong'"):
            parse_unit("furlong")
        with pytest.raises(UnknownZone):
            resolve_zone("Atlantis")
    assert resolve_zone("new  york").key == "America/New_York"
    assert resolve_zone("asia/tokyo").key == "Asia/Tokyo"
