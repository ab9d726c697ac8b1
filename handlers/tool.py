"""The tool worker's handler: one ``tool_call`` in, one ``tool_result`` out.

The tool runs through the registry (arguments validated first, a timeout and a circuit
breaker per tool) and its outcome is recorded under the call id, so a redelivered call
returns the recorded result instead of running the tool twice. A call that can never work
(unknown tool, invalid arguments) is answered with a failed result at once; the model sees
the error and can recover. Passing failures (timeouts, an open circuit) are retried by the
runtime; if they persist until the budget is spent, the dead-letter hook still answers with
a failed result, so the agent's run goes on instead of waiting for its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from agentstream.agents import ToolOutcome, ToolRegistry
from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.metrics import MetricsPart, counter, gauge, histogram
from agentstream.handlers.runtime.route import Route
from agentstream.schemas import (
    Envelope,
    PermanentError,
    ToolCall,
    ToolResult,
    ToolResultData,
)
from agentstream.topics import Inbox, LogicalTopic, Topic
from prometheus_client import CollectorRegistry

__all__ = ["ToolHandlers", "tool_result"]

SOURCE = "tool-worker"


def tool_result(event: Envelope[Any], outcome: ToolOutcome, source: str) -> ToolResult:
    """The ``tool_result`` answering the tool or memory call ``event``: to the input topic of
    the agent that asked (``reply_to``), or to ``tool_result`` when none is named."""
    data = event.data
    return event.derive(
        ToolResult,
        ToolResultData(
            call_id=data.call_id,
            step=data.step,
            tool=data.tool,
            ok=outcome.ok,
            output=outcome.output,
            error=outcome.error,
            error_class=outcome.error_class,
            duration_ms=outcome.duration_ms,
            reply_to=data.reply_to,
            run_id=data.run_id,
        ),
        step="result",
        source=source,
    )


class ToolMetrics(MetricsPart):
    """The tool worker's metrics: latency and errors per tool, and its circuit breakers."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.tool_seconds = histogram(
            r, "agentstream_tool_seconds", "Tool latency", ["tool", "outcome"]
        )
        self.tool_errors = counter(
            r, "agentstream_tool_errors", "Tool errors", ["tool", "error_class"]
        )
        self.circuit_state = gauge(
            r,
            "agentstream_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"],
        )


class ToolHandlers:
    def __init__(
        self, registry: ToolRegistry, metrics: ToolMetrics, agents: Sequence[str] = ()
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        #: The results go to the asking agent's input topic (or tool_result for none).
        self.publishes: tuple[LogicalTopic, ...] = (
            Topic.TOOL_RESULT,
            *(Inbox(a) for a in agents),
        )

    def routes(self) -> list[Route]:
        return [
            Route(
                Topic.TOOL_CALL,
                self.on_tool_call,
                "tool.tool_call",
                on_dead_letter=self.on_dead_letter,
                publishes=self.publishes,
            )
        ]

    async def on_tool_call(self, event: ToolCall, ctx: Context) -> list[Envelope[Any]]:
        outcome, _ = await ctx.once(
            f"tool:{event.request_id}:{event.data.call_id}", ToolOutcome, lambda: self._run(event)
        )
        return [tool_result(event, outcome, SOURCE)]

    async def _run(self, event: ToolCall) -> ToolOutcome:
        name = event.data.tool
        started = time.perf_counter()
        try:
            output = await self.registry.call(name, dict(event.data.arguments))
        except PermanentError as exc:
            elapsed = time.perf_counter() - started
            self.metrics.tool_seconds.labels(name, "rejected").observe(elapsed)
            self.metrics.tool_errors.labels(name, type(exc).__name__).inc()
            return ToolOutcome(
                ok=False,
                error=str(exc),
                error_class=type(exc).__name__,
                duration_ms=elapsed * 1000,
            )
        except Exception as exc:
            self.metrics.tool_seconds.labels(name, "error").observe(time.perf_counter() - started)
            self.metrics.tool_errors.labels(name, type(exc).__name__).inc()
            raise
        finally:
            for breaker_name, state in self.registry.circuit_states().items():
                self.metrics.circuit_state.labels(f"tool:{breaker_name}").set(state)
        elapsed = time.perf_counter() - started
        self.metrics.tool_seconds.labels(name, "ok").observe(elapsed)
        return ToolOutcome(ok=True, output=output, duration_ms=elapsed * 1000)

    async def on_dead_letter(
        self, event: Envelope[Any] | None, raw: bytes | None, error: BaseException, ctx: Context
    ) -> list[Envelope[Any]]:
        if not isinstance(event, ToolCall):
            return []
        outcome = ToolOutcome(
            ok=False,
            error=f"tool failed after retries: {type(error).__name__}: {error}",
            error_class=type(error).__name__,
        )
        return [tool_result(event, outcome, SOURCE)]
