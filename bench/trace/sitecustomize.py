"""A tracer for agent worker processes under ``bench/saturation_trace.py``.

On the worker's ``PYTHONPATH`` (the driver puts it there) and with ``BENCH_TRACE`` set, it
wraps ``agentstream.handlers.runtime.worker.Worker.run`` with a task that writes one JSON line every
``BENCH_TRACE_TICK_S`` (0.1 s): records in flight, backlog, model calls in flight, the
resident memory (``rss_mb``), the loop's lag, the CPU share of the last tick, and the
cumulative count and seconds of each phase of a record's hold (lane wait,
``Processor.process``, ``_decide``, the state read, the model call, the commit, the
delivery). With ``BENCH_TRACEMALLOC=N`` it also traces Python
allocations (``tracemalloc``, one frame; the worker runs slower) and, the first time N
model calls are in flight at once, writes ``<BENCH_TRACE>.<pid>.memory.txt``: the memory
allocated since the worker started, by source line, largest first, and per model call in
flight. Nothing here runs in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import tracemalloc
from typing import Any


def _install() -> None:
    import agentstream.agents.offline.model as offline
    import agentstream.handlers.runtime.delivery as delivery
    import agentstream.handlers.runtime.processing as processing
    import agentstream.handlers.runtime.worker as runtime
    import agentstream.handlers.stores.redis_store as redis_store

    phases: dict[str, list[float]] = {}
    model = {"in_flight": 0}

    def timed(cls: Any, name: str, phase: str) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            if phase == "model":
                model["in_flight"] += 1
            try:
                return await original(*args, **kwargs)
            finally:
                if phase == "model":
                    model["in_flight"] -= 1
                entry = phases.setdefault(phase, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        setattr(cls, name, wrapper)

    timed(processing.Processor, "process", "process")
    timed(processing.Processor, "_decide", "decide")
    timed(delivery.PlainDelivery, "deliver", "deliver")
    timed(redis_store.RedisStore, "commit", "commit")
    timed(redis_store.RedisStore, "read_many", "read_many")
    timed(offline.OfflineModel, "complete", "model")

    run_item = runtime.Worker._run_item

    async def traced_item(self: Any, item: Any) -> None:
        if item.record is not None:
            entry = phases.setdefault("lane_wait", [0, 0.0])
            entry[0] += 1
            entry[1] += time.monotonic() - item.started
        await run_item(self, item)

    runtime.Worker._run_item = traced_item  # type: ignore[method-assign]
    run = runtime.Worker.run
    tick = float(os.environ.get("BENCH_TRACE_TICK_S", "0.1"))

    async def traced_run(self: Any, stop: asyncio.Event) -> None:
        path = f"{os.environ['BENCH_TRACE']}.{os.getpid()}.jsonl"
        memory_at = int(os.environ.get("BENCH_TRACEMALLOC", "0"))
        if memory_at:
            tracemalloc.start(1)
        baseline = tracemalloc.take_snapshot() if memory_at else None

        async def trace() -> None:
            nonlocal baseline
            with open(path, "w") as out:  # noqa: ASYNC230 (a local file, one line a tick)
                last, cpu_last = time.monotonic(), time.process_time()
                while True:
                    await asyncio.sleep(tick)
                    now, cpu = time.monotonic(), time.process_time()
                    line = {
                        "t": round(now, 3),
                        "lag_s": round(now - last - tick, 4),
                        "cpu": round((cpu - cpu_last) / (now - last), 3),
                        "in_flight": self.in_flight,
                        # Handlers running, records waiting in their lane (ADR 24).
                        "running": getattr(self, "running", self.in_flight),
                        "waiting": getattr(self, "waiting", 0),
                        "backlog": len(self._admission),
                        "hold_s": round(self._admission.hold_s, 4),
                        "model_in_flight": model["in_flight"],
                        "rss_mb": _rss_mb(),
                        "phases": {k: [int(v[0]), round(v[1], 4)] for k, v in phases.items()},
                    }
                    out.write(json.dumps(line) + "\n")
                    out.flush()
                    last, cpu_last = now, cpu
                    if baseline is not None and model["in_flight"] >= memory_at:
                        _write_memory(path, baseline, model["in_flight"], line)
                        baseline = None

        task = asyncio.create_task(trace())
        try:
            await run(self, stop)
        finally:
            task.cancel()

    runtime.Worker.run = traced_run  # type: ignore[method-assign]


def _rss_mb() -> float:
    """The process's resident memory now, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def _write_memory(
    path: str, baseline: tracemalloc.Snapshot, calls: int, line: dict[str, Any]
) -> None:
    """The allocations grown since ``baseline``, by source line, per model call in flight."""
    snapshot = tracemalloc.take_snapshot()
    diff = snapshot.compare_to(baseline, "lineno")
    grown = sum(d.size_diff for d in diff)
    with open(path.replace(".jsonl", ".memory.txt"), "w") as out:
        out.write(
            f"model calls in flight {calls}; running {line['running']} waiting "
            f"{line['waiting']} backlog {line['backlog']}; traced now "
            f"{tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB, grown "
            f"{grown / 1e6:.1f} MB = {grown / max(calls, 1):.0f} B per call in flight\n"
        )
        for d in diff[:40]:
            out.write(
                f"{d.size_diff / 1e6:8.2f} MB {d.count_diff:8d} blocks "
                f"{d.size_diff / max(calls, 1):8.0f} B/call  {d.traceback}\n"
            )


if os.environ.get("BENCH_TRACE"):
    _install()
