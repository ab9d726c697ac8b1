"""The built-in tools: units, time zones, text and JSON, called through the registry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agentstream.agents.tools.builtin import builtin_registry
from agentstream.agents.tools.registry import InvalidArguments, ToolRegistry
from agentstream.agents.tools.timezones import UnknownZone, resolve_zone
from agentstream.agents.tools.units import ConversionError, convert
from agentstream.schemas import ToolRejected

NOW = datetime(2024, 5, 6, 12, 30, 15, tzinfo=UTC)  # a Monday


@pytest.fixture
def registry() -> ToolRegistry:
    return builtin_registry(clock=lambda: NOW)


def test_registry_has_the_safe_builtins(registry: ToolRegistry) -> None:
    assert registry.names() == [
        "calculator",
        "convert_time",
        "convert_units",
        "current_time",
        "json_query",
        "text_stats",
        "word_count",
    ]
    for spec in registry.specs():
        assert spec.description
        assert spec.parameters["type"] == "object"


async def test_calculator_tool(registry: ToolRegistry) -> None:
    assert await registry.call("calculator", {"expression": "1200 * 3"}) == {
        "expression": "1200 * 3",
        "result": 3600,
    }
    with pytest.raises(ToolRejected, match="division by zero"):
        await registry.call("calculator", {"expression": "1/0"})


@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        (10, "km", "miles", 6.213712),
        (1, "mile", "km", 1.609344),
        (12, "inches", "ft", 1.0),
        (100, "F", "C", 37.777778),
        (100, "°C", "°F", 212.0),
        (0, "celsius", "kelvin", 273.15),
        (-40, "degrees fahrenheit", "degrees celsius", -40.0),
        (1, "kg", "lb", 2.204623),
        (16, "ounces", "pounds", 1.0),
        (1, "gallon", "liters", 3.785412),
        (1000, "ml", "l", 1.0),
        (100, "km/h", "mph", 62.137119),
        (10, "m/s", "km/h", 36.0),
    ],
)
async def test_convert_units(
    registry: ToolRegistry, value: float, src: str, dst: str, expected: float
) -> None:
    out = await registry.call("convert_units", {"value": value, "from_unit": src, "to_unit": dst})
    assert isinstance(out, dict)
    assert out["result"] == pytest.approx(expected, abs=1e-6)


def test_incompatible_units_are_a_clear_error() -> None:
    with pytest.raises(ConversionError, match=r"cannot convert km \(length\) to kg \(mass\)"):
        convert(10, "km", "kg")


def test_unknown_unit_lists_the_known_ones() -> None:
    with pytest.raises(ConversionError, match=r"unknown unit 'parsec'.*km"):
        convert(1, "parsec", "km")


@pytest.mark.parametrize(
    ("zone", "time", "offset"),
    [
        ("UTC", "12:30", "+00:00"),
        ("Tokyo", "21:30", "+09:00"),
        ("Asia/Tokyo", "21:30", "+09:00"),
        ("asia/tokyo", "21:30", "+09:00"),
        ("new york", "08:30", "-04:00"),
        ("Europe/London", "13:30", "+01:00"),
        ("Asia/Kolkata", "18:00", "+05:30"),
    ],
)
async def test_current_time_in_a_zone(
    registry: ToolRegistry, zone: str, time: str, offset: str
) -> None:
    out = await registry.call("current_time", {"zone": zone})
    assert isinstance(out, dict)
    assert out["time"] == time
    assert out["utc_offset"] == offset
    assert out["date"] == "2024-05-06"


async def test_current_time_defaults_to_utc(registry: ToolRegistry) -> None:
    out = await registry.call("current_time", {})
    assert isinstance(out, dict)
    assert out["zone"] == "UTC"
    assert out["iso"] == "2024-05-06T12:30:15+00:00"
    assert out["weekday"] == "Monday"


async def test_unknown_zone_is_rejected(registry: ToolRegistry) -> None:
    with pytest.raises(UnknownZone, match="Atlantis"):
        await registry.call("current_time", {"zone": "Atlantis"})
    with pytest.raises(UnknownZone):
        resolve_zone("Mars/Olympus")


async def test_convert_time_between_zones(registry: ToolRegistry) -> None:
    out = await registry.call(
        "convert_time", {"time": "09:00", "from_zone": "New York", "to_zone": "Tokyo"}
    )
    assert isinstance(out, dict)
    assert out["to"] == {
        "zone": "Asia/Tokyo",
        "iso": "2024-05-06T22:00:00+09:00",
        "date": "2024-05-06",
        "time": "22:00",
        "weekday": "Monday",
        "utc_offset": "+09:00",
    }
    out = await registry.call(
        "convert_time",
        {"time": "2024-01-15T23:30", "from_zone": "Europe/Paris", "to_zone": "UTC"},
    )
    assert isinstance(out, dict)
    assert isinstance(out["to"], dict)
    assert out["to"]["iso"] == "2024-01-15T22:30:00+00:00"


async def test_convert_time_rejects_garbage(registry: ToolRegistry) -> None:
    with pytest.raises(ToolRejected, match="neither an ISO 8601"):
        await registry.call(
            "convert_time", {"time": "teatime", "from_zone": "UTC", "to_zone": "UTC"}
        )


async def test_text_tools(registry: ToolRegistry) -> None:
    assert await registry.call("word_count", {"text": "the quick brown fox"}) == {"words": 4}
    stats = await registry.call("text_stats", {"text": "Hello world. It's a fine day!\nBye."})
    assert stats == {
        "characters": 34,
        "words": 7,
        "sentences": 3,
        "lines": 2,
        "average_word_length": 3.57,
        "longest_word": "Hello",
    }
    assert await registry.call("text_stats", {"text": ""}) == {
        "characters": 0,
        "words": 0,
        "sentences": 0,
        "lines": 0,
        "average_word_length": 0,
        "longest_word": None,
    }


async def test_json_query(registry: ToolRegistry) -> None:
    data = {"items": [{"name": "a"}, {"name": "b", "tags": ["x"]}], "n": 2}
    out = await registry.call("json_query", {"data": data, "path": "items.1.name"})
    assert out == {"path": "items.1.name", "value": "b"}
    out = await registry.call("json_query", {"data": data, "path": "items[1].tags[0]"})
    assert out == {"path": "items[1].tags[0]", "value": "x"}
    out = await registry.call("json_query", {"data": data, "path": ""})
    assert out == {"path": "", "value": data}
    with pytest.raises(ToolRejected, match=r"no key 'missing' at items\.0"):
        await registry.call("json_query", {"data": data, "path": "items.0.missing"})
    with pytest.raises(ToolRejected, match="no index '5'"):
        await registry.call("json_query", {"data": data, "path": "items.5"})


async def test_builtin_arguments_are_strict(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidArguments) as caught:
        await registry.call("calculator", {"expr": "1+1"})
    assert set(caught.value.fields) == {"expression", "expr"}
