"""The agent worker's metrics: LLM calls, tokens and cost per model, terminal responses.

Declared through :mod:`agentstream.handlers.runtime.metrics` on the process' one registry;
``tenant`` is a label (a bounded set of API keys' tenants), request and run ids never are.
"""

from __future__ import annotations

from agentstream.handlers.runtime.metrics import MetricsPart, counter
from prometheus_client import CollectorRegistry

__all__ = ["AgentMetrics"]


class AgentMetrics(MetricsPart):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.llm_tokens = counter(
            r, "agentstream_llm_tokens", "LLM tokens", ["model", "kind", "tenant"]
        )
        self.llm_cost = counter(
            r, "agentstream_llm_cost_usd", "LLM cost in USD", ["model", "tenant"]
        )
        self.llm_calls = counter(r, "agentstream_llm_calls", "LLM calls", ["model", "outcome"])
        self.responses = counter(
            r, "agentstream_responses", "Terminal responses", ["status", "tenant"]
        )
