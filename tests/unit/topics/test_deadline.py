"""The accept-by decision (``topics/deadline.py``): the producer's and the consumers' side
of one rule, read from the broker's append time."""

from __future__ import annotations

from agentstream.topics import Record, RecordMetadata
from agentstream.topics.deadline import (
    ACCEPT_BY,
    accept_by,
    accept_by_header,
    acked_in_time,
    landed_late,
)

DEADLINE = 1_700_000_000_000


def record(timestamp_ms: int, *headers: tuple[str, bytes]) -> Record:
    return Record("t", 0, 0, b"k", b"v", headers, timestamp_ms)


def test_a_record_counts_up_to_its_deadline_inclusive() -> None:
    stamped = accept_by_header(DEADLINE)
    assert stamped == (ACCEPT_BY, b"1700000000000")
    assert not landed_late(record(DEADLINE - 1, stamped))
    assert not landed_late(record(DEADLINE, stamped))
    assert landed_late(record(DEADLINE + 1, stamped))


def test_no_deadline_means_never_refused() -> None:
    assert not landed_late(record(DEADLINE * 2))
    assert accept_by((("ce_id", b"x"),)) is None
    # An unreadable deadline is no deadline (never a reason to drop a request).
    assert not landed_late(record(DEADLINE * 2, (ACCEPT_BY, b"soon")))
    # The last value counts, as for every header.
    twice = (accept_by_header(DEADLINE * 2), accept_by_header(DEADLINE))
    assert accept_by(twice) == DEADLINE


def test_the_producer_decides_from_the_append_time_in_the_ack() -> None:
    appended = RecordMetadata("t", 0, 5, DEADLINE, True)
    assert acked_in_time(appended, DEADLINE)
    late = RecordMetadata("t", 0, 5, DEADLINE + 1, True)
    assert not acked_in_time(late, DEADLINE)
    # A CreateTime topic reports the producer's own time: no decision possible, and
    # consumers refuse nothing there either.
    assert acked_in_time(RecordMetadata("t", 0, 5, DEADLINE + 10_000, False), DEADLINE)
    assert acked_in_time(RecordMetadata("t", 0, 5), DEADLINE)
