"""Pipeline throughput: requests per second end to end and per hop, against a bare relay;
and how close one agent worker gets to its in-flight budget with a slow model.

(a) *Throughput*, zero-latency offline model. ``--requests`` user requests over
``--conversations`` conversations are published up front while the worker processes are
stopped (SIGSTOP; on Kafka); the time runs from their resume to the last ``agent_response``
(its record timestamp, set by the worker's producer). The relays are timed the same way, so
every stage drains the same backlog and none is timed at the publisher's rate.
The workers (router, agent and tool processes) run the app ``examples.support`` and every
request goes user_request -> router -> ``agent.<name>`` (issue 16). Four scenarios, their
hops counted as records the workers produce per request (checked on the topics in the
warm-up; ``bench/pipeline_workload.py``): ``chat`` (triage answers directly, 2 hops),
``tool`` (math calls the calculator, 4), ``handoff`` (triage hands to billing, which looks
an invoice up, 5), ``agent_tool`` (triage asks math, which calls the calculator and answers
triage, 6). Per-hop rate = requests * hops / seconds; ``vs chat``: the scenario's req/s,
hops/s and CPU per request over the chat row's, round by round, median. The same run
measures a bare aiokafka relay chain (``bench/relay.py``) with as many hops, as many
records, the same keys, headers and mean record size, the same partitions, and the same
process layout (each hop in the process of the worker kind making it). ratio = pipeline
per-hop rate / relay per-hop rate. Rounds alternate pipeline and relay; medians are
reported.

(b) *Saturation*, offline model sleeping ``--slow-latency`` per call, the built-in app (one
agent): one agent worker process (and the router's) on ``--partitions`` partitions,
``--slow-conversations`` conversations each sending ``--slow-turns`` chat requests
(published up front, interleaved). Steady rate: responses between the 10th and 90th
percentile of their timestamps, after a warm-up batch. Ideal = min(max_in_flight,
conversations) / latency; fraction = steady rate / ideal. A row may set its own
conversations and latency (``--slow-in-flight 5000x5000@5``). Each row also reports the
worker's peak RSS and the time from its start to its first answer.

On Kafka the workers are real ``agentstream worker router|agent|tool`` processes on Kafka and Redis
(both started here unless ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` are set). ``--bus
memory`` runs the same workload with the workers in this process on the in-process bus and
store, and the relay as a task on the same bus. CPU time per request of the worker (or relay)
processes is reported beside the rates: it depends much less than the rate on whatever else
runs on a shared machine. A census pass with Redis MONITOR counts the store commands per
request (not timed).

    python bench/pipeline.py [--quick] [--bus kafka|memory|both] [--requests 5000]
        [--conversations 1250] [--rounds 3] [--scenarios chat,tool,handoff,agent_tool]
        [--no-floor] [--no-saturation] [--slow-in-flight 256,1000] [--profile DIR]
        [--out bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.pipeline_benchmarks import redis_census, saturation, throughput  # noqa: E402
from bench.pipeline_rig import Options, Rig  # noqa: E402
from bench.pipeline_services import Procs, kafka_service, redis_service  # noqa: E402
from bench.pipeline_workload import HOPS  # noqa: E402


def revision() -> str:
    """The commit measured, with ``+dirty`` when the working tree has changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_bus(
    kind: str,
    o: Options,
    services: dict[str, str],
    workdir: Path,
    profile: Path | None,
    census: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    procs = Procs(workdir, profile) if kind == "kafka" else None
    rig = Rig(kind, o, procs)
    result: dict[str, Any] = {}
    try:
        await rig.start(services.get("kafka", ""), services.get("redis", ""))
        result["throughput"] = []
        if not o.skip_throughput:
            log(f"(a) throughput on {kind}")
            result["throughput"] = await throughput(rig, log)
            await rig.stop_workers()
            await rig.stop_relays()
        log(f"(b) saturation on {kind}")
        rows = o.slow_rows or [(n, o.slow_conversations, o.slow_latency) for n in o.slow_in_flight]
        result["saturation"] = [
            await saturation(rig, n, log, conversations=c, latency=lat) for n, c, lat in rows
        ]
        for row in result["saturation"]:
            row["workers"] = "router + agent"
        if kind == "kafka" and census and not o.skip_throughput:
            result["redis_census"] = await redis_census(rig, log)
    except BaseException:
        if procs is not None:
            for name in procs.procs:
                log(f"--- {name} log tail ---\n{procs.tail(name, 5)}")
        raise
    finally:
        if procs is not None:
            procs.close()
        await rig.close()
    return result


def print_throughput(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"(a) zero-latency model, {s['requests']} requests over {s['conversations']} "
        f"conversations, {s['partitions']} partitions, max_in_flight {s['in_flight']}, "
        f"median of {s['rounds']} round(s). cpu ms: CPU of the worker (relay) processes per "
        f"request; wait %: time they were runnable but had no core, per cent of the run; "
        f"floor: the guarded relay (decode, state read, dedup mark + outbox + state commit, "
        f"produce per record; Kafka only), vs floor = pipeline / floor. app "
        f"{report['throughput'][0]['app'] if report['throughput'] else '-'}, workers: router, "
        f"agent, tool"
    )
    print(
        f"{'bus':<7}{'scenario':<11}{'hops':>4} {'req/s':>8} {'hops/s':>8} {'relay hops/s':>13} "
        f"{'ratio':>6} {'target':>7} {'cpu ms':>7} {'relay cpu':>10} {'wait %':>7} "
        f"{'floor hops/s':>13} {'floor/relay':>12} {'vs floor':>9} {'floor cpu':>10}"
    )
    for row in report["throughput"]:
        p, b, f = row["pipeline"], row["relay"], row.get("guarded_floor") or {}
        print(
            f"{row['bus']:<7}{row['scenario']:<11}{row['hops']:>4} {p['requests_per_s']:>8.1f} "
            f"{p['per_hop_per_s']:>8.1f} {b['per_hop_per_s']:>13.1f} {row['ratio_per_hop']:>6.2f} "
            f"{'>=' + str(row['target_ratio']):>7} {_num(p['cpu_ms_per_request']):>7} "
            f"{_num(b['cpu_ms_per_request']):>10} {_num(p['cpu_wait_percent']):>7} "
            f"{_num(f.get('per_hop_per_s')):>13} {_num(row.get('floor_ratio_per_hop')):>12} "
            f"{_num(row.get('ratio_to_floor')):>9} {_num(f.get('cpu_ms_per_request')):>10}"
        )


def print_tables(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    print(
        f"pipeline benchmark: {m['cpus']} cores, load average at start "
        f"{' '.join(str(x) for x in m['load_average_at_start'])}, at end "
        f"{' '.join(str(x) for x in report['load_average_at_end'])}; "
        f"kafka: {report['services'].get('kafka_info', '-')}; "
        f"redis: {report['services'].get('redis_info', '-')}"
    )
    s = report["settings"]
    if report["throughput"]:
        print_throughput(report)
        print(
            "vs chat: the scenario's figure / the chat row's of the same bus and round, "
            "median over rounds; cpu ms/hop = cpu ms / hops"
        )
        print(
            f"{'bus':<7}{'scenario':<11}{'hops':>4} {'req/s':>8} {'x chat':>7} {'hops/s':>8} "
            f"{'x chat':>7} {'cpu ms':>7} {'x chat':>7} {'cpu ms/hop':>11}"
        )
        for row in report["throughput"]:
            p, v = row["pipeline"], row.get("vs_chat") or {}
            cpu = p["cpu_ms_per_request"]
            print(
                f"{row['bus']:<7}{row['scenario']:<11}{row['hops']:>4} "
                f"{p['requests_per_s']:>8.1f} "
                f"{_num(v.get('requests_per_s')):>7} {p['per_hop_per_s']:>8.1f} "
                f"{_num(v.get('per_hop_per_s')):>7} {_num(cpu):>7} "
                f"{_num(v.get('cpu_ms_per_request')):>7} "
                f"{_num(None if cpu is None else round(cpu / row['hops'], 3)):>11}"
            )
    print(
        f"(b) model sleeping latency s per call, one agent worker, {s['partitions']} "
        f"partitions, conversations x {s['slow_turns']} request(s); built-in app, router + "
        f"agent processes (cpu: both); rss MB: the worker's peak resident memory (Kafka); "
        f"1st s: worker start to its first answer"
    )
    print(
        f"{'bus':<7}{'in_flight':>9} {'convs':>6} {'latency':>7} {'ideal/s':>8} "
        f"{'steady/s':>9} {'fraction':>9} {'target':>7} {'e2e/s':>7} {'cpu %':>6} "
        f"{'wait %':>7} {'cpu ms':>7} {'1-core max/s':>13} {'rss MB':>7} {'1st s':>6}"
    )
    for row in report["saturation"]:
        if "error" in row:
            print(
                f"{row['bus']:<7}{row['max_in_flight']:>9} {row['conversations']:>6} "
                f"{row['latency_s']:>7g} {row['ideal_per_s']:>8.0f}  FAILED: "
                f"{row['error']}; worker errors: {row['worker_errors']}"
            )
            continue
        print(
            f"{row['bus']:<7}{row['max_in_flight']:>9} {row['conversations']:>6} "
            f"{row['latency_s']:>7g} {row['ideal_per_s']:>8.0f} "
            f"{_num(row['steady_requests_per_s']):>9} {row['fraction']:>9.2f} "
            f"{'>=' + str(row['target_fraction']):>7} {row['requests_per_s']:>7.1f} "
            f"{_num(row['cpu_percent']):>6} {_num(row['cpu_wait_percent']):>7} "
            f"{_num(row['cpu_ms_per_request']):>7} "
            f"{_num(row['cpu_bound_per_s']):>13} {_num(row.get('rss_mb')):>7} "
            f"{_num(row.get('first_answer_s')):>6}"
        )
    census = report.get("redis_census")
    if census:
        for scenario, c in census.items():
            print(
                f"redis, {scenario}: {c['round_trips_per_request']} round trips per request "
                f"{c['by_command']}, {c['inside_scripts_per_request']} commands inside scripts"
            )


#: Rows of (b): 1000 and 5000 conversations, up to 5000 in flight. 5000 in flight with a
#: 0.5 s model would be 10 000 answers/s, beyond one core at ~0.4 ms CPU each: that row's
#: model takes 5 s, as a real LLM does (ideal 1000/s).
SLOW_ROWS = ("256", "1000", "1000x5000", "5000x5000@5")


def parse_row(spec: str, o: Options) -> tuple[int, int, float]:
    """``IN_FLIGHT[xCONVERSATIONS][@LATENCY]`` -> (in flight, conversations, latency)."""
    head, _, latency = spec.partition("@")
    in_flight, _, conversations = head.partition("x")
    return (
        int(in_flight),
        int(conversations) if conversations else o.slow_conversations,
        float(latency) if latency else o.slow_latency,
    )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument("--bus", choices=["kafka", "memory", "both"], default="both")
    parser.add_argument("--requests", type=int, help="(a) requests per round (default 5000)")
    parser.add_argument("--conversations", type=int, help="(a) conversations (default 1250)")
    parser.add_argument("--rounds", type=int, help="(a) rounds, median reported (default 3)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=256, help="(a) max_in_flight")
    parser.add_argument(
        "--scenarios",
        default="chat,tool,handoff,agent_tool",
        help="(a) scenarios, of chat,tool,handoff,agent_tool",
    )
    parser.add_argument("--no-floor", action="store_true", help="(a) skip the guarded floor")
    parser.add_argument("--no-saturation", action="store_true", help="skip (b)")
    parser.add_argument("--slow-latency", type=float, default=0.5)
    parser.add_argument("--slow-conversations", type=int, default=1000)
    parser.add_argument("--slow-turns", type=int, help="(b) requests per conversation (5)")
    parser.add_argument(
        "--slow-in-flight",
        help="(b) rows, IN_FLIGHT[xCONVERSATIONS][@LATENCY] (default "
        f"{','.join(SLOW_ROWS)}; conversations and latency default to --slow-*)",
    )
    parser.add_argument("--skip-throughput", action="store_true", help="run (b) only")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a CPU-time cProfile of each Kafka worker process to DIR (slows them)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/pipeline.json")
    args = parser.parse_args()
    quick = args.quick
    o = Options(
        requests=args.requests or (200 if quick else 5000),
        conversations=args.conversations or (50 if quick else 1250),
        rounds=args.rounds or (1 if quick else 3),
        partitions=args.partitions,
        in_flight=args.in_flight,
        warmup=30 if quick else 200,
        slow_latency=args.slow_latency,
        slow_conversations=args.slow_conversations,
        slow_turns=args.slow_turns or (1 if quick else 5),
        slow_in_flight=[],
        scenarios=tuple(args.scenarios.split(",")),
        floor=not args.no_floor,
    )
    unknown = set(o.scenarios) - set(HOPS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: of {', '.join(HOPS)}")
    spec = args.slow_in_flight or ("256" if quick else ",".join(SLOW_ROWS))
    o.slow_rows = [] if args.no_saturation else [parse_row(x, o) for x in spec.split(",")]
    o.slow_in_flight = [n for n, _, _ in o.slow_rows]
    o.skip_throughput = args.skip_throughput
    buses = ["kafka", "memory"] if args.bus == "both" else [args.bus]
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "command": " ".join(["python", "bench/pipeline.py", *sys.argv[1:]]),
        "revision": revision(),
        "machine": machine(),
        "settings": dataclasses.asdict(o),
        "services": {},
        "throughput": [],
        "saturation": [],
        "redis_census": None,
        "workers": "Kafka: `agentstream worker router|agent|tool` subprocesses; memory: in this "
        "process",
    }

    logging.basicConfig(level=logging.WARNING)
    # aiokafka retries offset lookups on just-created topics and logs each attempt.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def log(line: str) -> None:
        print(line, flush=True)

    m = report["machine"]
    log(f"machine: {m['cpus']} cores, load average {m['load_average_at_start']}")
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipe-")))
        services: dict[str, str] = {}
        if "kafka" in buses:
            services["kafka"], services["kafka_info"] = stack.enter_context(kafka_service())
            services["redis"], services["redis_info"] = stack.enter_context(redis_service())
        report["services"] = {k: v for k, v in services.items() if k.endswith("_info")}
        for kind in buses:
            result = asyncio.run(run_bus(kind, o, services, workdir, args.profile, not quick, log))
            report["throughput"] += result["throughput"]
            report["saturation"] += result["saturation"]
            report["redis_census"] = result.get("redis_census") or report["redis_census"]
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - began, 1)
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out} in {report['total_seconds']}s")


if __name__ == "__main__":
    main()
