"""The storage of the in-process bus: one append-only log per partition of a topic.

Offsets start at 0 and never change once given, as on a Kafka partition; nothing is
compacted or expired, because the embedded default lives only as long as its process.
"""

from __future__ import annotations

import time

from agentstream.topics.bus import Headers, Record, TopicDescription

__all__ = ["TopicLog"]


class TopicLog:
    """The partitions of one topic, each a list of records whose index is the offset."""

    def __init__(self, description: TopicDescription) -> None:
        if description.partitions < 1:
            raise ValueError(
                f"topic {description.name!r} needs at least one partition, "
                f"not {description.partitions}"
            )
        self.description = description
        self._partitions: list[list[Record]] = [[] for _ in range(description.partitions)]

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def partitions(self) -> int:
        return self.description.partitions

    def append(
        self, partition: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Record:
        log = self._partitions[self._check(partition)]
        record = Record(
            topic=self.name,
            partition=partition,
            offset=len(log),
            key=key,
            value=value,
            headers=headers,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        log.append(record)
        return record

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get."""
        return len(self._partitions[self._check(partition)])

    def read(self, partition: int, offset: int, limit: int | None = None) -> list[Record]:
        """Records of ``partition`` from ``offset`` on, at most ``limit`` of them."""
        log = self._partitions[self._check(partition)]
        start = max(offset, 0)
        return log[start:] if limit is None else log[start : start + limit]

    def _check(self, partition: int) -> int:
        if not 0 <= partition < self.partitions:
            raise ValueError(
                f"topic {self.name!r} has partitions 0..{self.partitions - 1}, not {partition}"
            )
        return partition
