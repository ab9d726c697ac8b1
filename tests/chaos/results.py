"""What each chaos scenario measured, as one JSON line, and the summary line printed for it.

A scenario keeps a :class:`Timeline` (when it started, when each fault began and ended) and
turns it, with its :class:`~tests.chaos.invariants.ChaosReport`, into a
:class:`ScenarioResult`. Results go to ``<pytest tmp>/chaos-results/<scenario>.json`` by
default, and to the file named by ``CHAOS_REPORT`` (one JSON line per scenario, rewritten
per session) when that variable is set, e.g. ``CHAOS_REPORT=bench/results/chaos.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.invariants import ChaosReport

__all__ = ["Fault", "ResultSink", "ScenarioResult", "Timeline"]


@dataclass
class Fault:
    label: str
    start: float
    end: float | None = None


@dataclass
class Timeline:
    """Wall-clock times (``time.time()``) of one scenario, comparable with record timestamps."""

    started: float = field(default_factory=time.time)
    faults: list[Fault] = field(default_factory=list)

    def fault(self, label: str) -> Fault:
        """A fault that begins now; set its ``end`` (or call :meth:`end`) when it is over."""
        fault = Fault(label, time.time())
        self.faults.append(fault)
        return fault

    def instant(self, label: str) -> Fault:
        """A fault that is over as soon as it happened (a SIGKILL)."""
        now = time.time()
        fault = Fault(label, now, now)
        self.faults.append(fault)
        return fault

    @staticmethod
    def end(fault: Fault) -> None:
        fault.end = time.time()

    @property
    def window(self) -> tuple[float, float] | None:
        """From the first fault's start to the last fault's end."""
        if not self.faults:
            return None
        start = min(f.start for f in self.faults)
        end = max(f.end if f.end is not None else f.start for f in self.faults)
        return start, end


@dataclass
class ScenarioResult:
    scenario: str
    requests: int
    lost: int
    duplicates: int
    conflicting: int
    out_of_order: int
    wrong: int
    not_completed: int
    recovery_s: float | None
    last_response_s: float | None
    duration_s: float
    ok: bool
    faults: list[dict[str, Any]]
    details: dict[str, Any]
    #: Requests answered 503 that were processed anyway; ``None`` where not checked.
    refused_processed: int | None = None

    @classmethod
    def of(
        cls,
        scenario: str,
        report: ChaosReport,
        timeline: Timeline,
        details: dict[str, Any] | None = None,
    ) -> ScenarioResult:
        recovery = last = None
        if timeline.window is not None:
            recovery, last = report.recovery(*timeline.window)
        elif report.response_times:
            last = max(ts for _, ts in report.response_times) - timeline.started
        return cls(
            scenario=scenario,
            requests=report.requests,
            lost=len(report.lost),
            duplicates=report.duplicates,
            conflicting=len(report.conflicting),
            out_of_order=len(report.out_of_order),
            wrong=len(report.wrong),
            not_completed=len(report.not_completed),
            recovery_s=_round(recovery),
            last_response_s=_round(last),
            duration_s=round(time.time() - timeline.started, 1),
            ok=report.ok,
            faults=[
                {
                    "label": f.label,
                    "at_s": round(f.start - timeline.started, 2),
                    "lasted_s": round((f.end or f.start) - f.start, 2),
                }
                for f in timeline.faults
            ],
            details={
                "side_duplicates": report.side_duplicates,
                "dead_letters": {k: v for k, v in report.dead_letters.items() if v},
                "violations": report.violations,
                **(details or {}),
            },
            refused_processed=None if report.refused is None else len(report.refused_processed),
        )

    def line(self) -> str:
        def s(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        since = "the fault" if self.faults else "the start"
        refused = ""
        if self.refused_processed is not None:
            refused = f"{self.refused_processed} answered 503 then processed, "
        return (
            f"{self.scenario}: {self.requests} requests, {self.lost} lost, "
            f"{self.duplicates} duplicates, {self.conflicting} conflicting, "
            f"{self.out_of_order} out of order, {refused}recovery {s(self.recovery_s)}, "
            f"last response {s(self.last_response_s)} after {since}, "
            f"{self.duration_s:.0f}s in all{'' if self.ok else '  <-- INVARIANTS BROKEN'}"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class ResultSink:
    """Writes results as JSON lines and keeps them for the terminal summary."""

    def __init__(self, directory: Path, report_path: Path | None) -> None:
        self.directory = directory
        self.report_path = report_path
        self.results: list[ScenarioResult] = []

    def add(self, result: ScenarioResult) -> None:
        line = json.dumps(asdict(result), sort_keys=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{result.scenario}.json").write_text(line + "\n")
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            with self.report_path.open("w" if not self.results else "a") as out:
                out.write(line + "\n")
        self.results.append(result)
        print(f"\nchaos: {result.line()}")
