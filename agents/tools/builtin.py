"""The built-in tools: arithmetic, clocks, unit conversion, and a few text and JSON helpers.

All of them are pure computations: no shell, no file system, no network. Their inputs are
bounded (expression length, text size) so a hostile prompt cannot make a tool worker spin.
:func:`builtin_registry` builds a fresh :class:`~.registry.ToolRegistry` with all of
them; the clock is injectable so tests can pin "now". The memory tools (``remember``,
``recall``) are not here: they belong to the memory worker (:mod:`agentstream.agents.memory.book`).
"""

from __future__ import annotations

import re
from datetime import datetime
from datetime import time as time_of_day
from typing import Annotated

from agentstream.agents.tools.calculator import evaluate
from agentstream.agents.tools.registry import ToolRegistry
from agentstream.agents.tools.timezones import Clock, resolve_zone, system_clock
from agentstream.agents.tools.units import convert
from agentstream.schemas import ToolRejected
from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema

__all__ = [
    "CalculatorArgs",
    "ConvertTimeArgs",
    "ConvertUnitsArgs",
    "CurrentTimeArgs",
    "JsonQueryArgs",
    "TextArgs",
    "builtin_registry",
    "describe_time",
]

_TEXT_MAX = 100_000
_WORD = re.compile(r"[\w'\u2019-]+")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalculatorArgs(_Args):
    expression: str = Field(
        min_length=1,
        max_length=200,
        description="Arithmetic with numbers, + - * / // % ** (or ^), parentheses, "
        "pi, e and sqrt abs round min max log. Example: '(2 + 3) ** 2'.",
    )


class CurrentTimeArgs(_Args):
    zone: str = Field(
        default="UTC", description="IANA time zone ('Asia/Tokyo') or a city ('Tokyo')."
    )


class ConvertTimeArgs(_Args):
    time: str = Field(
        description="ISO 8601 date-time ('2024-05-01T09:30') or a time of day today ('09:30')."
    )
    from_zone: str = Field(description="Zone the time is in (IANA name or city).")
    to_zone: str = Field(description="Zone to express it in (IANA name or city).")


class ConvertUnitsArgs(_Args):
    value: float
    from_unit: str = Field(description="Unit of value, e.g. 'km', 'lb', '°F', 'gal', 'mph'.")
    to_unit: str = Field(description="Unit to convert to, of the same kind.")


class TextArgs(_Args):
    text: str = Field(max_length=_TEXT_MAX, description="The text to look at.")


class JsonQueryArgs(_Args):
    data: Annotated[JsonValue, WithJsonSchema({"description": "The JSON value to look into."})]
    path: str = Field(
        default="",
        max_length=500,
        description="Dotted path: 'items.0.name' or 'items[0].name'; empty for the whole value.",
    )


def describe_time(moment: datetime) -> dict[str, JsonValue]:
    """How the time tools report an instant: ISO, date, time of day, weekday, offset."""
    offset = moment.strftime("%z")
    return {
        "zone": str(moment.tzinfo),
        "iso": moment.isoformat(timespec="seconds"),
        "date": moment.strftime("%Y-%m-%d"),
        "time": moment.strftime("%H:%M"),
        "weekday": moment.strftime("%A"),
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "+00:00",
    }


def _parse_moment(text: str, zone: str, clock: Clock) -> datetime:
    tz = resolve_zone(zone)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            of_day = time_of_day.fromisoformat(text.strip())
        except ValueError:
            raise ToolRejected(
                f"time {text!r} is neither an ISO 8601 date-time nor a time of day"
            ) from None
        today = clock().astimezone(tz).date()
        return datetime.combine(today, of_day, tzinfo=tz)
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def _query(data: JsonValue, path: str) -> JsonValue:
    parts = [p for p in re.split(r"\.|\[|\]", path) if p]
    current = data
    walked: list[str] = []
    for part in parts:
        where = ".".join(walked) or "<root>"
        if isinstance(current, dict):
            if part not in current:
                raise ToolRejected(f"no key {part!r} at {where}")
            current = current[part]
        elif isinstance(current, list):
            if not re.fullmatch(r"-?\d+", part) or not -len(current) <= int(part) < len(current):
                raise ToolRejected(f"no index {part!r} at {where} (length {len(current)})")
            current = current[int(part)]
        else:
            raise ToolRejected(f"cannot look up {part!r} in a {type(current).__name__} at {where}")
        walked.append(part)
    return current


def builtin_registry(
    *, clock: Clock = system_clock, default_timeout_s: float = 5.0
) -> ToolRegistry:
    """A registry with every built-in tool. ``clock`` returns an aware ``datetime``."""
    registry = ToolRegistry(default_timeout_s=default_timeout_s)

    # Inline (on the event loop): bounded work on short inputs, no I/O.
    @registry.tool(timeout_s=2.0, inline=True)
    def calculator(args: CalculatorArgs) -> dict[str, JsonValue]:
        """Evaluate an arithmetic expression exactly. Use it for any calculation."""
        return {"expression": args.expression, "result": evaluate(args.expression)}

    @registry.tool(inline=True)
    def current_time(args: CurrentTimeArgs) -> dict[str, JsonValue]:
        """The current date and time in a time zone."""
        return describe_time(clock().astimezone(resolve_zone(args.zone)))

    @registry.tool(inline=True)
    def convert_time(args: ConvertTimeArgs) -> dict[str, JsonValue]:
        """Express a date-time given in one time zone in another one."""
        moment = _parse_moment(args.time, args.from_zone, clock)
        converted = moment.astimezone(resolve_zone(args.to_zone))
        return {"from": describe_time(moment), "to": describe_time(converted)}

    @registry.tool(inline=True)
    def convert_units(args: ConvertUnitsArgs) -> dict[str, JsonValue]:
        """Convert a quantity between units of length, mass, temperature, volume or speed."""
        result, source, target = convert(args.value, args.from_unit, args.to_unit)
        return {
            "value": args.value,
            "from_unit": source.symbol,
            "to_unit": target.symbol,
            "result": round(result, 6),
            "dimension": source.dimension,
        }

    @registry.tool()
    def word_count(args: TextArgs) -> dict[str, JsonValue]:
        """Count the words of a text."""
        return {"words": len(_WORD.findall(args.text))}

    @registry.tool()
    def text_stats(args: TextArgs) -> dict[str, JsonValue]:
        """Characters, words, sentences, lines and average word length of a text."""
        words = _WORD.findall(args.text)
        sentences = [s for s in re.split(r"[.!?]+(?:\s|$)", args.text) if s.strip()]
        return {
            "characters": len(args.text),
            "words": len(words),
            "sentences": len(sentences),
            "lines": len(args.text.splitlines()) if args.text else 0,
            "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0,
            "longest_word": max(words, key=len) if words else None,
        }

    @registry.tool()
    def json_query(args: JsonQueryArgs) -> dict[str, JsonValue]:
        """Read the value at a dotted path inside a JSON value."""
        return {"path": args.path, "value": _query(args.data, args.path)}

    return registry
