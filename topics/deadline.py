"""The accept-by deadline of a record: how a producer's "no" stays a no once it is said.

A producer that gives up waiting for an acknowledgement cannot take its record back: the
broker may append it later (after a freeze, a partition, a slow disk), and consumers would
then run what the producer already reported as refused. So the producer puts a deadline on
the record, the ``x-accept-by`` header (milliseconds since the epoch), and the *broker's
append time* decides: appended at or before the deadline, the record is accepted; later,
it is refused, and every consumer recognises it as refused and does not run it.

The append time is the one timestamp the producer and every consumer read alike: the topic
has ``message.timestamp.type=LogAppendTime`` (the catalog sets it on ``user_request``), so
the broker stamps each batch as it appends it, returns that stamp in the produce response
(the publish's :class:`~agentstream.topics.bus.RecordMetadata`) and serves it to consumers
(:attr:`~agentstream.topics.bus.Record.timestamp_ms`); a retried batch the broker recognises
as a duplicate gets the first append's stamp back. The in-process bus stamps its appends
too. Only a producer that stops waiting needs the clocks at all: it must not call a record
refused before the broker's clock is surely past the deadline (see
``docs/adr/0006-ingress.md``).

A topic left with ``CreateTime`` carries the producer's send time instead, which is never
after the deadline: nothing is refused, as before this header existed, and
:func:`acked_in_time` accepts every acknowledgement (``RecordMetadata.log_append_time`` tells
a producer that this is the case).
"""

from __future__ import annotations

from agentstream.schemas import header
from agentstream.topics.bus import Headers, Record, RecordMetadata

__all__ = ["ACCEPT_BY", "accept_by", "accept_by_header", "acked_in_time", "landed_late"]

#: The header: the latest broker append time (ms since the epoch) at which the record counts.
ACCEPT_BY = "x-accept-by"


def accept_by_header(deadline_ms: int) -> tuple[str, bytes]:
    """The header that puts ``deadline_ms`` on a record."""
    return ACCEPT_BY, str(deadline_ms).encode()


def accept_by(headers: Headers) -> int | None:
    """The record's deadline, None when it has none (or an unreadable one: no deadline)."""
    raw = header(headers, ACCEPT_BY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def landed_late(record: Record) -> bool:
    """Whether ``record`` was appended after its deadline: refused, never to be run."""
    deadline = accept_by(record.headers)
    return deadline is not None and record.timestamp_ms > deadline


def acked_in_time(metadata: RecordMetadata, deadline_ms: int) -> bool:
    """Whether an acknowledged record counts as accepted: appended at or before
    ``deadline_ms``. True when the broker did not report an append time (a ``CreateTime``
    topic): consumers cannot refuse such a record either."""
    if not metadata.log_append_time or metadata.timestamp_ms is None:
        return True
    return metadata.timestamp_ms <= deadline_ms
