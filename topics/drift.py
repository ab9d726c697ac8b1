"""How a cluster's topics differ from the catalog: partitions, replicas and configs.

A topic of agentstream must look exactly as the catalog describes it. Partition counts matter
most: every event is keyed by ``conversation_id``, consumers use range assignment, and one
member owns a conversation in every topic only while all topics have the catalog's partition
count; a topic created by a broker's auto-creation (``num.partitions``, often 1) or altered by
hand breaks that silently. Retention, ``min.insync.replicas`` and the cleanup policy decide how
long events stay and whether an acknowledged write survives a broker's loss.

:func:`compare` says what differs for one topic; ``agentstream topics describe`` prints every
difference and workers refuse to start on a partition mismatch (:func:`partition_mismatch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agentstream.schemas.errors import ConfigError
from agentstream.topics.bus import TopicDescription

__all__ = ["Difference", "TopicCheck", "compare", "partition_mismatch"]


@dataclass(frozen=True, slots=True)
class Difference:
    """One setting of a topic that is not what the catalog says."""

    setting: str
    """``partitions``, ``replication.factor`` or a topic config (``retention.ms``, ...)."""
    wanted: str
    actual: str

    def __str__(self) -> str:
        return f"{self.setting} {self.actual} (catalog: {self.wanted})"


@dataclass(frozen=True, slots=True)
class TopicCheck:
    """A catalog topic as found on the cluster (``found`` None: it does not exist)."""

    wanted: TopicDescription
    found: TopicDescription | None
    differences: tuple[Difference, ...]

    @property
    def name(self) -> str:
        return self.wanted.name

    @property
    def exists(self) -> bool:
        return self.found is not None

    @property
    def ok(self) -> bool:
        return self.exists and not self.differences

    @property
    def partitions_differ(self) -> bool:
        return any(d.setting == "partitions" for d in self.differences)


def compare(
    wanted: TopicDescription,
    found: TopicDescription | None,
    configs: Mapping[str, str] | None = None,
) -> TopicCheck:
    """What differs between the catalog's ``wanted`` and the cluster's ``found``.

    ``configs`` are the topic's effective configs on the cluster; only the configs the
    catalog sets are compared, and none when ``configs`` is None (not read).
    """
    if found is None:
        return TopicCheck(wanted, None, ())
    differences = []
    if found.partitions != wanted.partitions:
        differences.append(Difference("partitions", str(wanted.partitions), str(found.partitions)))
    if found.replication_factor != wanted.replication_factor:
        differences.append(
            Difference(
                "replication.factor",
                str(wanted.replication_factor),
                str(found.replication_factor),
            )
        )
    if configs is not None:
        for key, value in sorted(wanted.configs.items()):
            actual = configs.get(key)
            if actual != value:
                differences.append(Difference(key, value, "unset" if actual is None else actual))
    return TopicCheck(wanted, found, tuple(differences))


def partition_mismatch(checks: Iterable[TopicCheck]) -> ConfigError | None:
    """The error a worker refuses to start with when a topic's partition count is not the
    catalog's; None when every existing topic has the catalog's count."""
    checks = list(checks)
    wrong = [c for c in checks if c.partitions_differ and c.found is not None]
    if not wrong:
        return None
    listed = ", ".join(f"{c.name} has {c.found.partitions}" for c in wrong if c.found is not None)
    wanted = wrong[0].wanted.partitions
    counts = {c.found.partitions for c in checks if c.found is not None}
    # Every topic has the same other count: the settings are what is wrong, most likely.
    match_hint = (
        f"if {next(iter(counts))} partitions are what you want, set "
        f"AGENTSTREAM_TOPICS__PARTITIONS={next(iter(counts))}; otherwise "
        if len(counts) == 1
        else ""
    )
    return ConfigError(
        f"topic partition counts differ from the catalog's {wanted}: {listed} "
        "(`agentstream topics describe` lists every difference). Workers refuse to start: "
        "a conversation's events must sit on the same partition number in every topic so "
        f"that one group member owns it. To fix: {match_hint}delete the wrong topics and run "
        "`agentstream topics create` (while no worker runs; their events are lost), or add "
        "partitions with `kafka-topics --alter --partitions N` on every topic alike (existing "
        "conversations then move to other partitions, so drain the topics first)"
    )
