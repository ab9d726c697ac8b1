"""The error taxonomy every layer raises and the runtime acts on.

Each error class says whether it is worth retrying (``retriable``), the way aiokafka's
``errors.py`` does; the handler runtime decides from that attribute, never from the message.
Unknown exceptions are treated as retriable until the retry budget ends, then dead-lettered.
"""

from __future__ import annotations

__all__ = [
    "AgentstreamError",
    "ConfigError",
    "PermanentError",
    "RetryableError",
    "SchemaError",
    "SkipEvent",
    "ToolRejected",
    "TopicMissing",
]


class AgentstreamError(Exception):
    """Base of every error agentstream raises on purpose."""

    retriable: bool = False


class RetryableError(AgentstreamError):
    """A passing failure: timeouts, 5xx, 429, an unreachable broker.

    ``retry_after`` (seconds), when the remote side said how long to wait (an HTTP
    ``Retry-After``), sets the delay before the next attempt instead of the backoff.
    """

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(AgentstreamError):
    """Retrying cannot help: the event goes straight to the dead-letter topic."""


class SchemaError(PermanentError):
    """Bytes that do not decode into a valid event, or an event that breaks its schema.

    ``topic``, ``partition`` and ``offset`` locate the record when it came from a topic, so
    the message alone tells an operator which record to look at.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = message
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = ""
        if topic is not None:
            where = f" at {topic}[{partition}]@{offset}"
        super().__init__(f"undecodable event{where}: {message}")


class ToolRejected(PermanentError):
    """A tool call that can never succeed: unknown tool, invalid arguments, refused input."""


class ConfigError(PermanentError):
    """Settings that cannot work; raised at start-up, before anything is consumed."""


class TopicMissing(PermanentError):
    """A topic the worker needs does not exist and may not be created automatically."""


class SkipEvent(AgentstreamError):
    """Raised by a handler to acknowledge an event without any effect."""
