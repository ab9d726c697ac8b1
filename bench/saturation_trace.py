"""Benchmark (b) of ``bench/pipeline.py`` alone, on Kafka + Redis, with a trace of the worker.

Runs only the saturation benchmark (one agent worker, a model sleeping ``--latency`` per
call, ``--conversations`` (1000) x ``--turns``) ``--rounds`` times and prints one line per round:
fraction of the ideal, CPU ms per request, the worker's CPU and CPU-wait per cent and how
busy the whole machine was. With ``--trace PREFIX`` the worker runs with
``bench/trace/sitecustomize.py`` and writes ``PREFIX.<pid>.jsonl`` (records in flight,
backlog, model calls in flight, loop lag, phase timings) and a summary of each round's
trace is printed after its line. Rounds of two checkouts can be interleaved by running this file
from each (``REPO`` is the checkout the file is in), which is how same-minute A/B figures
in bench/README.md were made.

    python bench/saturation_trace.py [--rounds 3] [--in-flight 256] [--conversations 1000]
        [--latency 0.5] [--trace /tmp/tr]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench.pipeline_rig as pipeline_rig  # noqa: E402
import bench.pipeline_services as services  # noqa: E402
from bench.pipeline_benchmarks import saturation  # noqa: E402
from bench.pipeline_rig import Options, Rig  # noqa: E402


def _machine() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def summarise(prefix: str, since: float) -> dict[str, Any]:
    """Means over the trace's busy samples (more than half the budget held)."""
    files = [f for f in glob.glob(f"{prefix}.*.jsonl") if os.path.getmtime(f) >= since]
    if not files:
        return {}
    newest = Path(max(files, key=os.path.getmtime))
    rows = [json.loads(line) for line in newest.read_text().splitlines()]
    busy = [r for r in rows if r["in_flight"] > 128]
    if len(busy) < 2:
        return {}
    first, last = busy[0]["phases"], busy[-1]["phases"]
    phases = {}
    for name, (count, seconds) in last.items():
        n = count - first.get(name, [0, 0.0])[0]
        s = seconds - first.get(name, [0, 0.0])[1]
        phases[name] = round(1000 * s / max(n, 1), 2)
    means = {
        k: round(statistics.mean(r[k] for r in busy), 3)
        for k in ("in_flight", "running", "waiting", "backlog", "model_in_flight", "lag_s", "cpu")
        if all(k in r for r in busy)
    }
    # Resident memory when the most model calls were in flight at once: what holding that
    # many running handlers costs, apart from the run's transients (issue 17).
    top = max(busy, key=lambda r: (r["model_in_flight"], -r["t"]))
    memory = {"max_model_in_flight": top["model_in_flight"], "rss_mb_then": top.get("rss_mb")}
    return {
        **means,
        **memory,
        "backlog_empty_samples": sum(r["backlog"] == 0 for r in busy),
        "ms": phases,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--trace", help="trace file prefix (enables the worker tracer)")
    parser.add_argument("--tick", type=float, default=0.1, help="trace tick, seconds")
    args = parser.parse_args()
    if args.trace:
        plain = services.worker_env

        def traced_env(*a: Any, **k: Any) -> dict[str, str]:
            env = plain(*a, **k)
            env["PYTHONPATH"] = f"{REPO / 'bench/trace'}:{env['PYTHONPATH']}"
            env["BENCH_TRACE"] = args.trace
            env["BENCH_TRACE_TICK_S"] = str(args.tick)
            return env

        pipeline_rig.worker_env = traced_env  # type: ignore[assignment]
    o = Options(
        requests=0,
        conversations=0,
        rounds=1,
        partitions=4,
        in_flight=args.in_flight,
        warmup=0,
        slow_latency=args.latency,
        slow_conversations=args.conversations,
        slow_turns=args.turns,
        slow_in_flight=[args.in_flight],
    )
    with services.kafka_service() as (bootstrap, _), services.redis_service() as (redis_url, _):
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory() as logs:
                procs = services.Procs(Path(logs), None)
                rig = Rig("kafka", o, procs)
                await rig.start(bootstrap, redis_url)
                started = time.time()
                total0, idle0 = _machine()
                try:
                    row = await saturation(rig, args.in_flight, lambda _: None)
                finally:
                    procs.close()
                    await rig.close()
                total1, idle1 = _machine()
            busy = round(100 * (1 - (idle1 - idle0) / max(1, total1 - total0)), 1)
            print(
                f"{REPO.name} round {r + 1}: fraction {row.get('fraction')} cpu ms "
                f"{row.get('cpu_ms_per_request')} worker cpu % {row.get('cpu_percent')} "
                f"wait % {row.get('cpu_wait_percent')} machine busy % {busy} "
                f"rss MB {row.get('rss_mb')} first answer s {row.get('first_answer_s')}"
                + (f" ERROR {row['error']}" if "error" in row else ""),
                flush=True,
            )
            if args.trace:
                print(f"  trace: {summarise(args.trace, started)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
