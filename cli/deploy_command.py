"""``agentstream deploy render``: the Kubernetes manifests of the app, from the app.

Writes what :func:`agentstream.k8s.render` returns (a Deployment, PodDisruptionBudget and
KEDA ScaledObject per consumer group, one per declared agent among them, the Strimzi topics
and the kustomization) into ``--out DIR``, or prints them to stdout as one YAML stream.
The files that do not depend on the app (namespace, ConfigMap, KEDA authentication, the
ingress) are those of ``infra/k8s``: render into a copy of it. ``--check`` compares instead
of writing and exits 1 when a file differs (what CI runs on ``infra/k8s``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentstream.settings import Settings

__all__ = ["register"]


def register(
    subparsers: Any,
) -> dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]]:
    p = subparsers.add_parser(
        "deploy",
        help="render the Kubernetes manifests of the app",
        description="Render the Kubernetes manifests of the app (--app / AGENTSTREAM_APP): "
        "one Deployment and KEDA ScaledObject per worker group, one per declared agent.",
    )
    actions = p.add_subparsers(dest="deploy_action", metavar="ACTION", required=True)
    render = actions.add_parser(
        "render",
        help="write the manifests into --out DIR (default: print them)",
        description="Write the worker Deployments, PodDisruptionBudgets and KEDA "
        "ScaledObjects, the Strimzi KafkaTopics and kustomization.yaml of the app.",
    )
    render.add_argument("--out", type=Path, default=None, metavar="DIR")
    # As on every command (agentstream.cli), and here too: `deploy render --app x` reads well.
    render.add_argument(
        "--app",
        default=argparse.SUPPRESS,
        help="the app declaring the agents, package.module[:attr]",
    )
    render.add_argument(
        "--cluster", default=None, help="the Strimzi Kafka resource (default agentstream-kafka)"
    )
    render.add_argument(
        "--check", action="store_true", help="compare with DIR instead of writing (exit 1)"
    )
    return {"deploy": _cmd_deploy}


async def _cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    from agentstream.k8s import DEFAULT_CLUSTER, render

    files = render(settings, args.cluster or DEFAULT_CLUSTER)
    if args.out is None:
        if args.check:
            print("error: --check needs --out DIR", file=sys.stderr)
            return 2
        for name, text in files.items():
            print(f"# --- {name}")
            print(text, end="")
        return 0
    if args.check:
        stale = [n for n, t in files.items() if _read(args.out / n) != t]
        for name in stale:
            print(f"{args.out / name} is stale", file=sys.stderr)
        if stale:
            print("hint: run `agentstream deploy render --out DIR` again", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None
