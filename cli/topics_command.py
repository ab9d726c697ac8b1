"""``agentstream topics create | describe``: the catalog's topics on the cluster.

``create`` makes the missing topics through the admin API, with the catalog's partitions,
replication and configs (never by a broker's auto-creation, ADR 20), then checks the ones
that existed already. ``describe`` compares every catalog topic with the cluster: partition
count, replication factor, ``retention.ms``, ``min.insync.replicas`` and ``cleanup.policy``,
and says what differs. Exit status: 0 when every topic exists as the catalog says, 1 when one
is missing or differs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from agentstream.topics import Bus, TopicDescription
from agentstream.topics.drift import TopicCheck, compare, partition_mismatch

if TYPE_CHECKING:
    from agentstream.settings import Settings

__all__ = ["check_topics", "register"]


def register(
    subparsers: Any,
) -> dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]]:
    p = subparsers.add_parser(
        "topics",
        help="create or describe the catalog's topics",
        description="create: make the missing topics of the catalog through the admin API "
        "(partitions, replication and configs from the settings). describe: compare every "
        "topic with the catalog (partitions, replication factor, retention.ms, "
        "min.insync.replicas, cleanup.policy); exit 1 when one is missing or differs.",
    )
    p.add_argument("action", choices=["create", "describe", "list"])
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    return {"topics": _cmd_topics}


async def check_topics(bus: Bus, wanted: Sequence[TopicDescription]) -> list[TopicCheck]:
    """Each of ``wanted`` compared with the cluster, configs included on Kafka."""
    from agentstream.topics.kafka import KafkaBus

    found = await bus.describe_topics([w.name for w in wanted])
    if isinstance(bus, KafkaBus):
        configs = await bus.topic_configs(sorted(found))
    else:  # the in-process bus keeps each topic's configs as created
        configs = {name: dict(d.configs) for name, d in found.items()}
    return [compare(w, found.get(w.name), configs.get(w.name)) for w in wanted]


async def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.wiring import build_bus

    wanted = [s.description() for s in settings.catalog().specs()]
    bus = build_bus(settings)
    await bus.start()
    try:
        created = await bus.create_topics(wanted) if args.action == "create" else []
        checks = await check_topics(bus, wanted)
    finally:
        await bus.stop()
    if args.json:
        rows = [_row(c) for c in checks]
        data: Any = rows
        if args.action == "create":
            data = {"created": created, "existing": len(rows) - len(created), "topics": rows}
        print(json.dumps(data, indent=2))
    else:
        print(_human(checks, created if args.action == "create" else None))
    return 0 if all(c.ok for c in checks) else 1


def _row(check: TopicCheck) -> dict[str, Any]:
    found, wanted = check.found, check.wanted
    return {
        "name": check.name,
        "exists": check.exists,
        "ok": check.ok,
        "partitions": found.partitions if found else None,
        "replication_factor": found.replication_factor if found else None,
        "wanted_partitions": wanted.partitions,
        "wanted_replication_factor": wanted.replication_factor,
        "wanted_configs": dict(wanted.configs),
        "differences": [
            {"setting": d.setting, "wanted": d.wanted, "actual": d.actual}
            for d in check.differences
        ],
    }


def _human(checks: Sequence[TopicCheck], created: list[str] | None) -> str:
    lines: list[str] = []
    if created is not None:
        lines += [f"created {name}" for name in created]
        lines.append(f"{len(checks) - len(created)} already existed")
    width = max([40, *(len(c.name) for c in checks)])
    lines.append(f"{'topic':<{width}} {'partitions':>10} {'replicas':>8}  state")
    for c in checks:
        if c.found is None:
            state = "MISSING"
        elif c.differences:
            state = "DIFFERS: " + "; ".join(str(d) for d in c.differences)
        else:
            state = "ok"
        partitions = c.found.partitions if c.found else "-"
        replicas = c.found.replication_factor if c.found else "-"
        lines.append(f"{c.name:<{width}} {partitions:>10} {replicas:>8}  {state}")
    bad = [c for c in checks if not c.ok]
    if bad:
        missing = sum(not c.exists for c in bad)
        lines.append(
            f"{len(bad)} of {len(checks)} topic(s) not as the catalog says "
            f"({missing} missing, {len(bad) - missing} differing)"
        )
    mismatch = partition_mismatch(checks)
    if mismatch is not None:
        lines.append(str(mismatch))
    return "\n".join(lines)
