"""The two benchmarks of ``bench/pipeline.py``, on one rig: (a) throughput of the
pipeline against a relay chain, (b) saturation of one agent worker with a slow model, and
a census of the Redis commands per request.

Each returns the rows of its table (see the module doc of ``bench/pipeline.py`` for what
they mean).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from bench.pipeline_batch import BenchError, chain_census, check_answers
from bench.pipeline_rig import Rig
from bench.pipeline_workload import APP, HOPS, LAYOUT, make_requests, padded

TARGET_RATIO = 0.5
TARGET_FRACTION = 0.9


async def throughput(rig: Rig, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Benchmark (a) on one bus: pipeline and relay, rounds interleaved, every scenario on
    the same workers (router, agent, tool processes running ``examples.support``)."""
    from agentstream.topics import Topic

    o = rig.o
    assert rig.bus is not None
    scenarios = {s: HOPS[s] for s in o.scenarios}
    settings, pids = await rig.pipeline(0.0, o.in_flight, ["router", "agent", "tool"], APP)
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    warm_tag = f"w{uuid.uuid4().hex[:6]}"
    for scenario, hops in scenarios.items():
        warm = make_requests(o.warmup, min(o.conversations, o.warmup), scenario, warm_tag)
        check_answers(await rig.batch(source, sink, warm, hops, pids), warm, scenario)
    chain_topics = [
        catalog.name(t) for t in catalog.topics() if t not in (Topic.MEMORY_CALL, Topic.AGENT_STATS)
    ]
    sizes, records = await chain_census(
        rig.bus, chain_topics, warm_tag, dict.fromkeys(scenarios, o.warmup)
    )
    produced = {
        s: round(sum(n for t, n in by_topic.items() if t != source), 2)
        for s, by_topic in records.items()
    }
    log(f"  {rig.kind}: workers warm; mean record size per scenario: {sizes}")
    log(f"  {rig.kind}: records produced per request (hops counted): {produced}")
    for scenario, hops in scenarios.items():
        if produced[scenario] != hops:
            raise BenchError(
                f"{scenario}: {produced[scenario]} records per request, {hops} hops declared: "
                f"{records[scenario]}"
            )
    prefix = settings.topics.prefix
    relays = {s: await rig.relay(prefix, LAYOUT[s]) for s in scenarios}
    # The guarded floor needs Redis: on Kafka only.
    guarded = rig.kind == "kafka" and o.floor
    floors = {s: await rig.relay(prefix, LAYOUT[s], guarded=True) for s in scenarios if guarded}
    for scenario, hops in scenarios.items():
        first, last, relay_pids = relays[scenario]
        warm = padded(make_requests(o.warmup, o.warmup, scenario, warm_tag), sizes[scenario])
        await rig.batch(first, last, warm, hops, relay_pids)
        if guarded:
            first, last, floor_pids = floors[scenario]
            warm = make_requests(o.warmup, o.warmup, scenario, warm_tag)
            await rig.batch(first, last, warm, hops, floor_pids)
    rounds: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {s: [] for s in scenarios}
    floor_rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    for r in range(o.rounds):
        for scenario, hops in scenarios.items():
            tag = f"r{r}{uuid.uuid4().hex[:6]}"
            requests = make_requests(o.requests, o.conversations, scenario, tag)
            # Each stage drains its batch as a backlog (held while it is published): the
            # publisher's rate bounds none of them.
            batch = await rig.batch(source, sink, requests, hops, pids, hold=True)
            check_answers(batch, requests, scenario)
            first, last, relay_pids = relays[scenario]
            relay_batch = await rig.batch(
                first, last, padded(requests, sizes[scenario]), hops, relay_pids, hold=True
            )
            p, b = batch.summary(), relay_batch.summary()
            rounds[scenario].append((p, b))
            floor_note = ""
            if guarded:
                first, last, floor_pids = floors[scenario]
                # The same requests again, as they are: the guarded relay decodes them.
                again = make_requests(o.requests, o.conversations, scenario, f"{tag}g")
                f = (await rig.batch(first, last, again, hops, floor_pids, hold=True)).summary()
                floor_rounds[scenario].append(f)
                floor_note = f", guarded floor {f['per_hop_per_s']:.0f} hops/s"
            log(
                f"  {rig.kind} {scenario} round {r + 1}: pipeline {p['requests_per_s']:.0f} "
                f"req/s {p['per_hop_per_s']:.0f} hops/s {p['cpu_ms_per_request']} cpu ms/req, "
                f"relay {b['per_hop_per_s']:.0f} hops/s{floor_note}, "
                f"ratio {p['per_hop_per_s'] / b['per_hop_per_s']:.2f}"
            )
    rows = []
    for scenario, hops in scenarios.items():
        pairs = rounds[scenario]
        ratios = [p["per_hop_per_s"] / b["per_hop_per_s"] for p, b in pairs]
        floor = floor_rounds[scenario]
        rows.append(
            {
                "bus": rig.kind,
                "scenario": scenario,
                "hops": hops,
                "layout": list(LAYOUT[scenario]),
                "records_per_request": records[scenario],
                "app": APP,
                "requests": o.requests,
                "conversations": o.conversations,
                "mean_record_bytes": sizes[scenario],
                "pipeline": median_round([p for p, _ in pairs]),
                "relay": median_round([b for _, b in pairs]),
                "ratio_per_hop": round(statistics.median(ratios), 3),
                "ratio_rounds": [round(x, 3) for x in ratios],
                "target_ratio": TARGET_RATIO,
                # The guarded relay, measured in the same rounds: what the guarantees cost at
                # the least (floor / relay), and how far the pipeline is from it.
                "guarded_floor": median_round(floor) if floor else None,
                "floor_ratio_per_hop": _median_ratio(floor, [b for _, b in pairs]),
                "ratio_to_floor": _median_ratio([p for p, _ in pairs], floor),
            }
        )
    chat = rounds.get("chat")
    for row in rows:
        # Against the chat row of the same run, round by round (the rounds interleave the
        # scenarios, so a round's pair shares the machine's mood), median over rounds.
        row["vs_chat"] = None if not chat else _vs(rounds[row["scenario"]], chat)
    return rows


def _vs(
    rows: list[tuple[dict[str, Any], dict[str, Any]]],
    chat: list[tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, float | None]:
    """Median over rounds of this scenario's pipeline figures / the chat row's."""
    out: dict[str, float | None] = {}
    for key in ("requests_per_s", "per_hop_per_s", "cpu_ms_per_request"):
        ratios = [
            p[key] / c[key] for (p, _), (c, _) in zip(rows, chat, strict=True) if p[key] and c[key]
        ]
        out[key] = round(statistics.median(ratios), 3) if ratios else None
    return out


def _median_ratio(top: list[dict[str, Any]], bottom: list[dict[str, Any]]) -> float | None:
    """The median over rounds of top's per-hop rate / bottom's (None without rounds)."""
    if not top or not bottom:
        return None
    ratios: list[float] = [
        t["per_hop_per_s"] / b["per_hop_per_s"] for t, b in zip(top, bottom, strict=True)
    ]
    return round(statistics.median(ratios), 3)


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["per_hop_per_s"])
    return {
        **ordered[len(ordered) // 2],
        "rounds_per_hop_per_s": [r["per_hop_per_s"] for r in rounds],
    }


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set of process ``pid`` (``VmHWM``), in MB; None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def saturation(
    rig: Rig,
    in_flight: int,
    log: Callable[[str], None],
    *,
    conversations: int | None = None,
    latency: float | None = None,
) -> dict[str, Any]:
    """Benchmark (b) on one bus: one agent worker, a slow model, many conversations
    (``conversations`` and ``latency`` default to the options' ``slow_*``)."""
    from agentstream.topics import Topic

    o = rig.o
    conversations = conversations or o.slow_conversations
    latency = latency or o.slow_latency
    ideal = min(in_flight, conversations) / latency
    row: dict[str, Any] = {
        "bus": rig.kind,
        "max_in_flight": in_flight,
        "latency_s": latency,
        "partitions": o.partitions,
        "conversations": conversations,
        "turns": o.slow_turns,
        "ideal_per_s": round(ideal, 1),
        "target_fraction": TARGET_FRACTION,
    }
    # The built-in app (one agent, "assistant"), as before issue 16, behind its router.
    settings, pids = await rig.pipeline(latency, in_flight, ["router", "agent"])
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    try:
        # Published as the worker starts: its first answer times the start (process
        # spawned, imports, group joined, store connected) plus one model call.
        warm_n = min(conversations, max(in_flight, 200))
        warm = make_requests(warm_n, warm_n, "chat", f"w{uuid.uuid4().hex[:6]}")
        warm_batch = await rig.batch(source, sink, warm, HOPS["chat"], pids)
        row["first_answer_s"] = round(min(warm_batch.done) - rig.spawned_at, 3)
        n = conversations * o.slow_turns
        requests = make_requests(n, conversations, "chat", f"s{uuid.uuid4().hex[:6]}")
        batch = await rig.batch(source, sink, requests, HOPS["chat"], pids)
        check_answers(batch, requests, "chat", app=False)
        # The agent worker's peak resident memory over the run (Kafka: its own process,
        # the last one started: the router comes first).
        row["rss_mb"] = peak_rss_mb(pids[-1]) if pids else None
    except BenchError as exc:
        # A failure of the worker is a result too: record it with the worker's errors.
        row["error"] = str(exc)
        row["worker_errors"] = rig.worker_errors()
        log(
            f"  {rig.kind} max_in_flight={in_flight} x {conversations}: FAILED: {exc}; "
            f"{row['worker_errors']}"
        )
        return row
    finally:
        await rig.stop_workers()
    s = batch.summary()
    row.update(s)
    row["fraction"] = round((s["steady_requests_per_s"] or 0) / ideal, 3)
    row["fraction_end_to_end"] = round(s["requests_per_s"] / ideal, 3)
    # What one core could sustain at this CPU cost per request, were it all ours.
    cpu_ms = s["cpu_ms_per_request"]
    row["cpu_bound_per_s"] = round(1000 / cpu_ms, 1) if cpu_ms else None
    log(
        f"  {rig.kind} max_in_flight={in_flight} x {conversations} conversations, "
        f"{latency}s model: steady {s['steady_requests_per_s']} req/s of "
        f"{ideal:.0f} ideal ({row['fraction']:.2f}), worker cpu {s['cpu_percent']}%, "
        f"peak rss {row['rss_mb']} MB, first answer {row['first_answer_s']} s after start"
    )
    return row


async def redis_census(rig: Rig, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Store commands per request, counted with MONITOR on a small untimed batch."""
    cli = shutil.which("redis-cli")
    if cli is None or rig.kind != "kafka":
        return None
    from agentstream.topics import Topic

    settings, pids = await rig.pipeline(0.0, rig.o.in_flight, ["router", "agent", "tool"], APP)
    catalog = settings.catalog()
    source, sink = catalog.name(Topic.USER_REQUEST), catalog.name(Topic.AGENT_RESPONSE)
    result: dict[str, Any] = {}
    for scenario in rig.o.scenarios:
        hops = HOPS[scenario]
        # A warm-up as wide as the census: every connection of the pool is open already.
        n = 100
        warm = make_requests(n, n, scenario, f"w{uuid.uuid4().hex[:6]}")
        await rig.batch(source, sink, warm, hops, pids)
        requests = make_requests(n, n, scenario, f"c{uuid.uuid4().hex[:6]}")
        with tempfile.TemporaryFile() as out:
            monitor = await asyncio.create_subprocess_exec(
                cli, "-u", rig.redis_url, "monitor", stdout=out
            )
            await asyncio.sleep(0.5)
            await rig.batch(source, sink, requests, hops, pids)
            await asyncio.sleep(0.3)
            monitor.terminate()
            await monitor.wait()
            out.seek(0)
            client: dict[str, int] = {}
            scripted: dict[str, int] = {}
            for line in out.read().decode(errors="replace").splitlines():
                _, _, rest = line.partition("] ")
                if not rest.startswith('"'):
                    continue
                command = rest.split('"')[1].upper()
                counts = scripted if "[0 lua]" in line else client
                counts[command] = counts.get(command, 0) + 1
        result[scenario] = {
            "requests": n,
            "round_trips_per_request": round(sum(client.values()) / n, 2),
            "by_command": {k: round(v / n, 2) for k, v in sorted(client.items())},
            "inside_scripts_per_request": round(sum(scripted.values()) / n, 2),
        }
        log(f"  redis {scenario}: {result[scenario]['round_trips_per_request']} round trips/req")
    await rig.stop_workers()
    return result
