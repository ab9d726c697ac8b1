"""Keywords of a text: the words that say what it is about, for memory lookup and summaries.

Deterministic and dependency-free on purpose: the memory projection must give the same
result every time the topics are replayed, and the offline model must answer the same way
for the same conversation. Words are lower-cased, stripped of punctuation and of a trailing
plural ``s``; stop words (``what``, ``is``, ``my``...) are dropped.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["STOP_WORDS", "keywords", "stem", "words"]

STOP_WORDS = frozenset(
    """
    a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing don done down during each else
    few for from further had has have having he her here hers herself him himself his how i
    if in into is it its itself just know let me more most much my myself no nor not now of
    off on once only or other our ours ourselves out over own please same she should so some
    such tell than that the their theirs them themselves then there these they this those
    through to too under until up us very was we were what when where which while who whom
    why will with would you your yours yourself yourselves remember recall note save store
    keep mind forget dont don't what's whats i'm im it's thing things anything something
    """.split()  # noqa: SIM905 - a word list reads better as text
)

_TRIM = "'\u2019-_"
_WORD = re.compile(r"[a-z0-9][a-z0-9'\u2019_-]*")
#: Texts up to this long have their words and keywords remembered: memory keys and values
#: are read again by every recall.
_CACHED_TEXT_MAX = 512


def words(text: str) -> list[str]:
    """The lower-case words of ``text``, punctuation dropped, in order."""
    if len(text) <= _CACHED_TEXT_MAX:
        return list(_cached_words(text))
    return _words(text)


def _words(text: str) -> list[str]:
    return [w.strip(_TRIM) for w in _WORD.findall(text.lower()) if w.strip(_TRIM)]


@lru_cache(maxsize=2048)
def _cached_words(text: str) -> tuple[str, ...]:
    return tuple(_words(text))


def stem(word: str) -> str:
    """``word`` without a plural ending, so 'budgets' finds 'budget'."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def keywords(text: str) -> list[str]:
    """The stemmed non-stop words of ``text``, first occurrence order, no duplicates."""
    if len(text) <= _CACHED_TEXT_MAX:
        return list(_cached_keywords(text))
    return _keywords(text)


def _keywords(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in words(text):
        if word in STOP_WORDS or (len(word) < 2 and not word.isdigit()):
            continue
        seen.setdefault(stem(word), None)
    return list(seen)


@lru_cache(maxsize=2048)
def _cached_keywords(text: str) -> tuple[str, ...]:
    return tuple(_keywords(text))
