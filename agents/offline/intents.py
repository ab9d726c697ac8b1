"""What a user message asks, read with deterministic heuristics for the offline model.

:func:`parse_asks` cuts a message into clauses (at sentence ends, commas, "and", "also",
"then") and reads each as one :class:`Ask`: remember a fact, recall one, calculate (maybe
with a remembered value: "my budget times 3"), tell the time in a zone, convert a time
between zones, convert units, count words, or just chat. It is deliberately forgiving about
phrasing ("what's 12 x 7", "compute (2+3)^2", "convert 100 F to C", "time in Tokyo") and
never guesses across clauses except to glue back a fact that an "and" cut in two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from agentstream.agents.memory.keywords import STOP_WORDS
from agentstream.agents.tools.timezones import CITY_ZONES, UnknownZone, resolve_zone
from agentstream.agents.tools.units import ConversionError, parse_unit

__all__ = [
    "Ask",
    "AskKind",
    "expression_in",
    "memory_keys",
    "parse_asks",
    "substitute_memory",
    "zones_in",
]

AskKind = Literal[
    "remember", "recall", "calculate", "time", "convert_time", "units", "word_count", "chat"
]


@dataclass(frozen=True)
class Ask:
    """One thing the user asked: its kind, the clause, and the tool arguments it implies.

    ``memory`` names the remembered facts (``"budget"``) the ask needs before it can run;
    for a calculation, ``arguments["expression"]`` is only known once they are recalled.
    """

    kind: AskKind
    text: str
    arguments: dict[str, str | float] = field(default_factory=dict)
    memory: tuple[str, ...] = ()


_MAX_TEXT = 20_000
_MAX_CLAUSE = 1_000
_SPLIT = re.compile(r"([.!?;]+(?=\s|$)|\?|,(?!\d)|\s+(?:and then|and|also|then)\s+)", re.IGNORECASE)
_QUESTION = re.compile(
    r"^(?:and\s+)?(?:what|what's|whats|how|when|where|who|which|why|do|does|did|can|could|"
    r"is|are|tell me|show me|give me)\b",
    re.IGNORECASE,
)
_REMEMBER = re.compile(
    r"^(?:and\s+)?(?:please\s+)?(?:can you\s+|could you\s+)?(?:remember|note|save|store|"
    r"memorize|keep in mind|don'?t forget|do not forget)(?:\s+that)?[\s:,]+(?P<fact>.+)$",
    re.IGNORECASE,
)
_STATEMENT = re.compile(
    r"^(?:and\s+)?(?:that\s+)?(?:(?:my|our)\s+[a-z][\w\s'-]{0,40}?\s+(?:is|are)\s+\S|"
    r"call me\s|i (?:live|reside) in\s|i work (?:at|for)\s)",
    re.IGNORECASE,
)
_MEMORY_QUESTION = re.compile(
    r"\b(?:what|anything)\b.*\b(?:do|did|have)\s+you\s+(?:remember|know|remembered|stored)|"
    r"\bwhat(?:'s| is)? in your memory\b",
    re.IGNORECASE,
)
_TIME = re.compile(r"\b(?:time|clock|date|what day)\b", re.IGNORECASE)
_CLOCK_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b|\b(\d{1,2}):(\d{2})\b", re.I)
_UNITS = re.compile(
    r"(?P<value>-?\d+(?:\.\d+)?)\s*(?P<src>°?\s?[a-z][a-z/°. ]*?)\s+(?:to|in|into|as)\s+"
    r"(?P<dst>°?\s?[a-z][a-z/°. ]*?)\s*$",
    re.IGNORECASE,
)
_UNITS_HOW_MANY = re.compile(
    r"how many\s+(?P<dst>[a-z/° ]+?)\s+(?:is|are|in|make)\s+(?P<value>-?\d+(?:\.\d+)?)\s*"
    r"(?P<src>°?\s?[a-z][a-z/°. ]*?)\s*$",
    re.IGNORECASE,
)
_WORDS_IN = re.compile(
    r"(?:how many words|count (?:the )?words|word count)\b[^\"'“:]*[\"'“:]\s*(?P<text>.+?)[\"'”]?$",
    re.IGNORECASE,
)
_ARITHMETIC_RULES: list[tuple[str, str]] = [
    (r"(\d+(?:\.\d+)?)\s*(?:%|percent)\s+of\s+", r"(\1/100)*"),
    (r"\bsquare root of\s*", "sqrt "),
    (r"\bsqrt of\s*", "sqrt "),
    (r"\bsqrt\s+(\d+(?:\.\d+)?)", r"sqrt(\1)"),
    (r"\b(?:multiplied by|times)\b", "*"),
    (r"(?<=\d)\s*[x\u00d7]\s*(?=[\d(])", "*"),
    (r"\b(?:divided by|over)\b", "/"),
    (r"\u00f7", "/"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\b(?:modulo|mod)\b", "%"),
    (r"\b(?:to the power of|raised to(?: the power of)?|to the)\b", "**"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
    (r"\b(?:double|twice)\b(?: of)?", "2*"),
    (r"\btriple\b", "3*"),
    (r"\bhalf(?: of)?\b", "0.5*"),
    (r"(?<=\d),(?=\d{3}\b)", ""),
    (r"\$\s*(?=\d)", ""),
]
#: For each rule above, strings one of which any match of it contains: a rule none of whose
#: strings is in the text cannot change it, so it is not run (the rules are case-sensitive
#: and read lower-cased text, so a plain ``in`` is exact).
_ARITHMETIC_CUES: list[tuple[str, ...]] = [
    ("%", "percent"),
    ("square root of",),
    ("sqrt of",),
    ("sqrt",),
    ("multiplied by", "times"),
    ("x", "\u00d7"),
    ("divided by", "over"),
    ("\u00f7",),
    ("plus",),
    ("minus",),
    ("mod",),
    ("to the", "raised to"),
    ("squared",),
    ("cubed",),
    ("double", "twice"),
    ("triple",),
    ("half",),
    (",",),
    ("$",),
]
_ARITHMETIC_WORDS = [
    (re.compile(pattern), sub, cues)
    for (pattern, sub), cues in zip(_ARITHMETIC_RULES, _ARITHMETIC_CUES, strict=True)
]
_DIGIT = re.compile(r"\d")
#: Every expression has a digit: in the text, or from one of the words these rules turn
#: into a number ("squared" gives ``**2``, "half" ``0.5*``...).
_NUMBER_WORDS = ("squared", "cubed", "double", "twice", "triple", "half")
_MAY_HAVE_NUMBER = re.compile(r"\d|" + "|".join(_NUMBER_WORDS))
#: Every operation comes from an operator character, a digit then "x", or a word the rules
#: above turn into an operator: without any of them there is nothing to calculate.
_OPERATOR_CHAR = re.compile(r"[-+*/%^()\u00d7\u00f7]")
_DIGIT_THEN_X = re.compile(r"\d\s*x")
_OPERATION_WORDS = (
    "times",
    "multiplied",
    "divided",
    "over",
    "plus",
    "minus",
    "mod",
    "power",
    "raised",
    "to the",
    "squared",
    "cubed",
    "double",
    "twice",
    "triple",
    "half",
    "percent",
    "sqrt",
    "square root",
)
_TRAILING_OPERATORS = re.compile(r"[-+*/%^,\s]+$")
_LEADING_GLUE = re.compile(r"^(?:and\s+)?(?:that\s+)?", re.IGNORECASE)
_SPAN = re.compile(r"(?:\d+(?:\.\d+)?|sqrt|abs|round|min|max|log|pi|\*\*|[-+*/%()^,]|\s)+")
_OPERATION = re.compile(
    r"[\d)]\s*(?:\*\*|//|[-+*/%^])\s*[-(\d]|\b(?:sqrt|abs|round|min|max|log)\s*\("
)
_TOKEN = re.compile(r"\*\*|//|\d+(?:\.\d+)?|[a-z]+|[-+*/%^(),]")
_MEMORY_REF = re.compile(r"\bmy\s+(?P<words>[a-z][a-z' -]*)", re.IGNORECASE)
_NOT_KEY = STOP_WORDS | {
    "times",
    "plus",
    "minus",
    "divided",
    "multiplied",
    "over",
    "x",
    "squared",
    "cubed",
    "by",
    "mod",
    "modulo",
    "percent",
    "double",
    "triple",
    "half",
    "twice",
    "now",
    "today",
}
_ZONE_NAMES = sorted((n for n in CITY_ZONES if len(n) > 1), key=len, reverse=True)
#: Every zone name at once, longest first so "new delhi" wins over "delhi". Matched against
#: the lower-cased text (not with IGNORECASE) so positions and matches are what one
#: ``finditer`` per name used to give.
_ZONE_NAME = re.compile(
    rf"(?<![\w/])(?:{'|'.join(re.escape(name) for name in _ZONE_NAMES)})(?![\w/])"
)
_IANA = re.compile(r"\b[A-Z][A-Za-z]+/[A-Za-z_]+(?:/[A-Za-z_]+)?\b")


def expression_in(text: str) -> str | None:
    """The arithmetic expression in ``text`` ("what is 12 times 7?" gives ``12 * 7``), if any."""
    normalized = text.lower()
    if _MAY_HAVE_NUMBER.search(normalized) is None:
        return None
    if not _may_have_operation(normalized):
        return None
    for pattern, replacement, cues in _ARITHMETIC_WORDS:
        if _cued(normalized, cues):
            normalized = pattern.sub(replacement, normalized)
    spans = [m.group().strip(" ,") for m in _SPAN.finditer(normalized)]
    found = [s for s in spans if _OPERATION.search(s) and _DIGIT.search(s)]
    if not found:
        return None
    expression = _TRAILING_OPERATORS.sub("", max(found, key=len))
    return _spaced(expression)


def _may_have_operation(normalized: str) -> bool:
    """Whether ``normalized`` has an operator character or word (see above).

    A plain ``in`` per word and the cheap character class first: one regex alternation of
    all of them tried a branch at every position of the text, several times slower.
    """
    if _OPERATOR_CHAR.search(normalized) is not None or _cued(normalized, _OPERATION_WORDS):
        return True
    return "x" in normalized and _DIGIT_THEN_X.search(normalized) is not None


def _cued(text: str, cues: tuple[str, ...]) -> bool:
    """Whether one of ``cues`` is in ``text``."""
    # A plain loop: ``any()`` over a generator costs more than the searches it saves.
    for cue in cues:  # noqa: SIM110
        if cue in text:
            return True
    return False


def _spaced(expression: str) -> str:
    """``2*1200`` as ``2 * 1200``; unary minus, parentheses and calls kept tight."""
    out = ""
    previous = ""
    for token in _TOKEN.findall(expression):
        if token in ("+", "-") and previous in ("", "(", ",", "+", "-", "*", "/", "%", "^", "**"):
            out += token  # unary
        elif token in ("+", "-", "*", "/", "%", "^", "**", "//"):
            out += f" {token} "
        elif token == ",":
            out += ", "
        else:
            out += token
        previous = token
    return " ".join(out.split()).replace("( ", "(").replace(" )", ")")


def memory_keys(text: str) -> list[str]:
    """The remembered facts ``text`` refers to: "my monthly budget x 3" gives ``monthly budget``."""
    keys: list[str] = []
    for found in _MEMORY_REF.finditer(text):
        kept: list[str] = []
        for word in found["words"].lower().split():
            word = word.strip("'")
            if word in _NOT_KEY or len(kept) == 3:
                break
            kept.append(word)
        if kept and " ".join(kept) not in keys:
            keys.append(" ".join(kept))
    return keys


def zones_in(text: str) -> list[str]:
    """Time zones named in ``text`` (IANA names, cities, abbreviations), in reading order."""
    found: list[tuple[int, str]] = []
    taken: list[range] = []
    for match in _IANA.finditer(text):
        try:
            resolve_zone(match.group())
        except UnknownZone:
            continue
        found.append((match.start(), match.group()))
        taken.append(range(match.start(), match.end()))
    lower = text.lower()
    names = list(_ZONE_NAME.finditer(lower))
    if taken and any(_overlaps(m, taken) for m in names):
        # An IANA name overlaps a city only when lower-casing moved the positions (a few
        # non-ASCII letters lengthen): keep the exact longest-name-first reading then.
        return _zones_by_name(found, taken, lower)
    # Zone names cannot partly overlap each other (a unit test checks it), so the one
    # leftmost-longest scan finds exactly what a longest-name-first search would.
    found += [(match.start(), CITY_ZONES[match.group()]) for match in names]
    return [zone for _, zone in sorted(found)]


def _overlaps(match: re.Match[str], taken: list[range]) -> bool:
    return any(match.start() in r or match.end() - 1 in r for r in taken)


@lru_cache(maxsize=1)
def _zone_name_patterns() -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(rf"(?<![\w/]){re.escape(name)}(?![\w/])")) for name in _ZONE_NAMES]


def _zones_by_name(found: list[tuple[int, str]], taken: list[range], lower: str) -> list[str]:
    """:func:`zones_in`'s names one at a time, longest first: the rare, slow, exact path."""
    for name, pattern in _zone_name_patterns():
        for match in pattern.finditer(lower):
            if not _overlaps(match, taken):
                found.append((match.start(), CITY_ZONES[name]))
                taken.append(range(match.start(), match.end()))
    return [zone for _, zone in sorted(found)]


def _clock_time(text: str) -> str | None:
    match = _CLOCK_TIME.search(text)
    if match is None:
        return None
    if match.group(3):
        hour, minute = int(match.group(1)) % 12, int(match.group(2) or 0)
        hour += 12 if match.group(3).lower() == "pm" else 0
    else:
        hour, minute = int(match.group(4)), int(match.group(5))
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def _units(clause: str) -> dict[str, str | float] | None:
    text = clause.strip().rstrip("?.! ")
    if _DIGIT.search(text) is None:  # both patterns need a value
        return None
    for pattern in (_UNITS, _UNITS_HOW_MANY):
        match = pattern.search(text)
        if match is None:
            continue
        src, dst = match["src"].strip(" ."), match["dst"].strip(" .")
        try:  # units of different kinds still count: the tool explains why it cannot
            parse_unit(src), parse_unit(dst)
        except ConversionError:
            continue
        return {"value": float(match["value"]), "from_unit": src, "to_unit": dst}
    return None


def substitute_memory(text: str, values: dict[str, str]) -> str:
    """``text`` with each "my <key>" replaced by its value: "my budget x 3" -> "1200 x 3"."""
    for key, value in values.items():
        text = _memory_pattern(key).sub(value, text)
    return text


@lru_cache(maxsize=256)
def _memory_pattern(key: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in key.split())
    return re.compile(rf"\bmy\s+{words}\b", re.IGNORECASE)


#: For :func:`_classify`, the cues of each pattern: strings one of which every match holds,
#: taken from the words the pattern spells out (lower-case, as the clause is read).
_REMEMBER_CUES = ("remember", "note", "save", "store", "memorize", "keep in mind", "forget")
_STATEMENT_CUES = ("my", "our", "call me", "live in", "reside in", "i work")
_CLOCK_TIME_CUES = ("am", "pm", ":")
_UNITS_CUES = ("to", "in", "as", "how many")  # "into" holds "in"
_TIME_CUES = ("time", "clock", "date", "what day")
_MEMORY_REF_CUE = "my"
_MEMORY_QUESTION_CUE = "you"  # "you" and "your"
_WORDS_IN_CUE = "word"


def _classify(clause: str, question: bool) -> Ask:
    """What ``clause`` asks: :func:`_classify_reference`, skipping the patterns it cannot match.

    Most clauses are chat, and each pattern tried on them is a regex search. Every match of a
    pattern holds one of its cues (above); in ASCII text, where IGNORECASE folds only ASCII
    letters, a plain ``in`` on the lower-cased clause tells whether one is there. Other text
    is read in full: IGNORECASE also matches "K" (the Kelvin sign) as "k" and "İ" as "i",
    which ``str.lower`` maps differently, so a cue could be missed there.
    """
    if not clause.isascii():
        return _classify_reference(clause, question)
    low = clause.lower()
    if (
        _cued(low, _REMEMBER_CUES)
        and (remember := _REMEMBER.match(clause))
        and not _asked(clause, question)
    ):
        return Ask("remember", clause, {"fact": remember["fact"].strip()})
    if len(clause) > _MAX_CLAUSE:  # bounds the regex work on hostile input
        return Ask("chat", clause)
    if _cued(low, _STATEMENT_CUES) and _STATEMENT.match(clause) and not _asked(clause, question):
        fact = _LEADING_GLUE.sub("", clause)
        return Ask("remember", clause, {"fact": fact.strip()})
    digit = _DIGIT.search(clause) is not None  # clock times, units and most expressions need one
    at = _clock_time(clause) if digit and _cued(low, _CLOCK_TIME_CUES) else None
    zones = zones_in(clause) if at is not None else None
    if at is not None and zones is not None and len(zones) >= 2:
        return Ask("convert_time", clause, {"time": at, "from_zone": zones[0], "to_zone": zones[1]})
    if digit and _cued(low, _UNITS_CUES) and (units := _units(clause)) is not None:
        return Ask("units", clause, units)
    if _cued(low, _TIME_CUES) and _TIME.search(clause):
        zones = zones_in(clause) if zones is None else zones
        return Ask("time", clause, {"zone": zones[0] if zones else "UTC"})
    # An expression needs a digit or a number word (as ``_MAY_HAVE_NUMBER`` reads).
    expression = expression_in(clause) if digit or _cued(low, _NUMBER_WORDS) else None
    if expression is not None:
        return Ask("calculate", clause, {"expression": expression})
    keys = memory_keys(clause) if _MEMORY_REF_CUE in low else []
    if _MEMORY_QUESTION_CUE in low and _MEMORY_QUESTION.search(clause):
        return Ask("recall", clause, {"query": " ".join(keys)}, memory=tuple(keys))
    if keys:
        masked = substitute_memory(clause, dict.fromkeys(keys, "1"))
        if expression_in(masked) is not None:
            return Ask("calculate", clause, memory=tuple(keys))
        if _asked(clause, question):
            return Ask("recall", clause, {"query": " ".join(keys)}, memory=tuple(keys))
    words = _WORDS_IN.search(clause) if _WORDS_IN_CUE in low else None
    if words:
        return Ask("word_count", clause, {"text": words["text"]})
    return Ask("chat", clause)


def _asked(clause: str, question: bool) -> bool:
    """Whether ``clause`` is a question: read only when an answer depends on it."""
    return question or _QUESTION.match(clause) is not None


def _classify_reference(clause: str, question: bool) -> Ask:
    """What ``clause`` asks, read by trying every pattern in turn: the exact reading.

    :func:`_classify` gives the same answer faster; this is what it falls back on for text
    it cannot rule patterns out of, and what a unit test holds it to.
    """
    question = question or _QUESTION.match(clause) is not None
    remember = _REMEMBER.match(clause)
    if remember and not question:
        return Ask("remember", clause, {"fact": remember["fact"].strip()})
    if len(clause) > _MAX_CLAUSE:  # bounds the regex work on hostile input
        return Ask("chat", clause)
    if _STATEMENT.match(clause) and not question:
        fact = _LEADING_GLUE.sub("", clause)
        return Ask("remember", clause, {"fact": fact.strip()})
    # Zones are read only when a time is asked about: the scan over every zone name is the
    # costliest step here.
    at = _clock_time(clause)
    zones = zones_in(clause) if at is not None else None
    if at is not None and zones is not None and len(zones) >= 2:
        return Ask("convert_time", clause, {"time": at, "from_zone": zones[0], "to_zone": zones[1]})
    if (units := _units(clause)) is not None:
        return Ask("units", clause, units)
    if _TIME.search(clause):
        zones = zones_in(clause) if zones is None else zones
        return Ask("time", clause, {"zone": zones[0] if zones else "UTC"})
    if (expression := expression_in(clause)) is not None:
        return Ask("calculate", clause, {"expression": expression})
    keys = memory_keys(clause)
    if _MEMORY_QUESTION.search(clause):
        return Ask("recall", clause, {"query": " ".join(keys)}, memory=tuple(keys))
    if keys:
        masked = substitute_memory(clause, dict.fromkeys(keys, "1"))
        if expression_in(masked) is not None:
            return Ask("calculate", clause, memory=tuple(keys))
        if question:
            return Ask("recall", clause, {"query": " ".join(keys)}, memory=tuple(keys))
    words = _WORDS_IN.search(clause)
    if words:
        return Ask("word_count", clause, {"text": words["text"]})
    return Ask("chat", clause)


def parse_asks(text: str) -> list[Ask]:
    """The asks of one user message, in the order they were written."""
    parts = _SPLIT.split(" ".join(text[:_MAX_TEXT].split()))
    asks: list[Ask] = []
    for index in range(0, len(parts), 2):
        clause = parts[index].strip()
        separator = parts[index + 1] if index + 1 < len(parts) else ""
        if not clause:
            continue
        previous = asks[-1] if asks else None
        ask = _classify(clause, "?" in separator)
        if ask.kind == "chat" and previous is not None and previous.kind == "remember":
            # "remember that I like salt and pepper": the "and" cut a fact in two.
            glue = parts[index - 1]
            fact = f"{previous.arguments['fact']}{glue}{clause}"
            asks[-1] = Ask("remember", f"{previous.text}{glue}{clause}", {"fact": fact})
            continue
        asks.append(ask)
    if any(a.kind != "chat" for a in asks):
        asks = [a for a in asks if a.kind != "chat"]
    return asks or [Ask("chat", " ".join(text.split()))]
