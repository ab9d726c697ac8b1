"""Where benchmark (a)'s time goes: one chat batch through four stages, rounds interleaved.

Stages, each one hop ``user_request -> agent_response`` on Kafka (and Redis for the last
three), measured in the same minutes so the machine's noise hits them alike:

- ``relay``: the bare aiokafka relay of ``bench/relay.py``;
- ``floor``: the guarded relay (``bench/relay.py --guarded``): decode, state read, dedup mark
  + outbox + state commit, produce, per fetched batch: the least the guarantees need;
- ``echo``: the real runtime with a trivial handler (``bench/echo_worker.py``);
- ``agent``: the router and the agent worker (and a tool worker, idle in chat), the
  zero-latency model, the built-in app: 2 hops since issue 16 (user_request -> router ->
  ``agent.assistant`` -> agent_response), so its rate per hop is over 2 hops.

Prints hops/s and CPU ms per record of each stage (medians over rounds), writes JSON.
``--pyspy DIR`` records the echo and agent processes with py-spy (``pip install py-spy``)
during the first round, in py-spy's raw (collapsed stack) format.

    python bench/ladder.py [--rounds 5] [--requests 2000] [--conversations 500]
        [--stages relay,floor,echo,agent] [--pyspy DIR] [--out bench/results/ladder.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.pipeline_batch import check_answers  # noqa: E402
from bench.pipeline_rig import Options, Rig  # noqa: E402
from bench.pipeline_services import (  # noqa: E402
    Procs,
    bench_settings,
    kafka_service,
    redis_service,
    worker_env,
)
from bench.pipeline_workload import make_requests, padded  # noqa: E402

STAGES = ("relay", "floor", "echo", "agent")


async def ladder(args: argparse.Namespace, bootstrap: str, redis_url: str) -> dict[str, Any]:
    from agentstream.topics import Topic
    from agentstream.wiring import ensure_topics

    o = Options(
        requests=args.requests,
        conversations=args.conversations,
        rounds=args.rounds,
        partitions=4,
        in_flight=256,
        warmup=200,
        slow_latency=0.5,
        slow_conversations=0,
        slow_turns=0,
        slow_in_flight=[],
    )
    logs = Path(tempfile.mkdtemp(prefix="ladder-"))
    procs = Procs(logs, None)
    rig = Rig("kafka", o, procs)
    stages: dict[str, tuple[str, str, list[int]]] = {}
    try:
        await rig.start(bootstrap, redis_url)
        assert rig.bus is not None
        wanted = args.stages.split(",")
        if "agent" in wanted:
            # Since issue 16 a request reaches its agent through the router: the agent
            # stage is the router and agent processes, 2 hops.
            settings, pids = await rig.pipeline(0.0, o.in_flight, ["router", "agent", "tool"])
            catalog = settings.catalog()
            stages["agent"] = (
                catalog.name(Topic.USER_REQUEST),
                catalog.name(Topic.AGENT_RESPONSE),
                pids[:2],
            )
        if "echo" in wanted:
            echo = bench_settings("kafka", o.partitions, bootstrap, redis_url)
            await ensure_topics(rig.bus, echo.catalog(), create=True)
            env = worker_env(bootstrap, redis_url, echo.topics.prefix, o.partitions, 0.0, 256)
            pid = procs.script("echo", REPO / "bench/echo_worker.py", env)
            catalog = echo.catalog()
            stages["echo"] = (
                catalog.name(Topic.USER_REQUEST),
                catalog.name(Topic.AGENT_RESPONSE),
                [pid],
            )
        prefix = f"ladder{uuid.uuid4().hex[:6]}."
        if "relay" in wanted:
            stages["relay"] = await rig.relay(prefix, 1)
        if "floor" in wanted:
            stages["floor"] = await rig.relay(prefix, 1, guarded=True)
        order = [s for s in STAGES if s in stages]
        sizes = 0
        for stage in order:
            source, sink, pids = stages[stage]
            warm = make_requests(o.warmup, o.warmup, "chat", f"w{stage}")
            batch = await rig.batch(source, sink, warm, _hops(stage), pids)
            if stage in ("echo", "agent"):
                sizes = max(sizes, int(statistics.mean(len(v) for v in batch.answers.values())))
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in order}
        for r in range(o.rounds):
            line = []
            for stage in order:
                source, sink, pids = stages[stage]
                tag = f"r{r}{stage}{uuid.uuid4().hex[:4]}"
                requests = make_requests(o.requests, o.conversations, "chat", tag)
                if stage == "relay":
                    requests = padded(requests, sizes or requests[0].size)
                spy = _pyspy(args.pyspy, stage, r, pids)
                batch = await rig.batch(source, sink, requests, _hops(stage), pids, hold=True)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                if stage == "agent":
                    check_answers(batch, requests, "chat", app=False)
                summary = batch.summary()
                results[stage].append(summary)
                line.append(
                    f"{stage} {summary['per_hop_per_s']:.0f}/s {summary['cpu_ms_per_request']}ms"
                )
            print(f"round {r + 1}: " + ", ".join(line), flush=True)
    finally:
        procs.close()
        await rig.close()
    rows = []
    for stage in results:
        rates = [x["per_hop_per_s"] for x in results[stage]]
        cpus = [x["cpu_ms_per_request"] for x in results[stage] if x["cpu_ms_per_request"]]
        rows.append(
            {
                "stage": stage,
                "hops_per_s": statistics.median(rates),
                "cpu_ms_per_record": round(statistics.median(cpus), 3) if cpus else None,
                "rounds_hops_per_s": rates,
                "rounds": results[stage],
            }
        )
    return {"requests": o.requests, "conversations": o.conversations, "stages": rows}


def _hops(stage: str) -> int:
    """Hops of a stage: the agent stage goes through the router (2), the others are 1."""
    return 2 if stage == "agent" else 1


def _pyspy(out: Path | None, stage: str, round_: int, pids: list[int]) -> Any:
    if out is None or round_ != 0 or stage not in ("echo", "agent"):
        return None
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "-p",
        str(pids[0]),
        "-f",
        "raw",
        "-r",
        "200",
        "-o",
    ]
    argv.append(str(out / f"{stage}.txt"))
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--pyspy", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/ladder.json")
    args = parser.parse_args()
    with kafka_service() as (bootstrap, _), redis_service() as (redis_url, _):
        report = asyncio.run(ladder(args, bootstrap, redis_url))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{'stage':<7}{'hops/s':>9}{'cpu ms/record':>15}   rounds")
    for row in report["stages"]:
        print(
            f"{row['stage']:<7}{row['hops_per_s']:>9.0f}{row['cpu_ms_per_record'] or 0:>15.3f}"
            f"   {row['rounds_hops_per_s']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
