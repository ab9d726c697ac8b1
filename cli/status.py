"""The consumer groups of a deployment, read from the broker: members, offsets, lag.

For each group: its state, its members (client id, host) and their partitions, and per
partition the committed offset, the end offset and the lag, with the group's total; and
whether every topic of the catalog exists. The numbers are the ones Kafka's own
``kafka-consumer-groups --describe`` prints (a partition with no committed offset has no lag,
as there), so an operator can trust either tool. :func:`group_status` does the reading and is
what tests and other code call; ``agentstream status`` (:mod:`agentstream.status_command`)
only formats it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentstream.schemas.errors import RetryableError
from agentstream.topics import Catalog, TopicPartition
from agentstream.workers import WORKERS
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, KafkaTimeoutError, for_code
from aiokafka.protocol.admin import DescribeGroupsRequest_v1, DescribeGroupsRequest_v2
from aiokafka.protocol.api import Request
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from agentstream.topics.kafka import KafkaBus

__all__ = [
    "DeploymentGroup",
    "GroupStatus",
    "MemberStatus",
    "PartitionStatus",
    "StatusReport",
    "TopicHealth",
    "deployment_groups",
    "deployment_roles",
    "group_status",
    "list_groups",
    "projection_group",
    "topic_health",
    "worker_group",
]


class _DescribeGroups(Request[DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]):  # type: ignore[misc]
    """DescribeGroups pinned to v1-v2: aiokafka 0.14 decodes v3 with the v2 layout (no
    ``authorized_operations``), so its ``describe_consumer_groups`` fails against Kafka 4,
    which negotiates v3, with "Buffer underrun". v1-v2 carry everything shown here."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._groups)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PartitionStatus(_Model):
    """One partition a group reads: where it is, where the log ends, how far behind it is."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed offset (the next record to read); None when nothing was
    committed yet: a new member starts from the earliest offset then."""
    end_offset: int | None
    """The high watermark; None when the topic no longer exists."""
    lag: int | None
    member_id: str | None = None
    client_id: str | None = None
    host: str | None = None


class MemberStatus(_Model):
    member_id: str
    client_id: str
    host: str
    assignment: dict[str, list[int]]
    """Topic to the partition numbers this member owns."""


class GroupStatus(_Model):
    group_id: str
    kind: str | None = None
    """The worker kind reading with this group (``router``, ``agent``, ...), when it is one
    of the deployment's groups."""
    agent: str | None = None
    """The declared agent whose input topic the group reads (the agent worker's groups)."""
    state: str
    """As Kafka names it: Stable, PreparingRebalance, CompletingRebalance, Empty, Dead."""
    exists: bool
    protocol_type: str
    assignor: str
    members: list[MemberStatus]
    partitions: list[PartitionStatus]
    total_lag: int
    error: str | None = None


class TopicHealth(_Model):
    name: str
    exists: bool
    partitions: int | None
    replication_factor: int | None
    wanted_partitions: int


class StatusReport(_Model):
    groups: list[GroupStatus]
    topics: list[TopicHealth]

    @property
    def healthy(self) -> bool:
        """Every catalog topic exists with the catalog's partition count (workers refuse to
        start otherwise, ADR 20) and every group could be read."""
        topics_ok = all(t.exists and t.partitions == t.wanted_partitions for t in self.topics)
        return topics_ok and not any(g.error for g in self.groups)


#: The agents of the built-in app (a default :class:`Catalog`'s).
_DEFAULT_AGENTS = Catalog().agents


def worker_group(prefix: str, kind: str, agent: str | None = None) -> str:
    """The consumer group of the ``kind`` workers (agentstream.workers) of a deployment; of
    ``agent``'s workers for the agent kind, which has one group per declared agent."""
    return WORKERS.get(kind).group_id(prefix, agent)


def projection_group(prefix: str) -> str:
    """The consumer group of the ingress's projection worker."""
    return worker_group(prefix, "projection")


@dataclass(frozen=True, slots=True)
class DeploymentGroup:
    """One consumer group of a deployment: its id, the worker kind and, for the agent
    worker, the declared agent it serves."""

    group_id: str
    kind: str
    agent: str | None = None


def deployment_roles(prefix: str, agents: Sequence[str] = _DEFAULT_AGENTS) -> list[DeploymentGroup]:
    """The consumer groups of the deployment with topic prefix ``prefix`` and the declared
    ``agents`` (:attr:`Catalog.agents`): one per worker kind, one per agent for a per-agent
    kind (``agentstream-agent.<name>``), the ingress's projection last."""
    kinds = sorted(WORKERS, key=lambda kind: not kind.standalone)
    out: list[DeploymentGroup] = []
    for kind in kinds:
        if kind.per_agent:
            out += [DeploymentGroup(kind.group_id(prefix, a), kind.name, a) for a in agents]
        else:
            out.append(DeploymentGroup(kind.group_id(prefix), kind.name))
    return out


def deployment_groups(prefix: str, agents: Sequence[str] = _DEFAULT_AGENTS) -> list[str]:
    """The group ids of :func:`deployment_roles`."""
    return [g.group_id for g in deployment_roles(prefix, agents)]


async def list_groups(bus: KafkaBus) -> list[str]:
    """Every consumer group the cluster knows (classic protocol), sorted."""
    try:
        raw = await bus.admin.list_consumer_groups()
    except KafkaError as exc:
        raise _readable(exc, "list consumer groups") from exc
    return sorted({str(group[0]) for group in raw})


async def group_status(bus: KafkaBus, group_ids: Sequence[str]) -> list[GroupStatus]:
    """State, members, assignment, committed and end offsets and lag of each group.

    A group the broker refuses to describe (no ACL, say) comes back with ``error`` set rather
    than failing the others; an unreachable broker raises ``RetryableError``.
    """
    described = await asyncio.gather(*(_describe(bus, g) for g in group_ids))
    wanted: set[TopicPartition] = set()
    for group in described:
        wanted.update(group.offsets)
        wanted.update(group.owners)
    ends = await _end_offsets(bus, wanted)
    return [_assemble(group, ends) for group in described]


async def topic_health(bus: KafkaBus, catalog: Catalog) -> list[TopicHealth]:
    """Whether each topic of ``catalog`` exists, with its partitions and replicas."""
    specs = list(catalog.specs())
    found = await bus.describe_topics([s.name for s in specs])
    return [
        TopicHealth(
            name=s.name,
            exists=s.name in found,
            partitions=found[s.name].partitions if s.name in found else None,
            replication_factor=found[s.name].replication_factor if s.name in found else None,
            wanted_partitions=s.partitions,
        )
        for s in specs
    ]


# -- reading ----------------------------------------------------------------------------------


@dataclass
class _Described:
    """What the broker said about one group, before end offsets are known."""

    group_id: str
    state: str = "Unknown"
    protocol_type: str = ""
    assignor: str = ""
    error: str | None = None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    members: list[MemberStatus] = field(default_factory=list)

    @property
    def owners(self) -> dict[TopicPartition, MemberStatus]:
        return {
            TopicPartition(topic, p): member
            for member in self.members
            for topic, parts in member.assignment.items()
            for p in parts
        }


def _readable(exc: KafkaError, action: str) -> RetryableError:
    return RetryableError(f"Kafka refused to {action}: {exc}")


#: How long ``status`` waits for a group coordinator. On a fresh cluster the broker creates
#: ``__consumer_offsets`` on the first coordinator lookup and answers "not available"
#: meanwhile (a few seconds); past this the error is reported.
COORDINATOR_WAIT_S = 15.0


async def _coordinator(bus: KafkaBus, group_id: str) -> int:
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + COORDINATOR_WAIT_S, 0.2
    while True:
        try:
            coordinator: int = await bus.admin.find_coordinator(group_id)
            return coordinator
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or loop.time() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


async def _describe(bus: KafkaBus, group_id: str) -> _Described:
    admin = bus.admin
    try:
        coordinator = await _coordinator(bus, group_id)
        # admin._send_request is aiokafka's own way to send a request to one node; its
        # describe_consumer_groups is unusable against Kafka 4 (see _DescribeGroups).
        response = await admin._send_request(_DescribeGroups([group_id]), coordinator)
        error_code, _, state, protocol_type, assignor, raw_members = response.groups[0]
        if error_code != 0:
            return _Described(group_id, error=_error_text(for_code(error_code)()))
        fetched = await admin.list_consumer_group_offsets(
            group_id, group_coordinator_id=coordinator
        )
    except KafkaError as exc:
        if getattr(exc, "retriable", False) or isinstance(exc, KafkaTimeoutError):
            raise _readable(exc, f"describe group {group_id!r}") from exc
        return _Described(group_id, error=_error_text(exc))
    offsets = {
        TopicPartition(tp.topic, tp.partition): int(meta.offset)
        for tp, meta in fetched.items()
        if meta.offset is not None and meta.offset >= 0
    }
    return _Described(
        group_id,
        state=state,
        protocol_type=protocol_type,
        assignor=assignor,
        offsets=offsets,
        members=[_member(m, protocol_type) for m in raw_members],
    )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _member(raw: Any, protocol_type: str) -> MemberStatus:
    member_id, client_id, host, _metadata, assignment_bytes = raw
    assignment: dict[str, list[int]] = {}
    if protocol_type == "consumer" and assignment_bytes:
        try:
            decoded = ConsumerProtocolMemberAssignment.decode(assignment_bytes)
        except Exception:  # a foreign client's assignment format: show the member without it
            decoded = None
        if decoded is not None:
            for topic, partitions in decoded.assignment:
                assignment.setdefault(topic, []).extend(sorted(partitions))
    return MemberStatus(member_id=member_id, client_id=client_id, host=host, assignment=assignment)


async def _end_offsets(bus: KafkaBus, wanted: set[TopicPartition]) -> dict[TopicPartition, int]:
    if not wanted:
        return {}
    # A committed offset may outlive its topic; asking for the end of a partition that does
    # not exist would wait for metadata until the request timeout.
    found = await bus.describe_topics(sorted({tp.topic for tp in wanted}))
    present = [
        tp for tp in wanted if tp.topic in found and tp.partition < found[tp.topic].partitions
    ]
    try:
        return await bus.end_offsets(sorted(present))
    except KafkaError as exc:
        raise _readable(exc, "list end offsets") from exc


def _assemble(group: _Described, ends: dict[TopicPartition, int]) -> GroupStatus:
    owners = group.owners
    rows = []
    for tp in sorted(set(group.offsets) | set(owners)):
        committed = group.offsets.get(tp)
        end = ends.get(tp)
        # As kafka-consumer-groups: no committed offset, no lag (and no clamping at zero).
        lag = None if committed is None or end is None else end - committed
        who = owners.get(tp)
        rows.append(
            PartitionStatus(
                topic=tp.topic,
                partition=tp.partition,
                committed=committed,
                end_offset=end,
                lag=lag,
                member_id=who.member_id if who else None,
                client_id=who.client_id if who else None,
                host=who.host if who else None,
            )
        )
    return GroupStatus(
        group_id=group.group_id,
        state=group.state,
        exists=group.error is None and (group.state != "Dead" or bool(group.offsets)),
        protocol_type=group.protocol_type,
        assignor=group.assignor,
        members=group.members,
        partitions=rows,
        total_lag=sum(r.lag or 0 for r in rows),
        error=group.error,
    )
