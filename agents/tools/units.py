"""Unit conversion: length, mass, temperature, volume and speed, by name or symbol.

Every unit is a factor to its dimension's base unit (metre, kilogram, litre, metre per
second); temperature is affine and converted through kelvin. Names are forgiving (``km``,
``kilometre``, ``kilometers``, ``°F``, ``fahrenheit``) because the model, or a person,
writes them. Converting across dimensions or naming an unknown unit raises
:class:`ConversionError` (a :class:`~schemas.ToolRejected`) that says which units exist.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from agentstream.schemas import ToolRejected

__all__ = ["ConversionError", "Dimension", "Unit", "convert", "parse_unit"]

Dimension = Literal["length", "mass", "temperature", "volume", "speed"]


class ConversionError(ToolRejected):
    """An unknown unit, or two units of different dimensions."""


class Unit:
    """A unit: its symbol, dimension, and factor to the dimension's base unit."""

    __slots__ = ("dimension", "factor", "symbol")

    def __init__(self, symbol: str, dimension: Dimension, factor: float) -> None:
        self.symbol = symbol
        self.dimension = dimension
        self.factor = factor

    def __repr__(self) -> str:
        return f"Unit({self.symbol!r}, {self.dimension!r})"


# symbol, dimension, factor to base, other names
_TABLE: list[tuple[str, Dimension, float, tuple[str, ...]]] = [
    ("mm", "length", 0.001, ("millimeter", "millimetre")),
    ("cm", "length", 0.01, ("centimeter", "centimetre")),
    ("m", "length", 1.0, ("meter", "metre")),
    ("km", "length", 1000.0, ("kilometer", "kilometre", "kms")),
    ("in", "length", 0.0254, ("inch", "inches", '"')),
    ("ft", "length", 0.3048, ("foot", "feet", "'")),
    ("yd", "length", 0.9144, ("yard",)),
    ("mi", "length", 1609.344, ("mile",)),
    ("nmi", "length", 1852.0, ("nautical mile",)),
    ("mg", "mass", 1e-6, ("milligram", "milligramme")),
    ("g", "mass", 0.001, ("gram", "gramme")),
    ("kg", "mass", 1.0, ("kilogram", "kilogramme", "kilo", "kgs")),
    ("t", "mass", 1000.0, ("tonne", "metric ton")),
    ("oz", "mass", 0.028349523125, ("ounce",)),
    ("lb", "mass", 0.45359237, ("pound", "lbs")),
    ("st", "mass", 6.35029318, ("stone",)),
    ("ml", "volume", 0.001, ("milliliter", "millilitre")),
    ("cl", "volume", 0.01, ("centiliter", "centilitre")),
    ("l", "volume", 1.0, ("liter", "litre")),
    ("m3", "volume", 1000.0, ("cubic meter", "cubic metre", "m^3")),
    ("tsp", "volume", 0.00492892159375, ("teaspoon",)),
    ("tbsp", "volume", 0.01478676478125, ("tablespoon",)),
    ("fl oz", "volume", 0.0295735295625, ("fluid ounce", "floz")),
    ("cup", "volume", 0.2365882365, ()),
    ("pt", "volume", 0.473176473, ("pint",)),
    ("qt", "volume", 0.946352946, ("quart",)),
    ("gal", "volume", 3.785411784, ("gallon", "us gallon")),
    ("m/s", "speed", 1.0, ("meter per second", "metre per second", "mps")),
    ("km/h", "speed", 1000 / 3600, ("kph", "kmh", "kmph", "kilometer per hour")),
    ("mph", "speed", 0.44704, ("mile per hour", "mi/h")),
    ("kn", "speed", 1852 / 3600, ("knot", "kt")),
    ("ft/s", "speed", 0.3048, ("foot per second", "feet per second", "fps")),
    ("°C", "temperature", 1.0, ("c", "celsius", "centigrade", "degc", "degree celsius")),
    ("°F", "temperature", 1.0, ("f", "fahrenheit", "degf", "degree fahrenheit")),
    ("K", "temperature", 1.0, ("k", "kelvin")),
]

_UNITS: dict[str, Unit] = {}
for _symbol, _dimension, _factor, _names in _TABLE:
    _unit = Unit(_symbol, _dimension, _factor)
    for _name in (_symbol, *_names):
        _UNITS[_name.lower()] = _unit
_KNOWN = ", ".join(sorted({u.symbol for u in _UNITS.values()}))


@lru_cache(maxsize=1024)
def _normalize(name: str) -> str:
    text = " ".join(name.strip().lower().replace("°", " ").split())
    for prefix in ("degrees ", "degree ", "deg "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text in _UNITS:
        return text
    # plurals: "miles", "inches", "kilometres per hour"
    words = [w[:-2] if w.endswith("es") and w[:-2] in _UNITS else w for w in text.split()]
    words = [w[:-1] if w.endswith("s") and w not in _UNITS else w for w in words]
    return " ".join(words)


def parse_unit(name: str) -> Unit:
    """The unit named ``name``; :class:`ConversionError` when there is none."""
    unit = _UNITS.get(_normalize(name))
    if unit is None:
        raise ConversionError(f"unknown unit {name!r} (known: {_KNOWN})")
    return unit


def convert(value: float, from_unit: str, to_unit: str) -> tuple[float, Unit, Unit]:
    """``value`` in ``from_unit`` expressed in ``to_unit``, with both parsed units."""
    source, target = parse_unit(from_unit), parse_unit(to_unit)
    if source.dimension != target.dimension:
        raise ConversionError(
            f"cannot convert {source.symbol} ({source.dimension}) "
            f"to {target.symbol} ({target.dimension})"
        )
    if source.dimension == "temperature":
        return _from_kelvin(_to_kelvin(value, source), target), source, target
    return value * source.factor / target.factor, source, target


def _to_kelvin(value: float, unit: Unit) -> float:
    if unit.symbol == "°C":
        return value + 273.15
    if unit.symbol == "°F":
        return (value - 32) * 5 / 9 + 273.15
    return value


def _from_kelvin(kelvin: float, unit: Unit) -> float:
    if unit.symbol == "°C":
        return kelvin - 273.15
    if unit.symbol == "°F":
        return (kelvin - 273.15) * 9 / 5 + 32
    return kelvin
