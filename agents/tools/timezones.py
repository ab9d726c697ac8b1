"""Time zones by IANA name, abbreviation or city, and the clock tools read.

People and models name zones loosely ("Tokyo", "UTC", "est", "new york"); :func:`resolve_zone`
accepts an IANA name (``Asia/Tokyo``, any case) or one of the common cities and
abbreviations in :data:`CITY_ZONES`, and raises :class:`UnknownZone` (a
:class:`~schemas.ToolRejected`) otherwise. Zone data comes from the system's tz database
(or the ``tzdata`` package when installed).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from agentstream.schemas import ToolRejected

__all__ = ["CITY_ZONES", "Clock", "UnknownZone", "resolve_zone", "system_clock"]

Clock = Callable[[], datetime]

#: Names people use for a zone, lower-case, to the IANA zone.
CITY_ZONES: dict[str, str] = {
    "utc": "UTC",
    "gmt": "UTC",
    "zulu": "UTC",
    "z": "UTC",
    "london": "Europe/London",
    "uk": "Europe/London",
    "dublin": "Europe/Dublin",
    "lisbon": "Europe/Lisbon",
    "paris": "Europe/Paris",
    "berlin": "Europe/Berlin",
    "madrid": "Europe/Madrid",
    "rome": "Europe/Rome",
    "amsterdam": "Europe/Amsterdam",
    "zurich": "Europe/Zurich",
    "stockholm": "Europe/Stockholm",
    "athens": "Europe/Athens",
    "istanbul": "Europe/Istanbul",
    "moscow": "Europe/Moscow",
    "cet": "Europe/Paris",
    "cairo": "Africa/Cairo",
    "lagos": "Africa/Lagos",
    "nairobi": "Africa/Nairobi",
    "johannesburg": "Africa/Johannesburg",
    "dubai": "Asia/Dubai",
    "mumbai": "Asia/Kolkata",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata",
    "india": "Asia/Kolkata",
    "ist": "Asia/Kolkata",
    "bangkok": "Asia/Bangkok",
    "jakarta": "Asia/Jakarta",
    "singapore": "Asia/Singapore",
    "hong kong": "Asia/Hong_Kong",
    "shanghai": "Asia/Shanghai",
    "beijing": "Asia/Shanghai",
    "china": "Asia/Shanghai",
    "seoul": "Asia/Seoul",
    "tokyo": "Asia/Tokyo",
    "japan": "Asia/Tokyo",
    "jst": "Asia/Tokyo",
    "sydney": "Australia/Sydney",
    "melbourne": "Australia/Melbourne",
    "perth": "Australia/Perth",
    "auckland": "Pacific/Auckland",
    "honolulu": "Pacific/Honolulu",
    "hawaii": "Pacific/Honolulu",
    "anchorage": "America/Anchorage",
    "los angeles": "America/Los_Angeles",
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "vancouver": "America/Vancouver",
    "pst": "America/Los_Angeles",
    "pdt": "America/Los_Angeles",
    "denver": "America/Denver",
    "mst": "America/Denver",
    "chicago": "America/Chicago",
    "cst": "America/Chicago",
    "mexico city": "America/Mexico_City",
    "new york": "America/New_York",
    "nyc": "America/New_York",
    "boston": "America/New_York",
    "washington": "America/New_York",
    "toronto": "America/Toronto",
    "est": "America/New_York",
    "edt": "America/New_York",
    "bogota": "America/Bogota",
    "lima": "America/Lima",
    "santiago": "America/Santiago",
    "buenos aires": "America/Argentina/Buenos_Aires",
    "sao paulo": "America/Sao_Paulo",
    "são paulo": "America/Sao_Paulo",
    "rio de janeiro": "America/Sao_Paulo",
}


class UnknownZone(ToolRejected):
    """Not an IANA zone, nor a city or abbreviation this module knows."""


def system_clock() -> datetime:
    """Now, in UTC: the default clock of the time tools (tests inject a fixed one)."""
    return datetime.now(UTC)


@cache
def _iana_names() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def resolve_zone(name: str) -> ZoneInfo:
    """The zone called ``name``: IANA (any case), a known city, or an abbreviation."""
    iana = _iana_name(name)
    if iana is None:
        raise UnknownZone(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or a city"
        )
    try:
        return ZoneInfo(iana)
    except ZoneInfoNotFoundError:
        raise UnknownZone(f"time zone {iana!r} is not in this system's tz database") from None


@lru_cache(maxsize=1024)
def _iana_name(name: str) -> str | None:
    """The IANA name ``name`` stands for, if any (before asking the tz database for it)."""
    text = " ".join(name.strip().replace("_", " ").split()).lower()
    iana = CITY_ZONES.get(text)
    if iana is None:
        names = _iana_names()
        iana = names.get(name.strip().lower()) or names.get(text.replace(" ", "_"))
    return iana
