"""A replicated Apache Kafka cluster (KRaft, three combined broker+controller nodes) for tests.

:class:`KafkaCluster` runs the jars that ``infra/kafka/fetch.sh`` resolves (the version pinned
in ``infra/kafka/pom.xml``) as ``size`` JVMs, each both a broker and a voter of a static
controller quorum, with the settings a production cluster would have for durability:
replication factor 3 for every topic (internal ones included), ``min.insync.replicas=2``,
unclean leader election off. Besides fewer threads and the group settings the single test
broker has too (no initial rebalance delay, sessions from 1 s, no auto-created topics), the
rest is Kafka's default, in particular the broker session (9 s) after which the controller
fences a broker that stopped heartbeating, so the failover times the chaos suite measures
are those of a stock cluster.

A node can be killed (SIGKILL), stopped (SIGTERM, a controlled shutdown that moves its
leaderships away first), and started again on the same ports and data dir; the cluster can
say which node leads which partition and which node is the active controller. The methods
block (run them with ``asyncio.to_thread`` from a test's event loop).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tests.services.kafka import kafka_version
from tests.services.kafka_node import TOOL_OPTS, KafkaNode, distinct_ports, fetch_libs
from tests.services.processes import (
    ServiceError,
    register,
    tail,
    unregister,
)

__all__ = ["KafkaCluster", "KafkaNode"]


class KafkaCluster:
    """``size`` KRaft nodes (broker and controller each) with replication ``size``."""

    def __init__(self, size: int = 3, *, heap: str = "256m", start_timeout: float = 120.0) -> None:
        self.size = size
        self.heap = heap
        self.start_timeout = start_timeout
        self.version = kafka_version()
        self.root = Path(tempfile.mkdtemp(prefix="agentstream-kafka-cluster-"))
        self.cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        while self.cluster_id.startswith("-"):
            self.cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        ports = distinct_ports(2 * size)
        self.nodes = {
            i: KafkaNode(i, ports[2 * (i - 1)], ports[2 * i - 1], self.root / f"node-{i}")
            for i in range(1, size + 1)
        }
        self.start_seconds: float | None = None
        self._libs: Path | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaCluster({self.bootstrap!r}, root={str(self.root)!r})"

    @property
    def bootstrap(self) -> str:
        """Every node's PLAINTEXT listener, comma-separated."""
        return ",".join(n.bootstrap for n in self.nodes.values())

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Format every node (same cluster id), start them all, wait until each is a broker
        of the cluster."""
        if self._closed:
            raise ServiceError("the cluster was closed")
        register(self)
        began = time.monotonic()
        self._libs = libs = fetch_libs()
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes.values())
        try:
            for node in self.nodes.values():
                node.configure(voters, self.size)
            with ThreadPoolExecutor(self.size) as pool:
                list(pool.map(lambda n: n.format(libs, self.cluster_id), self.nodes.values()))
            for node in self.nodes.values():
                node.launch(libs, self.heap)
            self.wait_ready(self.nodes)
        except BaseException:
            self._kill_all()
            raise
        self.start_seconds = time.monotonic() - began

    def start_node(self, node_id: int) -> None:
        """Start a stopped or killed node again (same ports, same data) and wait until the
        cluster lists it as a broker again."""
        node = self.nodes[node_id]
        if node.running:
            raise ServiceError(f"node {node_id} is running already (pid {node.pid})")
        assert self._libs is not None, "start() first"
        node.launch(self._libs, self.heap)
        self.wait_ready([node_id])

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash; the controller fences the node after the broker session."""
        self.nodes[node_id].kill()

    def stop(self, node_id: int, timeout: float = 60.0) -> None:
        """SIGTERM: a controlled shutdown (leaderships move away first); SIGKILL after
        ``timeout``."""
        self.nodes[node_id].stop(timeout)

    def close(self) -> None:
        self._closed = True
        try:
            self._kill_all()
        finally:
            unregister(self)
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_all(self) -> None:
        for node in self.nodes.values():
            node.close()

    # -- what the cluster says -----------------------------------------------------------

    def wait_ready(self, node_ids: Iterable[int], timeout: float | None = None) -> None:
        """Until every node in ``node_ids`` logged its start and the cluster's metadata
        lists it as a broker."""
        wanted = set(node_ids)
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            for i in wanted:
                if not self.nodes[i].running:
                    raise ServiceError(f"node {i} exited during startup:\n{self.log_tail(i)}")
            with contextlib.suppress(Exception):
                if wanted <= asyncio.run(self._broker_ids()):
                    return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"nodes {sorted(wanted)} not brokers of the cluster within the timeout\n"
                    + "\n".join(self.log_tail(i) for i in wanted)
                )
            time.sleep(0.5)

    def leaders(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """``(topic, partition) -> leader node id`` (``-1`` while a partition has none)."""
        return asyncio.run(self._leaders(list(topics)))

    def under_replicated(self) -> list[tuple[str, int]]:
        """Partitions of every topic (internal ones too) whose ISR misses a replica."""
        return asyncio.run(self._under_replicated())

    def wait_in_sync(self, timeout: float = 90.0) -> float:
        """Until no partition is under-replicated; the seconds it took."""
        began = time.monotonic()
        while True:
            with contextlib.suppress(Exception):
                if not self.under_replicated():
                    return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise ServiceError(f"partitions still under-replicated after {timeout}s")
            time.sleep(0.5)

    def active_controller(self) -> int:
        """The node id of the quorum's leader (Kafka's ``kafka-metadata-quorum`` tool)."""
        running = [n for n in self.nodes.values() if n.running]
        if not running or self._libs is None:
            raise ServiceError("no node is running")
        result = subprocess.run(
            [
                "java",
                *TOOL_OPTS,
                "-cp",
                f"{self._libs}/*",
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                ",".join(n.bootstrap for n in running),
                "describe",
                "--status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = re.search(r"^LeaderId:\s*(\d+)", result.stdout, re.MULTILINE)
        if result.returncode != 0 or match is None:
            raise ServiceError(f"kafka-metadata-quorum failed:\n{result.stdout}{result.stderr}")
        return int(match.group(1))

    def log_tail(self, node_id: int, lines: int = 30) -> str:
        node = self.nodes[node_id]
        return f"--- node {node_id} ---\n{tail(node.log_file, lines)}"

    # -- internals -----------------------------------------------------------------------

    def _admin(self) -> AIOKafkaAdminClient:
        running = [n.bootstrap for n in self.nodes.values() if n.running]
        return AIOKafkaAdminClient(
            bootstrap_servers=",".join(running) or self.bootstrap, request_timeout_ms=5000
        )

    async def _broker_ids(self) -> set[int]:
        admin = self._admin()
        await admin.start()
        try:
            described = await admin.describe_cluster()
            return {int(b["node_id"]) for b in described["brokers"]}
        finally:
            await admin.close()

    async def _describe(self, topics: list[str] | None) -> list[dict[str, object]]:
        admin = self._admin()
        await admin.start()
        try:
            found: list[dict[str, object]] = await admin.describe_topics(topics)
            return found
        finally:
            await admin.close()

    async def _leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        leaders: dict[tuple[str, int], int] = {}
        for topic in await self._describe(topics):
            for p in _partitions(topic):
                leaders[(str(topic["topic"]), int(p["partition"]))] = int(p["leader"])
        return leaders

    async def _under_replicated(self) -> list[tuple[str, int]]:
        short = []
        for topic in await self._describe(None):
            for p in _partitions(topic):
                if len(p["isr"]) < len(p["replicas"]) or int(p["leader"]) < 0:
                    short.append((str(topic["topic"]), int(p["partition"])))
        return short


def _partitions(topic: dict[str, object]) -> Iterator[dict[str, object]]:
    partitions = topic.get("partitions")
    if isinstance(partitions, list):
        yield from partitions
