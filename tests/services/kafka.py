"""A single-node Apache Kafka broker (KRaft) that a test or benchmark starts and controls.

:class:`KafkaBroker` runs ``infra/kafka/start.sh`` (the Kafka version pinned in
``infra/kafka/pom.xml``), and can stop, kill, pause, resume and restart the broker on the same
ports and data dir, which is what the chaos and broker-death tests need. The ``private_kafka``
fixture (:mod:`tests.services.plugin`) hands out fresh ones as a :class:`KafkaFactory`.

The broker keeps Kafka's stock topic defaults (:data:`STOCK_TOPIC_DEFAULTS`): auto-creation on
and one partition, so a topic that anything made the broker create by accident shows, with the
wrong partition count, instead of hiding behind ``auto.create.topics.enable=false``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

from tests.services.processes import (
    ServiceError,
    dispose,
    pid_alive,
    register,
    send_signal,
    signal_running,
    tail,
    wait_gone,
)

__all__ = [
    "KAFKA_DIR",
    "REPO_ROOT",
    "STOCK_TOPIC_DEFAULTS",
    "KafkaBroker",
    "KafkaFactory",
    "kafka_version",
]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KAFKA_DIR = REPO_ROOT / "infra" / "kafka"

#: Broker settings ``infra/kafka/start.sh`` leaves at Kafka's defaults, as a stock cluster has
#: them (DESIGN.md 8): tests prove that agentstream never relies on, nor triggers, them.
STOCK_TOPIC_DEFAULTS = {"auto.create.topics.enable": "true", "num.partitions": "1"}


def kafka_version() -> str:
    """The Kafka version pinned in ``infra/kafka/pom.xml``."""
    text = (KAFKA_DIR / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", text)
    return match.group(1).strip() if match else "unknown"


class KafkaBroker:
    """One single-node Apache Kafka broker (KRaft) run by ``infra/kafka/start.sh``.

    The broker owns its data dir (a temp dir unless given) and keeps its ports across
    restarts, so ``kill()`` then ``restart()`` brings back the same broker with its data.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        scram: bool = False,
        heap: str = "512m",
        start_timeout: float = 90.0,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="agentstream-kafka-")) if data_dir is None else data_dir
        )
        self.scram: bool = scram
        self.heap: str = heap
        self.start_timeout: float = start_timeout
        self.version: str = kafka_version()
        self.port: int | None = port
        self.sasl_port: int | None = None
        self.pid: int | None = None
        self.start_seconds: float | None = None
        """How long the last ``start()`` took, in seconds."""
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaBroker(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the PLAINTEXT listener."""
        if self.port is None:
            raise ServiceError("the broker has not been started yet")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_PLAINTEXT (SCRAM-SHA-512) listener, with ``scram``."""
        if not self.scram:
            raise ServiceError("the broker was not started with scram=True")
        if self.sasl_port is None:
            raise ServiceError("the broker has not been started yet")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)

    def start(self) -> None:
        """Start (or, on an already formatted data dir, restart) and wait until ready."""
        if self._closed:
            raise ServiceError("the broker was closed")
        if self.running:
            raise ServiceError(f"the broker is already running (pid {self.pid})")
        command = [
            "bash",
            str(KAFKA_DIR / "start.sh"),
            "--data-dir",
            str(self.data_dir),
            "--heap",
            self.heap,
            "--timeout",
            str(int(self.start_timeout)),
            "--owner-pid",
            str(os.getpid()),
        ]
        if self.port is not None:
            command += ["--port", str(self.port)]
        if self.scram:
            command.append("--scram")
        register(self)
        began = time.monotonic()
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.start_timeout + 600,  # fetch.sh may download the jars first
                check=False,
            )
        except BaseException as exc:  # a timeout, or Ctrl-C while waiting: no orphan broker
            self._read_pid()
            self._force_stop()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ServiceError(f"infra/kafka/start.sh timed out: {exc}") from exc
            raise
        self.start_seconds = time.monotonic() - began
        if result.returncode != 0:
            self._read_pid()
            self._force_stop()
            raise ServiceError(
                f"infra/kafka/start.sh exited with {result.returncode}:\n"
                f"{result.stderr.strip()[-4000:]}"
            )
        self._parse_output(result.stdout)
        self._read_pid()

    def _parse_output(self, stdout: str) -> None:
        for line in stdout.splitlines():
            key, _, value = line.strip().partition("=")
            if key == "KAFKA_BOOTSTRAP_SERVERS":
                self.port = int(value.rsplit(":", 1)[1])
            elif key == "KAFKA_SASL_BOOTSTRAP_SERVERS":
                self.sasl_port = int(value.rsplit(":", 1)[1])
        if self.port is None:
            raise ServiceError(f"start.sh printed no KAFKA_BOOTSTRAP_SERVERS line:\n{stdout}")

    def _read_pid(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pid = int((self.data_dir / "kafka.pid").read_text(encoding="ascii").strip())

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a controlled shutdown); SIGKILL if still running after ``timeout``."""
        if self.pid is None:
            return
        pid = self.pid
        send_signal(pid, signal.SIGCONT)  # a paused broker cannot shut down
        send_signal(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout):
            send_signal(pid, signal.SIGKILL)
            wait_gone(pid, 10.0)
        self._forget_pid()

    def kill(self) -> None:
        """SIGKILL: a crash, with no controlled shutdown."""
        self._force_stop()

    def _force_stop(self) -> None:
        if self.pid is None:
            return
        send_signal(self.pid, signal.SIGKILL)
        wait_gone(self.pid, 10.0)
        self._forget_pid()

    def _forget_pid(self) -> None:
        self.pid = None
        with contextlib.suppress(OSError):
            (self.data_dir / "kafka.pid").unlink()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports and data dir."""
        if self.running:
            self.stop()
        self._forget_pid()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the broker hangs, its connections stay open."""
        signal_running("the broker", self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        signal_running("the broker", self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker and delete the data dir if this object created it."""
        self._closed = True
        dispose(self, self.data_dir, self._owns_dir)


class KafkaFactory(Protocol):
    """``private_kafka(scram=False, heap="512m")`` starts a fresh private broker."""

    def __call__(self, *, scram: bool = False, heap: str = "512m") -> KafkaBroker: ...
