"""Write ``infra/k8s/topics.yaml``: one Strimzi ``KafkaTopic`` for every topic of the catalog.

``agentstream deploy render`` writes the same file with the worker manifests; this script
is for topic settings alone (partitions, replicas, retention) from a plain checkout.

The topics of a Kubernetes deployment are owned by Strimzi's Topic Operator, so the workers
run with ``AGENTSTREAM_TOPICS__CREATE_ON_START=false`` and fail fast when one is missing.
The manifests come from :class:`topics.Catalog`, the same code ``agentstream topics create``
uses, so names, partitions, replicas and retention never drift from what the workers expect.
``tests/deploy`` fails when the committed file differs from this script's output for the
topic settings of ``configmap.yaml``.

    python infra/k8s/generate_topics.py                  # Catalog() defaults
    python infra/k8s/generate_topics.py --partitions 24  # with AGENTSTREAM_TOPICS__PARTITIONS=24
    python infra/k8s/generate_topics.py --check          # exit 1 when topics.yaml is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from agentstream import k8s  # noqa: E402 - after the path set-up, for a plain checkout
from agentstream.settings import agent_names  # noqa: E402
from agentstream.topics import Catalog  # noqa: E402

__all__ = ["DEFAULT_CLUSTER", "OUTPUT", "main", "render", "resource_name"]

OUTPUT = Path(__file__).resolve().parent / "topics.yaml"
#: The ``Kafka`` resource of Strimzi that holds the topics (label ``strimzi.io/cluster``).
DEFAULT_CLUSTER = k8s.DEFAULT_CLUSTER


resource_name = k8s.resource_name


def render(catalog: Catalog, cluster: str = DEFAULT_CLUSTER) -> str:
    """The YAML text of the KafkaTopic manifests, one document per physical topic
    (:func:`agentstream.k8s.render_topics`)."""
    return k8s.render_topics(catalog, cluster)


def main(argv: list[str] | None = None) -> int:
    defaults = Catalog()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default=defaults.prefix, help="AGENTSTREAM_TOPICS__PREFIX")
    p.add_argument("--partitions", type=int, default=defaults.partitions)
    p.add_argument("--replication-factor", type=int, default=defaults.replication_factor)
    p.add_argument("--retention-ms", type=int, default=defaults.retention_ms)
    p.add_argument("--dlq-retention-ms", type=int, default=defaults.dlq_retention_ms)
    p.add_argument("--app", default=None, help="AGENTSTREAM_APP: its agents' input topics")
    p.add_argument("--cluster", default=DEFAULT_CLUSTER, help="Strimzi Kafka resource name")
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = p.parse_args(argv)
    catalog = Catalog(
        prefix=args.prefix,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        retention_ms=args.retention_ms,
        dlq_retention_ms=args.dlq_retention_ms,
        agents=agent_names(args.app),
    )
    text = render(catalog, args.cluster)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {Path(__file__).name} again", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(list(catalog.specs()))} topics)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
