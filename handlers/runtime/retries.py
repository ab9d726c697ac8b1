"""The retry policy, in one place: how often, how long to wait, and when to give up.

A failing event first gets a few quick attempts in place (jittered exponential backoff),
then moves to the topic's ``.retry`` sibling with a growing delay, so the partition is not
blocked; once the whole budget is spent, or at once for a ``PermanentError``, it becomes a
dead letter. A ``RetryableError`` with ``retry_after`` (a 429 or 503 that said how long)
sets the delay instead of the backoff.

A pydantic ``ValidationError`` counts as permanent, like a ``PermanentError``: our models
reject the same input the same way on every attempt (a ``conversation_id`` too long for the
response built from it), so retrying it only holds the partition back (issue 14, ADR 17).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from agentstream.schemas.errors import PermanentError, RetryableError
from pydantic import ValidationError

__all__ = ["RetryPolicy", "Verdict", "is_permanent"]


def is_permanent(error: BaseException) -> bool:
    """Whether retrying ``error`` cannot help (see the module docstring)."""
    return isinstance(error, PermanentError | ValidationError)


class Verdict(Enum):
    RETRY_IN_PLACE = "retry_in_place"
    RETRY_LATER = "retry_later"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    in_place_attempts: int = 3
    base_delay_s: float = 0.1
    max_in_place_delay_s: float = 2.0
    #: Total attempts, in place and through the retry topic, before dead-lettering.
    max_attempts: int = 6
    retry_topic_delay_s: float = 2.0
    max_retry_topic_delay_s: float = 300.0
    jitter: float = 0.25

    def verdict(self, error: BaseException, attempt: int) -> Verdict:
        """What to do after ``attempt`` (1-based, counted over the event's whole life)."""
        if is_permanent(error):
            return Verdict.DEAD_LETTER
        if attempt >= self.max_attempts:
            return Verdict.DEAD_LETTER
        if attempt % self.in_place_attempts != 0:
            return Verdict.RETRY_IN_PLACE
        return Verdict.RETRY_LATER

    def delay(self, error: BaseException, attempt: int, *, in_place: bool) -> float:
        retry_after = error.retry_after if isinstance(error, RetryableError) else None
        if retry_after is not None and retry_after > 0:
            return min(float(retry_after), self.max_retry_topic_delay_s)
        if in_place:
            raw = min(self.base_delay_s * 2.0 ** (attempt - 1), self.max_in_place_delay_s)
        else:
            rounds = max(1, attempt // self.in_place_attempts)
            raw = min(self.retry_topic_delay_s * 2.0 ** (rounds - 1), self.max_retry_topic_delay_s)
        return raw * (1 + random.uniform(-self.jitter, self.jitter))
