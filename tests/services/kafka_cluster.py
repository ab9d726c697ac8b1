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
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tests.services.kafka import KAFKA_DIR, kafka_version
from tests.services.processes import (
    ServiceError,
    free_port,
    pid_alive,
    register,
    send_signal,
    tail,
    unregister,
    wait_gone,
)

__all__ = ["KafkaCluster", "KafkaNode"]

_TOOL_OPTS = ["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]


@dataclass
class KafkaNode:
    """One combined broker+controller node of a :class:`KafkaCluster`."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    pid: int | None = None
    out: list[Path] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"


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
        ports = _distinct_ports(2 * size)
        self.nodes = {
            i: KafkaNode(i, ports[2 * (i - 1)], ports[2 * i - 1], self.root / f"node-{i}")
            for i in range(1, size + 1)
        }
        self.start_seconds: float | None = None
        self._libs: Path | None = None
        self._closed = False
        self._unreaped: list[subprocess.Popen[bytes]] = []
        self._watchdogs: list[subprocess.Popen[bytes]] = []

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
        self._libs = _fetch_libs()
        try:
            with ThreadPoolExecutor(self.size) as pool:
                list(pool.map(self._format, self.nodes.values()))
            for node in self.nodes.values():
                self._launch(node)
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
        self._launch(node)
        self.wait_ready([node_id])

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash; the controller fences the node after the broker session."""
        node = self.nodes[node_id]
        if node.pid is not None:
            send_signal(node.pid, signal.SIGKILL)
            wait_gone(node.pid, 10.0)
        self._reap(node)

    def stop(self, node_id: int, timeout: float = 60.0) -> None:
        """SIGTERM: a controlled shutdown (leaderships move away first); SIGKILL after
        ``timeout``."""
        node = self.nodes[node_id]
        if node.pid is None:
            return
        send_signal(node.pid, signal.SIGTERM)
        if not wait_gone(node.pid, timeout):
            send_signal(node.pid, signal.SIGKILL)
            wait_gone(node.pid, 10.0)
        self._reap(node)

    def _reap(self, node: KafkaNode) -> None:
        if node.proc is not None:
            try:
                node.proc.wait(60)
            except subprocess.TimeoutExpired:
                self._unreaped.append(node.proc)  # never dropped while it runs
        node.pid = None
        node.proc = None

    def close(self) -> None:
        self._closed = True
        try:
            self._kill_all()
        finally:
            unregister(self)
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_all(self) -> None:
        for node_id in self.nodes:
            self.kill(node_id)
        for proc in self._unreaped + self._watchdogs:
            proc.kill()
            proc.wait(60)
        self._unreaped.clear()
        self._watchdogs.clear()

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
                *_TOOL_OPTS,
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

    def _config(self, node: KafkaNode) -> Path:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes.values())
        rf = self.size
        isr = min(2, rf)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        (node.data_dir / "logs").mkdir(exist_ok=True)
        path = node.data_dir / "server.properties"
        path.write_text(
            f"""# Written by tests/services/kafka_cluster.py: node {node.node_id} of a test cluster.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={node.data_dir / "kraft-logs"}

# Durability as in production: every topic on {rf} nodes, a write needs {isr} in sync.
default.replication.factor={rf}
min.insync.replicas={isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=5
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# Small: modest segments, few threads.
log.segment.bytes=16777216
num.partitions=1
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
""",
            encoding="utf-8",
        )
        return path

    def _format(self, node: KafkaNode) -> None:
        config = self._config(node)
        assert self._libs is not None
        result = subprocess.run(
            [
                "java",
                *_TOOL_OPTS,
                "-cp",
                f"{self._libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting node {node.node_id} failed:\n{result.stdout}")

    def _launch(self, node: KafkaNode) -> None:
        assert self._libs is not None
        logs = node.data_dir / "logs"
        out_path = logs / f"kafka.{len(node.out) + 1}.out"
        node.out.append(out_path)
        command = [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
            "-cp",
            f"{self._libs}/*",
            "kafka.Kafka",
            str(node.data_dir / "server.properties"),
        ]
        if node.proc is not None:  # an earlier incarnation that died by itself
            node.proc.wait(60)
        with out_path.open("wb") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        node.pid = proc.pid
        node.proc = proc
        # A killed test run leaves no broker behind: a watchdog kills the node once this
        # process is gone. (Not `setpriv --pdeathsig`: that follows the launching *thread*,
        # and nodes are restarted from worker threads that end with the test's event loop.)
        self._watchdogs.append(
            subprocess.Popen(
                [
                    "bash",
                    "-c",
                    'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done;'
                    ' kill -KILL "$2" 2>/dev/null; exit 0',
                    "watchdog",
                    str(os.getpid()),
                    str(proc.pid),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )


def _partitions(topic: dict[str, object]) -> Iterator[dict[str, object]]:
    partitions = topic.get("partitions")
    if isinstance(partitions, list):
        yield from partitions


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _fetch_libs() -> Path:
    result = subprocess.run(
        ["bash", str(KAFKA_DIR / "fetch.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ServiceError(f"infra/kafka/fetch.sh failed:\n{result.stderr[-2000:]}")
    return Path(lines[-1])
