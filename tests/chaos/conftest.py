"""Fixtures of the chaos suite: a cluster of worker processes per test, and the results.

- ``cluster``: ``await cluster(bootstrap, redis_url, **env)`` gives a started
  :class:`~tests.chaos.cluster.Cluster` with this test's topic prefix; every process it
  started is killed after the test, whatever happened.
- ``record_result``: records a scenario's :class:`~tests.chaos.results.ScenarioResult`
  (JSON line, see :mod:`tests.chaos.results`); the terminal summary lists them all.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.invariants import ChaosReport
from tests.chaos.results import ResultSink, ScenarioResult, Timeline

_SINK = pytest.StashKey[ResultSink]()
_REPORT = pytest.StashKey[Path | None]()
_REPORT_ENV = "CHAOS_REPORT"


def pytest_configure(config: pytest.Config) -> None:
    # Read at configure time: an autouse fixture may clear the environment later.
    path = os.environ.get(_REPORT_ENV)
    config.stash[_REPORT] = Path(path) if path else None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    sink = config.stash.get(_SINK, None)
    if sink is None or not sink.results:
        return
    terminalreporter.write_sep("=", "chaos scenarios")
    for result in sink.results:
        terminalreporter.line(result.line())
    where = sink.report_path or sink.directory
    terminalreporter.line(f"(JSON lines in {where})")


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def cluster(prefix: str, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    made: list[Cluster] = []

    async def make(bootstrap: str, redis_url: str, **env: str) -> Cluster:
        c = Cluster(bootstrap=bootstrap, redis_url=redis_url, prefix=prefix, logs=tmp_path, env=env)
        made.append(c)
        await c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


RecordResult = Callable[..., ScenarioResult]


@pytest.fixture
def record_result(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> RecordResult:
    config = request.config
    if _SINK not in config.stash:
        config.stash[_SINK] = ResultSink(
            tmp_path_factory.getbasetemp() / "chaos-results", config.stash.get(_REPORT, None)
        )
    sink = config.stash[_SINK]

    def record(
        scenario: str,
        report: ChaosReport,
        timeline: Timeline,
        details: dict[str, Any] | None = None,
    ) -> ScenarioResult:
        result = ScenarioResult.of(scenario, report, timeline, details)
        sink.add(result)
        return result

    return record
