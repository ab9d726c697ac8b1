"""Records meant for one consumer group: retry copies and dead-letter replays.

A topic has several consumer groups (``user_request``: the agent, the memory worker, the
ingress projection, the stats worker), and they share its ``.retry`` sibling. A retry copy,
though, concerns only the group whose handling failed, and so does the replay of a dead
letter: another group acting on it would handle an event ahead of its own backlog on the main
topic, out of order per key (issue 14, ADR 17). Such a record names its group in a header,
and every other group passes it by without effect:

- ``x-retry-group`` on a ``T.retry`` record: the group that moved it there. A retry copy
  written before this header existed names no group; it is taken to be the group's own when
  the group has its key parked (every group parks the key of what it sends to ``T.retry``).
- ``x-replayed-group`` on a replayed dead letter (``agentstream dlq replay``): the group that
  dead-lettered it (``x-dlq-group``). A replay without it goes to every group, which
  deduplicate it by event id.
"""

from __future__ import annotations

from agentstream.schemas import header
from agentstream.topics import Record

__all__ = ["REPLAY_GROUP", "RETRY_GROUP", "addressee"]

RETRY_GROUP = "x-retry-group"
REPLAY_GROUP = "x-replayed-group"


def addressee(record: Record, *, from_retry: bool) -> str | None:
    """The one group ``record`` is meant for; None when it names none."""
    return header(record.headers, RETRY_GROUP if from_retry else REPLAY_GROUP)
