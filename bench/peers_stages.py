"""The stages of ``bench/peers.py``: one process per stage, each consuming its own source
topic and answering on its own sink topic, in its own consumer group.

A :class:`Stage` knows how to start its processes (one, or the router and the agent worker)
and to start them again with the same command lines and environment (same groups, same
topics) after a SIGKILL, for the loss test. The ``agent`` stage is the agent hop alone: its
input is what the router forwards (``turn`` tasks on ``agent.assistant``, keyed by
conversation); ``router+agent`` is both groups, ``user_request`` in, ``agent_response`` out.
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
    "router+agent": "agentstream router + agent worker, offline model",
}


@dataclass
class Stage:
    name: str
    source: str
    sink: str
    #: One command line per process of the stage.
    argvs: list[list[str]]
    env: dict[str, str]
    logs: Path
    #: How long a restarted member may wait for the killed one to leave the group: the
    #: client's session timeout, plus the time to rejoin and catch up.
    settle_s: float = 40.0
    #: The agent whose input topic is the source (its events are ``turn`` tasks), if any.
    task_for: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        log = (self.logs / f"{self.name}.log").open("ab")
        self._files.append(log)
        self.procs = [
            subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            for argv in self.argvs
        ]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def restart(self) -> None:
        """Start the processes again after they were killed (reaps the old ones first)."""
        for proc in self.procs:
            proc.wait(30)
        self.start()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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

    if name in ("echo", "agent", "router+agent"):
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
    return Stage(name, source, sink, [[sys.executable, *argv]], env, logs, settle)


async def _agentstream_stage(
    name: str, bus: Any, bootstrap: str, redis_url: str, logs: Path, partitions: int
) -> Stage:
    from agentstream.schemas import DEFAULT_AGENT
    from agentstream.topics import Inbox, Topic
    from agentstream.wiring import ensure_topics

    from bench.pipeline_services import bench_settings

    settings = bench_settings("kafka", partitions, bootstrap, redis_url)
    await ensure_topics(bus, settings.catalog(), create=True)
    env = worker_env(bootstrap, redis_url, settings.topics.prefix, partitions, 0.0, 256)
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    cli = [sys.executable, "-m", "agentstream.cli", "worker"]
    if name == "echo":
        return Stage(name, source, sink, [[sys.executable, "bench/echo_worker.py"]], env, logs)
    if name == "agent":
        # The agent hop alone: fed what the router would forward.
        source = catalog.name(Inbox(DEFAULT_AGENT))
        return Stage(name, source, sink, [[*cli, "agent"]], env, logs, task_for=DEFAULT_AGENT)
    # Two processes, as deployed (a router Deployment, an agent Deployment).
    return Stage(name, source, sink, [[*cli, "router"], [*cli, "agent"]], env, logs)
