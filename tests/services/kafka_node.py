"""One node of the test cluster: a combined KRaft broker+controller JVM and its files.

:class:`KafkaNode` writes the node's ``server.properties``, formats its log dir, starts the
JVM (with a watchdog that kills it once the test process is gone) and stops or kills it,
reaping the process either way. :mod:`tests.services.kafka_cluster` runs three of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.kafka import KAFKA_DIR
from tests.services.processes import ServiceError, free_port, pid_alive, send_signal, wait_gone

__all__ = ["TOOL_OPTS", "KafkaNode", "distinct_ports", "fetch_libs"]

#: JVM options of Kafka's command-line tools (format, metadata quorum): small and quick.
TOOL_OPTS = ["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]

_WATCHDOG = (
    'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done;'
    ' kill -KILL "$2" 2>/dev/null; exit 0'
)


@dataclass
class KafkaNode:
    """One combined broker+controller node; ``voters`` is the quorum's
    ``controller.quorum.voters`` and ``replicas`` the cluster's size."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    out: list[Path] = field(default_factory=list)
    #: Processes never dropped while they may run: the watchdogs, and a JVM that outlived
    #: its SIGKILL's wait (dropping a running Popen is a ResourceWarning, an error here).
    held: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def configure(self, voters: str, replicas: int) -> Path:
        """Write ``server.properties``: durable as in production, small and quick."""
        rf = replicas
        isr = min(2, rf)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        path = self.data_dir / "server.properties"
        path.write_text(
            f"""# Written by tests/services/kafka_node.py: node {self.node_id} of a test cluster.
process.roles=broker,controller
node.id={self.node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.data_dir / "kraft-logs"}

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

    def format(self, libs: Path, cluster_id: str) -> None:
        """Format the log dir for ``cluster_id`` (once, before the first start)."""
        result = subprocess.run(
            [
                "java",
                *TOOL_OPTS,
                "-cp",
                f"{libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                cluster_id,
                "--config",
                str(self.data_dir / "server.properties"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting node {self.node_id} failed:\n{result.stdout}")

    def launch(self, libs: Path, heap: str) -> None:
        """Start the JVM (not waiting for it to be ready), its output in a new file."""
        logs = self.data_dir / "logs"
        out_path = logs / f"kafka.{len(self.out) + 1}.out"
        self.out.append(out_path)
        command = [
            "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={logs}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]
        self._reap()  # an earlier incarnation that died by itself
        with out_path.open("wb") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid, self.proc = proc.pid, proc
        # A killed test run leaves no broker behind: the watchdog kills the node once this
        # process is gone. (Not `setpriv --pdeathsig`: that follows the launching *thread*,
        # and nodes are restarted from worker threads that end with the test's event loop.)
        watchdog = ["bash", "-c", _WATCHDOG, "watchdog", str(os.getpid()), str(proc.pid)]
        self.held.append(
            subprocess.Popen(
                watchdog,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def kill(self) -> None:
        """SIGKILL: a crash; the controller fences the node after the broker session."""
        if self.pid is not None:
            send_signal(self.pid, signal.SIGKILL)
            wait_gone(self.pid, 10.0)
        self._reap()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: a controlled shutdown (leaderships move away first); SIGKILL after
        ``timeout``."""
        if self.pid is None:
            return
        send_signal(self.pid, signal.SIGTERM)
        if not wait_gone(self.pid, timeout):
            send_signal(self.pid, signal.SIGKILL)
            wait_gone(self.pid, 10.0)
        self._reap()

    def close(self) -> None:
        """Kill the node and everything it holds."""
        self.kill()
        for proc in self.held:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(60)
        self.held.clear()

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.held.append(self.proc)
        self.pid, self.proc = None, None


def distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def fetch_libs() -> Path:
    """The Kafka jars' dir, from ``infra/kafka/fetch.sh`` (which downloads them once)."""
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
