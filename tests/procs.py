"""Worker processes for tests: `agentstream worker KIND` started, killed and stopped by a
test, with their logs in files the test can show when it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

__all__ = ["ROOT", "WorkerProcs", "worker_env"]

ROOT = Path(__file__).resolve().parents[1]


def worker_env(bootstrap: str, redis_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        AGENTSTREAM_TOPICS__PREFIX=prefix,
        AGENTSTREAM_TOPICS__PARTITIONS="4",
        AGENTSTREAM_KAFKA__SESSION_TIMEOUT_MS="6000",
        AGENTSTREAM_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        AGENTSTREAM_RUNTIME__DRAIN_TIMEOUT_S="5",
        AGENTSTREAM_LOG_JSON="true",
        PYTHONPATH=str(ROOT),
    )
    return env


class WorkerProcs:
    """`agentstream worker KIND` subprocesses, logs to files, all stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: list[IO[bytes]] = []

    def start(self, name: str, kind: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "worker", kind],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def stop_all(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        for f in self.files:
            f.close()
        return codes

    def tail(self, name: str, lines: int = 30) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
