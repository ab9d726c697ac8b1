"""The offline model's fast paths give exactly what the straightforward code gave.

``intents._classify`` skips the patterns a clause has no cue for (``_classify_reference``
tries them all), ``expression_in`` runs only the arithmetic rules whose words are in the
text, and ``OfflineModel.complete`` counts the prompt, the offered tools and the calls'
signatures without recomputing them and keeps the JSON of the messages its call ids hash.
They are held here to the unguarded code and the plain formulas, over a corpus of texts and
random ones, to a table of asks, and to a digest of every reply over a corpus of
conversations: both frozen from the code before the fast paths.

If an output changes on purpose, regenerate the frozen values from this module:
``print(asyncio.run(replies_digest()))`` and :func:`asks_table` for :data:`FROZEN_ASKS`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections.abc import AsyncIterator, Iterator, Sequence
from unittest import mock

import pytest
from agentstream.agents.messages import (
    Message,
    ModelReply,
    ToolInvocation,
    ToolOutcome,
    count_tokens,
    message_tokens,
    messages_tokens,
)
from agentstream.agents.models.base import ToolSpec
from agentstream.agents.offline import intents
from agentstream.agents.offline import model as offline
from agentstream.agents.offline.intents import (
    _ARITHMETIC_RULES,
    Ask,
    _spaced,
    expression_in,
    parse_asks,
)
from agentstream.agents.offline.model import OfflineModel
from hypothesis import given, settings
from hypothesis import strategies as st

# --- the corpus ---

FRAGMENTS = [
    "Hello there",
    "how are you",
    "This is guest 123 turn 2",
    "What is 140 * 5",
    "what's 12 x 7",
    "compute (2+3)^2",
    "remember that my budget is 1200",
    "my budget is 1200",
    "what is my budget times 3",
    "what is my budget",
    "what do you remember",
    "what's in your memory",
    "anything you have stored",
    "time in Tokyo",
    "what time is it in New York",
    "3pm in Tokyo to London",
    "convert 15:30 from Paris to Sydney",
    "9 am in Berlin to Tokyo",
    "12:61 in Paris to Rome",
    "10pm in utc to est",
    "10 km in miles",
    "convert 100 F to C",
    "how many feet are in 3 meters",
    "1.5 kg as lb",
    "-40 C to F",
    "5 parsecs into furlongs",
    "how many words are in: the quick brown fox",
    'count the words "a b c"',
    "word count: one two",
    "call me Bob",
    "I live in Berlin",
    "I work at ACME",
    "our office is in Paris",
    "and also",
    "then",
    "twice 4",
    "half of 10",
    "20% of 50",
    "15 percent of 200",
    "square root of 16",
    "sqrt 81 plus 1",
    "5 squared minus 3 cubed",
    "triple 7 over 2",
    "Note: milk",
    "don't forget my keys are in the car",
    "please save that our wifi is secret",
    "could you memorize that my pin is 1234",
    "keep in mind that my dog is Rex",
    "what day is it",
    "date in UTC",
    "the clock in Asia/Tokyo",
    "my monthly budget x 3",
    "1,200 divided by 4",
    "$1,000 x 3",
    "2 to the power of 10",
    "2 raised to 8",
    "7 mod 3",
    "9 modulo 4",
    "12 multiplied by 3",
    "what is 5 times 3",
    "10 over 4 plus 1",
    "3 to the 4",
    "2 raised to the power of 5",
    "double 6",
    "sqrt of 49",
    "SQRT 9 \u00d7 2",
    "half 8 minus 1",
    "50 percent of 1,000,000",
    # no digit: each number word alone
    "half of half",
    "squared squared",
    "Cubed cubed",
    "double double",
    "twice twice",
    "what is triple triple",
    "is my rent over 1000",
    "do you know my name",
    "what's my name",
    "my name",
    "who am I",
    "x",
    "5x",
    "3 x 4",
    "3x(4)",
    "remember",
    "remember that",
    "my",
    "time",
    "12pm",
    "0:00",
    "99:99",
    "1 am",
    "MY BUDGET IS 5",
    "WHAT TIME IS IT IN TOKYO",
    "HOW MANY WORDS: A B",
    "REMEMBER THAT I LIKE TEA",
    "tell me a joke about cats",
    "thanks, that is all",
    # non-ASCII: IGNORECASE folds these to ASCII letters, str.lower does not always
    "İstanbul time",
    "tİme in Paris",
    "what tİme is it",
    "\u212am to miles 5",
    "5 \u212aM in miles",
    "\u017fave that x",
    "remember that my ca\u017fe is 7",
    "naïve café",
    "😀 hi",
    "٣ + ٤",
    "2 ÷ 3",
    "6 \u00d7 7",
    "10 °C to °F",
    "",
    "   ",
    "?",
    "!!",
    "and",
    ",",
]
SEPARATORS = [", ", ". ", "? ", "! ", " and ", " also ", " then ", " and then ", "; ", " ", "\n"]
_MUTATIONS = "0123456789 :.,?!x*+-/%$'\"myouwordtimeamp\u0130\u0131\u212a\u017fé"


def corpus() -> list[str]:
    """Fragments, pairs and random mixes of them, some with a few characters changed."""
    rng = random.Random(20240611)
    texts = list(FRAGMENTS)
    for first in FRAGMENTS:
        for second in FRAGMENTS[::6]:
            texts.append(first + rng.choice(SEPARATORS) + second)
    for _ in range(3000):
        pieces = [rng.choice(FRAGMENTS) + rng.choice(SEPARATORS) for _ in range(rng.randint(1, 5))]
        texts.append("".join(pieces).strip())
    for _ in range(2000):
        chars = list(rng.choice(FRAGMENTS))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            roll = rng.random()
            if roll < 0.3 and at < len(chars):
                chars[at] = chars[at].swapcase()
            elif roll < 0.5 and at < len(chars):
                del chars[at]
            else:
                chars.insert(at, rng.choice(_MUTATIONS))
        texts.append("".join(chars))
    texts += [
        "word " * 3000,
        "remember that " + "x" * 1500,
        "my budget is " + "9" * 1200,
        "what is " + "1 + " * 400 + "1",
        "Hello there, how are you? This is guest 123 turn 2.",
    ]
    return texts


def clauses(texts: Sequence[str]) -> Iterator[str]:
    """The clauses :func:`parse_asks` would hand to ``_classify``."""
    for text in texts:
        for part in intents._SPLIT.split(" ".join(text.split()))[::2]:
            if part.strip():
                yield part.strip()


# --- the references: the code before the fast paths ---

_REFERENCE_OPERATION = re.compile(
    r"[-+*/%^()\u00d7\u00f7]|\d\s*x|times|multiplied|divided|over|plus|minus|mod|power|"
    r"raised|to the|squared|cubed|double|twice|triple|half|percent|sqrt|square root"
)


def reference_expression_in(text: str) -> str | None:
    """``expression_in`` as first written: every rule, no guard."""
    normalized = text.lower()
    for pattern, replacement in _ARITHMETIC_RULES:
        normalized = re.sub(pattern, replacement, normalized)
    spans = [m.group().strip(" ,") for m in intents._SPAN.finditer(normalized)]
    found = [s for s in spans if intents._OPERATION.search(s) and re.search(r"\d", s)]
    if not found:
        return None
    expression = re.sub(r"[-+*/%^,\s]+$", "", max(found, key=len))
    return _spaced(expression)


def reference_classify(clause: str, question: bool) -> Ask:
    with mock.patch.object(intents, "expression_in", reference_expression_in):
        return intents._classify_reference(clause, question)


def reference_parse_asks(text: str) -> list[Ask]:
    with (
        mock.patch.object(intents, "_classify", intents._classify_reference),
        mock.patch.object(intents, "expression_in", reference_expression_in),
    ):
        return parse_asks(text)


# --- intents ---


def test_expression_in_matches_the_unguarded_rules() -> None:
    texts = corpus()
    for text in [*texts, *clauses(texts)]:
        assert expression_in(text) == reference_expression_in(text), text


def test_may_have_operation_reads_as_the_one_regex() -> None:
    texts = [t.lower() for t in corpus()]
    texts += [chr(c) for c in range(0x250)] + ["\u00d7", "\u00f7", "3 x", "3x", "x3", "3\tx"]
    texts += [*intents._OPERATION_WORDS, "to  the", "square  root", "tothe"]
    for text in texts:
        expected = _REFERENCE_OPERATION.search(text) is not None
        assert intents._may_have_operation(text) == expected, text


def test_every_match_holds_a_cue() -> None:
    """What lets ``_classify`` skip a pattern: in ASCII text, no cue means no match."""
    patterns: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
        (intents._REMEMBER, intents._REMEMBER_CUES),
        (intents._STATEMENT, intents._STATEMENT_CUES),
        (intents._CLOCK_TIME, intents._CLOCK_TIME_CUES),
        (intents._UNITS, intents._UNITS_CUES),
        (intents._UNITS_HOW_MANY, intents._UNITS_CUES),
        (intents._TIME, intents._TIME_CUES),
        (intents._MEMORY_REF, (intents._MEMORY_REF_CUE,)),
        (intents._MEMORY_QUESTION, (intents._MEMORY_QUESTION_CUE,)),
        (intents._WORDS_IN, (intents._WORDS_IN_CUE,)),
        (intents._MAY_HAVE_NUMBER, ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")),
    ]
    # the arithmetic rules are case-sensitive and read lower-cased text: any text will do
    rules = [(pattern, cues) for pattern, _, cues in intents._ARITHMETIC_WORDS]
    texts = [t for t in [*corpus(), *clauses(corpus())] if t.isascii()]
    matched = dict.fromkeys(range(len(patterns)), 0)
    for text in texts:
        low = text.lower()
        for index, (pattern, cues) in enumerate(patterns):
            if pattern is intents._MAY_HAVE_NUMBER:
                cues = (*cues, *intents._NUMBER_WORDS)
                found = pattern.search(low)  # read lower-cased, without IGNORECASE
            else:
                found = pattern.search(text)
            if found:
                matched[index] += 1
                assert intents._cued(low, cues), (pattern.pattern, text)
    assert all(matched.values()), matched  # every pattern was put to the test
    for rule, cues in rules:
        lowered = [t.lower() for t in corpus() if rule.search(t.lower())]
        assert lowered, rule.pattern
        for text in lowered:
            assert intents._cued(text, cues), (rule.pattern, text)


def test_non_ascii_text_is_read_in_full() -> None:
    """Why ``_classify`` reads only ASCII text by its cues."""
    assert intents._TIME.search("tİme") is not None
    assert "time" not in "tİme".lower()
    assert intents._UNITS.search("5 \u212am in miles") is not None  # the Kelvin sign
    for text in ("what tİme is it", "5 \u212am in miles", "\u017fave that x", "remember \u017f"):
        for question in (False, True):
            assert intents._classify(text, question) == reference_classify(text, question)


def test_classify_matches_the_reference() -> None:
    every = set(clauses(corpus()))
    kinds: set[str] = set()
    for clause in sorted(every):
        for question in (False, True):
            expected = reference_classify(clause, question)
            assert intents._classify(clause, question) == expected, (clause, question)
            kinds.add(expected.kind)
    assert kinds == {
        "remember",
        "recall",
        "calculate",
        "time",
        "convert_time",
        "units",
        "word_count",
        "chat",
    }


def test_parse_asks_matches_the_reference() -> None:
    for text in corpus():
        assert parse_asks(text) == reference_parse_asks(text), text


_RANDOM_TEXTS = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.sampled_from(SEPARATORS),
        st.text(alphabet=_MUTATIONS, max_size=4),
        st.text(max_size=4),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(_RANDOM_TEXTS)
def test_random_texts_parse_as_the_reference(text: str) -> None:
    assert parse_asks(text) == reference_parse_asks(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_random_ascii_clauses_classify_as_the_reference(text: str) -> None:
    for question in (False, True):
        assert intents._classify(text, question) == reference_classify(text, question)


#: What :func:`parse_asks` read before its fast paths (from :func:`asks_table`).
FROZEN_ASKS: list[tuple[str, list[Ask]]] = [
    (
        "Hello there, how are you? This is guest 123 turn 2.",
        [
            Ask("chat", "Hello there"),
            Ask("chat", "how are you"),
            Ask("chat", "This is guest 123 turn 2"),
        ],
    ),
    ("What is 140 * 5?", [Ask("calculate", "What is 140 * 5", {"expression": "140 * 5"})]),
    ("what's 12 x 7", [Ask("calculate", "what's 12 x 7", {"expression": "12 * 7"})]),
    ("compute (2+3)^2", [Ask("calculate", "compute (2+3)^2", {"expression": "(2 + 3) ^ 2"})]),
    (
        "Remember that my budget is 1200.",
        [Ask("remember", "Remember that my budget is 1200", {"fact": "my budget is 1200"})],
    ),
    (
        "remember that I like salt and pepper",
        [
            Ask(
                "remember",
                "remember that I like salt and pepper",
                {"fact": "I like salt and pepper"},
            )
        ],
    ),
    (
        "My budget is 1200 and I live in Berlin",
        [
            Ask("remember", "My budget is 1200", {"fact": "My budget is 1200"}),
            Ask("remember", "I live in Berlin", {"fact": "I live in Berlin"}),
        ],
    ),
    (
        "What is my budget times 3, and what time is it in UTC?",
        [
            Ask("calculate", "What is my budget times 3", {}, memory=("budget",)),
            Ask("time", "what time is it in UTC", {"zone": "UTC"}),
        ],
    ),
    (
        "what is my budget?",
        [Ask("recall", "what is my budget", {"query": "budget"}, memory=("budget",))],
    ),
    ("What do you remember?", [Ask("recall", "What do you remember", {"query": ""})]),
    ("what's in your memory", [Ask("recall", "what's in your memory", {"query": ""})]),
    ("time in Tokyo", [Ask("time", "time in Tokyo", {"zone": "Asia/Tokyo"})]),
    (
        "What time is it in New York?",
        [Ask("time", "What time is it in New York", {"zone": "America/New_York"})],
    ),
    (
        "3pm in Tokyo to London",
        [
            Ask(
                "convert_time",
                "3pm in Tokyo to London",
                {"time": "15:00", "from_zone": "Asia/Tokyo", "to_zone": "Europe/London"},
            )
        ],
    ),
    (
        "convert 15:30 from Paris to Sydney",
        [
            Ask(
                "convert_time",
                "convert 15:30 from Paris to Sydney",
                {"time": "15:30", "from_zone": "Europe/Paris", "to_zone": "Australia/Sydney"},
            )
        ],
    ),
    ("12:61 in Paris to Rome", [Ask("chat", "12:61 in Paris to Rome")]),
    (
        "10 km in miles",
        [Ask("units", "10 km in miles", {"value": 10.0, "from_unit": "km", "to_unit": "miles"})],
    ),
    (
        "convert 100 F to C",
        [Ask("units", "convert 100 F to C", {"value": 100.0, "from_unit": "F", "to_unit": "C"})],
    ),
    ("how many feet are in 3 meters?", [Ask("chat", "how many feet are in 3 meters")]),
    ("5 parsecs into furlongs", [Ask("chat", "5 parsecs into furlongs")]),
    (
        "How many words are in: the quick brown fox",
        [
            Ask(
                "word_count",
                "How many words are in: the quick brown fox",
                {"text": "the quick brown fox"},
            )
        ],
    ),
    ('count the words "a b c"', [Ask("word_count", 'count the words "a b c"', {"text": "a b c"})]),
    (
        "call me Bob. I work at ACME",
        [
            Ask("remember", "call me Bob", {"fact": "call me Bob"}),
            Ask("remember", "I work at ACME", {"fact": "I work at ACME"}),
        ],
    ),
    (
        "our office is in Paris",
        [Ask("remember", "our office is in Paris", {"fact": "our office is in Paris"})],
    ),
    (
        "twice 4, half of 10 and 20% of 50",
        [
            Ask("calculate", "twice 4", {"expression": "2 * 4"}),
            Ask("calculate", "half of 10", {"expression": "0.5 * 10"}),
            Ask("calculate", "20% of 50", {"expression": "(20 / 100) * 50"}),
        ],
    ),
    (
        "square root of 16 then sqrt 81 plus 1",
        [
            Ask("calculate", "square root of 16", {"expression": "sqrt(16)"}),
            Ask("calculate", "sqrt 81 plus 1", {"expression": "sqrt(81) + 1"}),
        ],
    ),
    (
        "5 squared minus 3 cubed",
        [Ask("calculate", "5 squared minus 3 cubed", {"expression": "5 ** 2 - 3 ** 3"})],
    ),
    (
        "Note: milk; don't forget my keys are in the car",
        [
            Ask("remember", "Note: milk", {"fact": "milk"}),
            Ask(
                "remember",
                "don't forget my keys are in the car",
                {"fact": "my keys are in the car"},
            ),
        ],
    ),
    (
        "what day is it? date in UTC",
        [
            Ask("time", "what day is it", {"zone": "UTC"}),
            Ask("time", "date in UTC", {"zone": "UTC"}),
        ],
    ),
    ("the clock in Asia/Tokyo", [Ask("time", "the clock in Asia/Tokyo", {"zone": "Asia/Tokyo"})]),
    (
        "1,200 divided by 4 also $1,000 x 3",
        [
            Ask("calculate", "1,200 divided by 4", {"expression": "1200 / 4"}),
            Ask("calculate", "$1,000 x 3", {"expression": "1000 * 3"}),
        ],
    ),
    ("2 to the power of 10", [Ask("calculate", "2 to the power of 10", {"expression": "2 ** 10"})]),
    ("is my rent over 1000", [Ask("calculate", "is my rent over 1000", {}, memory=("rent",))]),
    (
        "do you know my name",
        [Ask("recall", "do you know my name", {"query": "name"}, memory=("name",))],
    ),
    ("tell me a joke about cats", [Ask("chat", "tell me a joke about cats")]),
    ("\u0130stanbul time", [Ask("time", "\u0130stanbul time", {"zone": "UTC"})]),
    ("what t\u0130me is it", [Ask("time", "what t\u0130me is it", {"zone": "UTC"})]),
    (
        "5 \u212am in miles",
        [
            Ask(
                "units",
                "5 \u212am in miles",
                {"value": 5.0, "from_unit": "\u212am", "to_unit": "miles"},
            )
        ],
    ),
    ("\u017fave that x", [Ask("remember", "\u017fave that x", {"fact": "x"})]),
    (
        "6 \xd7 7 and 2 \xf7 3",
        [
            Ask("calculate", "6 \xd7 7", {"expression": "6 * 7"}),
            Ask("calculate", "2 \xf7 3", {"expression": "2 / 3"}),
        ],
    ),
    (
        "10 \xb0C to \xb0F",
        [
            Ask(
                "units",
                "10 \xb0C to \xb0F",
                {"value": 10.0, "from_unit": "\xb0C", "to_unit": "\xb0F"},
            )
        ],
    ),
    ("", [Ask("chat", "")]),
    ("?", [Ask("chat", "?")]),
    ("remember", [Ask("chat", "remember")]),
    ("WHAT TIME IS IT IN TOKYO", [Ask("time", "WHAT TIME IS IT IN TOKYO", {"zone": "Asia/Tokyo"})]),
]


def asks_table(texts: Sequence[str]) -> list[tuple[str, list[Ask]]]:
    return [(text, parse_asks(text)) for text in texts]


def test_parse_asks_reads_the_frozen_table() -> None:
    assert len(FROZEN_ASKS) > 30
    for text, expected in FROZEN_ASKS:
        assert parse_asks(text) == expected, text


# --- the offline model ---

_TOOL_NAMES = (
    "calculator",
    "current_time",
    "convert_time",
    "convert_units",
    "word_count",
    "remember",
    "recall",
)
_SPECS = [
    ToolSpec(
        name=name,
        description=f'The {name} tool: ünïcödé and "quotes".',
        parameters={"type": "object", "properties": {"x": {"type": "string"}}},
    )
    for name in _TOOL_NAMES
]
_TOOL_SETS = [
    _SPECS,
    [s for s in _SPECS if s.name != "recall"],
    [s for s in _SPECS if s.name in ("calculator", "recall", "remember")],
    [],
    _SPECS[::-1],
]
_HISTORY = [
    Message.user("Hello there, how are you? This is guest 7 turn 0."),
    Message.assistant("Hello! I am the offline model."),
    Message.user("What is 2 * 3?"),
    Message.assistant(None, [ToolInvocation(id="old", name="calculator", arguments={"x": "é"})]),
    Message.tool("old", "calculator", '{"expression": "2 * 3", "result": 6}'),
    Message.assistant("2 * 3 = 6."),
]


def _outcome(call: ToolInvocation, variant: int) -> ToolOutcome:
    """A deterministic result for ``call``: mostly successes, some failures and odd shapes."""
    if variant % 7 == 3:
        return ToolOutcome(ok=False, error="the tool failed", error_class="ToolError")
    args = call.arguments
    if call.name == "recall":
        if variant % 5 == 1:
            return ToolOutcome(ok=True, output={"facts": []})
        if variant % 5 == 2:
            return ToolOutcome(ok=True, output=[{"key": args.get("query"), "value": "lots"}])
        return ToolOutcome(
            ok=True, output={"facts": [{"key": args.get("query"), "value": "1,200 dollars"}]}
        )
    if call.name == "remember":
        return ToolOutcome(ok=True, output={"remembered": {"key": "budget", "value": "1200"}})
    if call.name == "calculator":
        return ToolOutcome(ok=True, output={"expression": args.get("expression"), "result": 42.5})
    if call.name == "current_time":
        moment = {"zone": args.get("zone"), "utc_offset": "+09:00", "time": "12:00"}
        return ToolOutcome(ok=True, output={**moment, "weekday": "Monday", "date": "2024-05-06"})
    if call.name == "convert_time":
        moment = {"zone": "UTC", "time": "03:00", "weekday": "Monday", "date": "2024-05-06"}
        return ToolOutcome(ok=True, output={"from": moment, "to": moment})
    if call.name == "convert_units":
        return ToolOutcome(ok=True, output={**args, "result": 1.25})
    return ToolOutcome(ok=True, output={"words": 3})


def _conversations() -> Iterator[tuple[list[Message], list[ToolSpec], int | None, int]]:
    texts = corpus()[::3]
    for index, text in enumerate(texts):
        tools = _TOOL_SETS[index % len(_TOOL_SETS)]
        max_tokens = (5, None, 40)[index % 3]
        history = _HISTORY if index % 2 else _HISTORY[:2]
        system = [Message.system("You are a helpful assistant.")] if index % 4 else []
        yield [*system, *history, Message.user(text)], tools, max_tokens, index
    # no user message, an orphan tool result, a tool result before the user message
    yield [], _SPECS, None, 0
    yield [Message.system("s"), Message.tool("nobody", "calculator", "{}")], _SPECS, None, 1
    yield [*_HISTORY[2:5], Message.user("and 2 * 4?")], _SPECS, None, 2


Step = tuple[list[Message], list[ToolSpec], ModelReply]


async def _steps(model: OfflineModel) -> AsyncIterator[Step]:
    """Every step of every conversation: the messages and tools of each call, and the reply."""
    for messages, tools, max_tokens, variant in _conversations():
        for _ in range(4):
            reply = await model.complete(messages, tools, max_tokens=max_tokens)
            yield messages, tools, reply
            if not reply.tool_calls:
                break
            results = [
                Message.tool(c.id, c.name, _outcome(c, variant).to_content())
                for c in reply.tool_calls
            ]
            messages = [*messages, Message.assistant(reply.text, reply.tool_calls), *results]


async def replies_digest() -> str:
    """How many replies the conversation corpus has, and a digest of all of them."""
    digest = hashlib.sha256()
    count = 0
    async for _, _, reply in _steps(OfflineModel()):
        digest.update(json.dumps(reply.model_dump(mode="json"), sort_keys=True).encode())
        count += 1
    return f"{count}:{digest.hexdigest()}"


#: :func:`replies_digest` before the fast paths.
FROZEN_REPLIES_DIGEST = "3964:266620d5949795a399dee5c70d5a7a7ffcd2dec94bf988e8680c4569abedc21e"


async def test_offline_replies_are_frozen() -> None:
    assert await replies_digest() == FROZEN_REPLIES_DIGEST


def _reference_call_id(messages: Sequence[Message], index: int) -> str:
    dumped = json.dumps([m.model_dump(mode="json") for m in messages], sort_keys=True)
    return f"call_{hashlib.sha256(dumped.encode()).hexdigest()[:16]}_{index}"


def _reference_signature(call: ToolInvocation) -> str:
    return json.dumps([call.name, call.arguments], sort_keys=True, ensure_ascii=False)


async def test_offline_usage_and_ids_follow_the_reference_formulas() -> None:
    tool_calls = 0
    async for messages, tools, reply in _steps(OfflineModel()):
        tools_json = json.dumps([t.model_dump(mode="json") for t in tools], sort_keys=True)
        prompt = sum(message_tokens(m) for m in messages) + count_tokens(tools_json)
        assert reply.usage.prompt_tokens == prompt
        assert messages_tokens(messages) == sum(map(message_tokens, messages))
        if reply.tool_calls:
            tool_calls += 1
            signatures = [_reference_signature(call) for call in reply.tool_calls]
            assert reply.usage.completion_tokens == count_tokens(json.dumps(signatures))
            expected_ids = [_reference_call_id(messages, i) for i in range(len(signatures))]
            assert [call.id for call in reply.tool_calls] == expected_ids
        else:
            assert reply.usage.completion_tokens == count_tokens(reply.text)
    assert tool_calls > 100


class _TaggedMessage(Message):
    tag: str = "extra"


@pytest.mark.parametrize("kept", [512, 3])
async def test_call_ids_hash_every_field_of_every_message(
    monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    """The model keeps the JSON of messages without tool calls: ids must not notice."""
    monkeypatch.setattr(offline, "_MESSAGE_JSON", {})
    monkeypatch.setattr(offline, "_MESSAGE_JSON_MAX", kept)  # 3: dropped and kept again, often
    model = OfflineModel()
    firsts = [  # each differs from the first in one field only
        Message.system("short"),
        _TaggedMessage(role="system", content="short"),  # a subclass, with one more field
        Message(role="system", content="short", name="n"),
        Message(role="system", content="short", tool_call_id="t"),
        Message(role="assistant", content="short"),
        Message.system("short "),
        Message(role="system", content=None),
        Message.system("s" * 5000),  # too long to keep
        Message.system('ünïcödé "quoted"'),
    ]
    ids: set[str] = set()
    for _ in range(2):
        for first in firsts:
            messages = [first, *_HISTORY, Message.user("What is 12 * 7?")]
            reply = await model.complete(messages, _SPECS)
            assert [c.id for c in reply.tool_calls] == [_reference_call_id(messages, 0)]
            ids.add(reply.tool_calls[0].id)
            assert len(offline._MESSAGE_JSON) <= kept
    assert len(ids) == len(firsts)


async def test_offered_tools_follow_the_specs_offered_now() -> None:
    """The model keeps the last tools' tokens and names: other specs must not reuse them."""
    model = OfflineModel()
    messages = [Message.user("What is 12 * 7?")]
    offered = list(_SPECS)
    first = await model.complete(messages, offered)
    assert first.tool_calls[0].name == "calculator"
    offered.remove(next(s for s in offered if s.name == "calculator"))  # changed in place
    second = await model.complete(messages, offered)
    assert not second.tool_calls
    assert second.text == "I cannot compute 12 * 7 here: the calculator tool is not available."
    renamed = [s.model_copy(update={"description": "longer " * 20}) for s in _SPECS]
    third = await model.complete(messages, renamed)  # same names, new specs
    assert third.usage.prompt_tokens > first.usage.prompt_tokens
    again = await model.complete(messages, list(_SPECS))  # equal specs, other list
    assert again == first


def test_messages_tokens_is_the_sum_of_message_tokens() -> None:
    messages = [
        Message.system(""),
        Message.user("a"),
        Message.user("abcd"),
        Message.user("abcde"),
        Message(role="assistant", content=None),
        Message.assistant("x" * 99, [ToolInvocation(id="1", name="n", arguments={"é": [1.5]})]),
        Message.assistant(None, [ToolInvocation(id="2", name="", arguments={})]),
        Message.tool("1", "n", unicodedata.normalize("NFD", "ünïcödé")),
    ]
    for end in range(len(messages) + 1):
        part = messages[:end]
        assert messages_tokens(part) == sum(message_tokens(m) for m in part)
    assert messages_tokens(tuple(messages)) == sum(map(message_tokens, messages))
