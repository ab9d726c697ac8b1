"""One hop (consume ``user_request``, run the handler, produce the answer) in agentstream
and in the frameworks a user could pick instead, on the same broker and the same backlog.

Stages (``bench/peers_stages.py``), each a process in its own consumer group on its own
topics: the bare aiokafka relay (``bench/relay.py``); FastStream with the acknowledgement
after handling, sequential, with ``max_workers`` and with the concurrent add-on
(``bench/peer_faststream.py``); faust-streaming's default agent and one with
``concurrency=`` (``bench/peer_faust.py``); agentstream's runtime with a trivial handler
(``bench/echo_worker.py``) and its agent worker with the offline model. The peers' handler
validates the event into agentstream's pydantic model and answers with the echo worker's
``agent_response``; the relay copies the bytes.

Method (as ``bench/pipeline.py``): ``--events`` events of ``--size`` bytes over ``--keys``
keys on ``--partitions`` partitions are published while the stage's process is stopped
(SIGSTOP); it is resumed once the broker acknowledged them all and timed to the record
timestamp of its last output. Rounds are interleaved (every stage once per round), medians
are reported. For each stage: events/s; CPU ms per 1,000 events of the stage's process, the
broker and Redis (``/proc/PID/stat``); whether per-key order held (every round); and, in a
last pass (``--kill-at``, 0 to skip), the events lost and the duplicates when the process
is SIGKILLed after that fraction of the backlog and started again.

    python bench/peers.py [--events 20000] [--keys 1000] [--rounds 3] [--stages a,b]
        [--kill-at 0.5] [--out bench/results/peers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers_backlog import drain, make_events  # noqa: E402
from bench.peers_stages import STAGES, Stage, build_stage  # noqa: E402
from bench.pipeline import machine, revision  # noqa: E402
from bench.pipeline_batch import BenchError  # noqa: E402


@contextlib.contextmanager
def services() -> Iterator[dict[str, Any]]:
    """Kafka and Redis as ``bench/pipeline.py`` has them (``KAFKA_BOOTSTRAP_SERVERS`` /
    ``REDIS_URL``, or started here), with their pids when local (for their CPU)."""
    from tests.services import KafkaBroker, RedisServer

    with contextlib.ExitStack() as stack:
        found: dict[str, Any] = {"broker_pid": None, "redis_pid": None}
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            found["kafka"], found["kafka_info"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"], "external"
        else:
            broker = KafkaBroker()
            broker.start()
            stack.callback(broker.close)
            found["kafka"], found["broker_pid"] = broker.bootstrap, broker.pid
            found["kafka_info"] = f"Apache Kafka {broker.version}, started locally"
        if os.environ.get("REDIS_URL"):
            found["redis"], found["redis_info"] = os.environ["REDIS_URL"], "external"
        else:
            redis = RedisServer()
            redis.start()
            stack.callback(redis.close)
            found["redis"], found["redis_pid"] = redis.url, redis.pid
            found["redis_info"] = f"redis-server {redis.version()}, started locally"
        yield found


async def run(args: argparse.Namespace, svc: dict[str, Any], logs: Path) -> dict[str, Any]:
    from agentstream.topics import KafkaConfig
    from agentstream.topics.kafka import KafkaBus
    from aiokafka import AIOKafkaProducer

    bootstrap = svc["kafka"]
    watch = {"broker": svc["broker_pid"], "redis": svc["redis_pid"]}
    bus = KafkaBus(KafkaConfig(bootstrap_servers=bootstrap))
    await bus.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    stages: dict[str, Stage] = {}
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name in args.stages.split(","):
            stage = await build_stage(name, bus, bootstrap, svc["redis"], logs, args)
            stage.start()
            stages[name] = stage
            rows[name] = {"stage": name, "what": _what(name, args), "rounds": []}
        for name, stage in list(stages.items()):
            warm = make_events(
                args.warmup, min(args.keys, args.warmup), f"w{name}", args.size, stage.task_for
            )
            try:
                await _drain(args, bootstrap, producer, stage, warm, watch, hold=False)
            except BenchError as exc:
                _drop(stages, rows, name, f"warm-up failed: {exc}")
        for r in range(args.rounds):
            line = []
            for name, stage in list(stages.items()):
                events = make_events(
                    args.events, args.keys, f"r{r}{uuid.uuid4().hex[:6]}", args.size, stage.task_for
                )
                try:
                    got = await _drain(args, bootstrap, producer, stage, events, watch)
                except BenchError as exc:
                    _drop(stages, rows, name, f"round {r + 1} failed: {exc}")
                    continue
                rows[name]["rounds"].append(got)
                line.append(f"{name} {got['events_per_s']:.0f}/s")
            print(f"round {r + 1}: " + ", ".join(line), flush=True)
        if args.kill_at > 0:
            for name, stage in stages.items():
                events = make_events(
                    args.events, args.keys, f"k{uuid.uuid4().hex[:6]}", args.size, stage.task_for
                )
                got = await _drain(
                    args, bootstrap, producer, stage, events, watch, kill_at=args.kill_at
                )
                rows[name]["kill"] = got
                print(f"kill {name}: lost {got.get('lost')}, duplicates {got['duplicates']}")
    finally:
        for stage in stages.values():
            stage.stop()
        await producer.stop()
        await bus.stop()
    return {"stages": [_summary(row) for row in rows.values()]}


def _drop(stages: dict[str, Stage], rows: dict[str, Any], name: str, error: str) -> None:
    """Stop stage ``name`` for the rest of the run, keeping why (and its log's tail)."""
    rows[name]["error"] = f"{error}\n{stages[name].tail()}"
    print(f"{name}: {rows[name]['error']}", flush=True)
    stages.pop(name).stop()


async def _drain(
    args: argparse.Namespace,
    bootstrap: str,
    producer: Any,
    stage: Stage,
    events: list[Any],
    watch: dict[str, int | None],
    *,
    hold: bool = True,
    kill_at: float | None = None,
) -> dict[str, Any]:
    return await drain(
        bootstrap,
        producer,
        stage.source,
        stage.sink,
        args.partitions,
        events,
        stage.pids,
        watch,
        hold=hold,
        kill_at=kill_at,
        restart=stage.restart,
        settle_s=stage.settle_s,
        timeout_s=120 + len(events) / 20,
    )


def _what(name: str, args: argparse.Namespace) -> str:
    return STAGES[name].format(workers=args.workers, concurrent=args.concurrent)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    rounds = row["rounds"]
    if not rounds:
        return row

    def median(get: Any) -> float | None:
        values = [v for v in map(get, rounds) if v is not None]
        return round(statistics.median(values), 1) if values else None

    kill = row.get("kill") or {}
    return {
        **row,
        "events_per_s": median(lambda x: x["events_per_s"]),
        "cpu_ms_per_1000": {
            part: median(lambda x, part=part: x["cpu_ms_per_1000"].get(part))
            for part in ("worker", "broker", "redis", "worker0", "worker1")
        },
        "order_held": all(x["out_of_order"] == 0 for x in rounds),
        "out_of_order": [x["out_of_order"] for x in rounds],
        "lost_after_kill": kill.get("lost"),
        "duplicates_after_kill": kill.get("duplicates"),
        "rounds_events_per_s": [x["events_per_s"] for x in rounds],
    }


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"\npeers: {s['events']} events of {s['size']} B over {s['keys']} keys, "
        f"{s['partitions']} partitions, median of {s['rounds']} round(s); cpu: ms per 1,000 "
        f"events; lost/dup: after a SIGKILL at {s['kill_at']:.0%} of the backlog and a restart"
    )
    print(
        f"{'stage':<52}{'events/s':>9}{'vs relay':>9}{'worker':>8}{'broker':>8}{'redis':>7}"
        f"{'order':>7}{'lost':>6}{'dup':>6}"
    )
    relay = next((r.get("events_per_s") for r in report["stages"] if r["stage"] == "relay"), None)
    for row in report["stages"]:
        if "events_per_s" not in row:
            print(f"{row['what']:<52} FAILED: {row.get('error', 'no rounds').splitlines()[0]}")
            continue
        rate, cpu = row["events_per_s"], row["cpu_ms_per_1000"]
        ratio = f"{rate / relay:.3f}" if relay and rate else "-"
        print(
            f"{row['what']:<52}{_n(rate):>9}{ratio:>9}{_n(cpu['worker']):>8}"
            f"{_n(cpu['broker']):>8}{_n(cpu['redis']):>7}"
            f"{'yes' if row['order_held'] else 'NO':>7}{_n(row['lost_after_kill']):>6}"
            f"{_n(row['duplicates_after_kill']):>6}"
        )


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="backlog per round")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per event value")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--workers", type=int, default=4, help="max_workers, concurrency")
    parser.add_argument("--concurrent", type=int, default=256, help="the add-on's limit")
    parser.add_argument("--kill-at", type=float, default=0.5, help="0: no loss test")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/peers.json")
    args = parser.parse_args()
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; known: {','.join(STAGES)}")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report: dict[str, Any] = {
        "benchmark": "peers",
        "command": " ".join(["python", "bench/peers.py", *sys.argv[1:]]),
        "revision": revision(),
        "machine": machine(),
        "settings": {
            k: getattr(args, k)
            for k in ("events", "keys", "size", "partitions", "rounds", "warmup", "kill_at")
        },
        "versions": _versions(),
    }
    began = time.monotonic()
    with services() as svc, tempfile.TemporaryDirectory(prefix="bench-peers-") as logs:
        report["services"] = {k: svc[k] for k in ("kafka_info", "redis_info")}
        report.update(asyncio.run(run(args, svc, Path(logs))))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - began, 1)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out} in {report['total_seconds']}s")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("aiokafka", "faststream", "faststream-concurrent-aiokafka", "faust-streaming"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    main()
