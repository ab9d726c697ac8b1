"""``agentstream status``: the consumer groups and topics of a deployment, for people.

Reads what :mod:`agentstream.status` collects (each group's state, members, assignment,
committed and end offsets and lag, and whether every catalog topic exists) and prints it as
tables, or as JSON with ``--json``. Exit status: 0 when every catalog topic exists with the
catalog's partition count and every group could be read, 1 otherwise (a group named with
``--group`` that does not exist included), 2 on the in-process bus (whose groups live inside
the ``agentstream up`` process).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agentstream.schemas.errors import ConfigError, RetryableError
from agentstream.status import (
    DeploymentGroup,
    GroupStatus,
    StatusReport,
    deployment_roles,
    group_status,
    list_groups,
    topic_health,
)
from aiokafka.errors import KafkaError

if TYPE_CHECKING:
    from agentstream.settings import Settings

__all__ = ["register"]


def register(
    subparsers: Any,
) -> dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]]:
    p = subparsers.add_parser(
        "status",
        help="consumer groups (members, assignments, offsets, lag) and topic health",
        description="Read from Kafka: each consumer group's state, members, assignment, "
        "offsets and lag, and whether every catalog topic exists (exit 1 if not).",
    )
    p.add_argument(
        "--group",
        "-g",
        action="append",
        dest="groups",
        metavar="G",
        help="a consumer group id, as Kafka names it, e.g. agentstream-agent.billing "
        "(repeatable; default: this deployment's groups: the router, one per declared "
        "agent, tool, memory, stats and the ingress's projection)",
    )
    p.add_argument(
        "--agent",
        "-a",
        action="append",
        dest="agents",
        metavar="NAME",
        help="the group of a declared agent's workers, agentstream-agent.NAME (repeatable)",
    )
    p.add_argument("--all", action="store_true", dest="all_groups", help="every group")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return {"status": _cmd_status}


async def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if settings.bus != "kafka":
        print(
            "error: `agentstream status` needs Kafka: the in-process bus lives inside the "
            "`agentstream up` process; set KAFKA_BOOTSTRAP_SERVERS (or AGENTSTREAM_BUS=kafka)",
            file=sys.stderr,
        )
        return 2
    from agentstream.topics.kafka import KafkaBus

    bus = KafkaBus(settings.kafka)
    await bus.start(produce=False)
    try:
        catalog = settings.catalog()
        roles = {g.group_id: g for g in deployment_roles(catalog.prefix, catalog.agents)}
        if args.all_groups:
            group_ids = await list_groups(bus)
        else:
            group_ids = [*(args.groups or []), *_agent_groups(args, settings)]
            group_ids = group_ids or list(roles)
        groups = [
            _with_role(g, roles) for g in await group_status(bus, list(dict.fromkeys(group_ids)))
        ]
        report = StatusReport(groups=groups, topics=await topic_health(bus, catalog))
    except KafkaError as exc:
        raise RetryableError(f"Kafka refused to answer the status requests: {exc}") from exc
    finally:
        await bus.stop()
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        print(_human(report))
    # A group asked for by name that Kafka does not know is most likely a typo (or the
    # wrong prefix); the deployment's own groups may simply not have started yet.
    named = bool(args.groups or args.agents)
    unknown = [g.group_id for g in groups if named and not g.exists and not g.error]
    if unknown:
        print(
            f"error: no such consumer group: {', '.join(unknown)} (no member joined it and "
            "no offsets were committed)",
            file=sys.stderr,
        )
        print("hint: `agentstream status --all` lists every group of the cluster", file=sys.stderr)
        return 1
    return 0 if report.healthy else 1


def _agent_groups(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The groups of the agents named with ``--agent``; an undeclared one is refused."""
    if not args.agents:
        return []
    from agentstream.status import worker_group

    declared = settings.catalog().agents
    unknown = [a for a in args.agents if a not in declared]
    if unknown:
        raise ConfigError(
            f"no such agent: {', '.join(unknown)} (declared: {', '.join(declared)}; "
            "name the app with --app or AGENTSTREAM_APP)"
        )
    return [worker_group(settings.topics.prefix, "agent", a) for a in args.agents]


def _with_role(group: GroupStatus, roles: dict[str, DeploymentGroup]) -> GroupStatus:
    role = roles.get(group.group_id)
    if role is None:
        return group
    return group.model_copy(update={"kind": role.kind, "agent": role.agent})


def _human(report: StatusReport) -> str:
    lines: list[str] = []
    for g in report.groups:
        lines.extend(_human_group(g))
        lines.append("")
    present = sum(t.exists for t in report.topics)
    lines.append(f"TOPICS  {present}/{len(report.topics)} present")
    lines.extend(f"  MISSING  {t.name}" for t in report.topics if not t.exists)
    lines.extend(
        f"  {t.name}: {t.partitions} partitions, {t.wanted_partitions} configured"
        for t in report.topics
        if t.exists and t.partitions != t.wanted_partitions
    )
    return "\n".join(lines)


def _human_group(g: GroupStatus) -> list[str]:
    if g.error:
        return [f"GROUP {g.group_id}  cannot be read: {g.error}"]
    if not g.exists:
        return [f"GROUP {g.group_id}  (no such group: nothing joined or committed yet){_role(g)}"]
    head = f"GROUP {g.group_id}  {g.state}"
    if g.assignor:
        head += f"  assignor {g.assignor}"
    lines = [f"{head}  members {len(g.members)}  lag {g.total_lag}{_role(g)}"]
    if not g.partitions:
        return [*lines, "  no partitions assigned, no offsets committed"]
    if g.members:
        lines.append(f"  {'MEMBER':<48} {'CLIENT-ID':<24} {'HOST':<18} PARTITIONS")
        for m in g.members:
            owned = " ".join(
                f"{t}[{','.join(map(str, ps))}]" for t, ps in sorted(m.assignment.items())
            )
            lines.append(f"  {m.member_id:<48} {m.client_id:<24} {m.host:<18} {owned or '-'}")
    width = max(len(r.topic) for r in g.partitions)
    lines.append(
        f"  {'TOPIC':<{width}} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}  CLIENT-ID"
    )
    lines.extend(
        f"  {r.topic:<{width}} {r.partition:>9} {_dash(r.committed):>10} "
        f"{_dash(r.end_offset):>10} {_dash(r.lag):>8}  {r.client_id or '-'}"
        for r in g.partitions
    )
    return lines


def _role(g: GroupStatus) -> str:
    if g.agent is not None:
        return f"  (agent {g.agent})"
    return f"  ({g.kind})" if g.kind else ""


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)
