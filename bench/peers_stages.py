"""The stages of ``bench/peers.py``: one process per stage, each consuming its own source
topic and answering on its own sink topic, in its own consumer group.

A :class:`Stage` knows how to start its process and to start it again with the same command
line and environment (same group, same topics) after a SIGKILL, for the loss test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.pipeline_services import worker_env

__all__ = ["STAGES", "Stage", "build_stage"]

REPO = Path(__file__).resolve().parents[1]

#: name -> what it is, in the order of the table.
STAGES = {
    "relay": "bare aiokafka relay",
    "faststream": "FastStream, ack after handling, sequential",
    "faststream-workers": "FastStream, ack after handling, max_workers={workers}",
    "faststream-concurrent": "FastStream + faststream-concurrent-aiokafka ({concurrent})",
    "faust": "faust-streaming, default agent",
    "faust-concurrency": "faust-streaming, agent concurrency={workers}",
    "echo": "agentstream runtime, trivial handler",
    "agent": "agentstream agent worker, offline model",
}


@dataclass
class Stage:
    name: str
    source: str
    sink: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    #: How long a restarted member may wait for the killed one to leave the group: the
    #: client's session timeout, plus the time to rejoin and catch up.
    settle_s: float = 40.0
    proc: subprocess.Popen[bytes] | None = None
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        log = (self.logs / f"{self.name}.log").open("ab")
        self._files.append(log)
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid]

    def restart(self) -> None:
        """Start the process again after it was killed (reaps the old one first)."""
        if self.proc is not None:
            self.proc.wait(30)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in self._files:
            f.close()

    def tail(self, lines: int = 15) -> str:
        text = (self.logs / f"{self.name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


async def build_stage(
    name: str, bus: Any, bootstrap: str, redis_url: str, logs: Path, o: Any
) -> Stage:
    """Topics (``o.partitions`` each) and the command of stage ``name``; not started."""
    from agentstream.topics import TopicDescription

    if name in ("echo", "agent"):
        return await _agentstream_stage(name, bus, bootstrap, redis_url, logs, o.partitions)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env["PYTHONPATH"] = str(REPO)
    prefix = f"peers{uuid.uuid4().hex[:6]}."
    group = f"peers-{name}-{uuid.uuid4().hex[:6]}"
    source, sink = f"{prefix}{name}.in", f"{prefix}{name}.out"
    await bus.create_topics([TopicDescription(t, o.partitions, 1) for t in (source, sink)])
    common = ["--bootstrap", bootstrap, "--group", group]
    settle = 40.0
    if name == "relay":
        argv = ["bench/relay.py", *common, "--route", f"{source}:{sink}"]
    elif name.startswith("faststream"):
        argv = ["bench/peer_faststream.py", *common, "--source", source, "--sink", sink]
        if name == "faststream-workers":
            argv += ["--max-workers", str(o.workers)]
        elif name == "faststream-concurrent":
            argv += ["--concurrent", str(o.concurrent)]
    else:
        argv = ["bench/peer_faust.py", *common, "--source", source, "--sink", sink]
        argv += ["--datadir", str(logs / f"{name}-data")]
        if name == "faust-concurrency":
            argv += ["--concurrency", str(o.workers)]
        settle = 100.0  # faust's session timeout is 60 s
    return Stage(name, source, sink, [sys.executable, *argv], env, logs, settle)


async def _agentstream_stage(
    name: str, bus: Any, bootstrap: str, redis_url: str, logs: Path, partitions: int
) -> Stage:
    from agentstream.topics import Topic
    from agentstream.wiring import ensure_topics

    from bench.pipeline_services import bench_settings

    settings = bench_settings("kafka", partitions, bootstrap, redis_url)
    await ensure_topics(bus, settings.catalog(), create=True)
    env = worker_env(bootstrap, redis_url, settings.topics.prefix, partitions, 0.0, 256)
    if name == "echo":
        argv = [sys.executable, "bench/echo_worker.py"]
    else:
        argv = [sys.executable, "-m", "agentstream.cli", "worker", "agent"]
    catalog = settings.catalog()
    return Stage(
        name,
        catalog.name(Topic.USER_REQUEST),
        catalog.name(Topic.AGENT_RESPONSE),
        argv,
        env,
        logs,
    )
