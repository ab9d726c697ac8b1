"""A circuit breaker: stop calling something that keeps failing, and probe it again later.

Wrapped around each tool (and usable around model calls), it turns a run of failures into
fast :class:`CircuitOpen` errors for ``reset_timeout_s`` instead of piling timeouts on a
broken dependency. ``CircuitOpen`` is retriable with ``retry_after`` set to the time left, so
the runtime's delayed retry lands about when the breaker lets a probe through.

States: ``closed`` (calls pass; ``failure_threshold`` consecutive failures open it),
``open`` (calls fail fast until the reset timeout passes), ``half_open`` (one probe call
passes; its success closes the breaker, its failure opens it again). Only failures that say
something about the dependency count: by default a :class:`~schemas.PermanentError` (a call
refused for its input) does not. The breaker is per process and not thread-safe; it is meant
for one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from agentstream.schemas import PermanentError, RetryableError

__all__ = ["CircuitBreaker", "CircuitOpen", "CircuitState"]

CircuitState = Literal["closed", "open", "half_open"]
T = TypeVar("T")
_STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitOpen(RetryableError):
    """The breaker is open: the call was not attempted."""


def _counts_as_failure(exc: BaseException) -> bool:
    return not isinstance(exc, PermanentError)


class CircuitBreaker:
    """Closed, open, half-open breaker around calls to one dependency."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        is_failure: Callable[[BaseException], bool] = _counts_as_failure,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._is_failure = is_failure
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """The current state, for metrics: an open breaker whose timeout passed is half-open."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return "half_open"
        return "open"

    @property
    def state_value(self) -> int:
        """The state as a gauge value: 0 closed, 1 half-open, 2 open."""
        return _STATE_VALUES[self.state]

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._failures

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go through now."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._probing:
            self._probing = True
            return
        assert self._opened_at is not None
        left = max(self.reset_timeout_s - (self._clock() - self._opened_at), 0.0)
        raise CircuitOpen(
            f"circuit {self.name!r} is open after {self._failures} failures; retry in {left:.1f}s",
            retry_after=left if left > 0 else self.reset_timeout_s,
        )

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` through the breaker, recording its outcome."""
        self.before_call()
        try:
            result = await fn()
        except Exception as exc:
            if self._is_failure(exc):
                self.record_failure()
            else:
                # The dependency answered (it refused the input): it is alive.
                self.record_success()
            raise
        except BaseException:
            # Cancelled: says nothing about the dependency, but frees the probe slot.
            self._probing = False
            raise
        self.record_success()
        return result
