"""The agent worker's metrics: LLM calls, tokens and cost per model, terminal responses,
latency, handoffs, sub-runs and guardrail rejections, each per declared agent.

Declared through :mod:`agentstream.handlers.runtime.metrics` on the process' one registry;
``agent`` (a declared name) and ``tenant`` (a bounded set of API keys' tenants) are labels,
request and run ids never are.
"""

from __future__ import annotations

from agentstream.handlers.runtime.metrics import MetricsPart, counter, histogram
from prometheus_client import CollectorRegistry

__all__ = ["AgentMetrics"]

#: Request to answer: an LLM agent answers in seconds to minutes.
_ANSWER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class AgentMetrics(MetricsPart):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.llm_tokens = counter(
            r, "agentstream_llm_tokens", "LLM tokens", ["agent", "model", "kind", "tenant"]
        )
        self.llm_cost = counter(
            r, "agentstream_llm_cost_usd", "LLM cost in USD", ["agent", "model", "tenant"]
        )
        self.llm_calls = counter(
            r, "agentstream_llm_calls", "LLM calls", ["agent", "model", "outcome"]
        )
        self.responses = counter(
            r, "agentstream_responses", "Terminal responses", ["agent", "status", "tenant"]
        )
        self.answer_seconds = histogram(
            r,
            "agentstream_agent_answer_seconds",
            "From the request to its terminal response, by the agent that answered",
            ["agent", "status"],
            buckets=_ANSWER_BUCKETS,
        )
        self.handoffs = counter(
            r, "agentstream_agent_handoffs", "Handoffs between agents", ["agent", "target"]
        )
        self.subruns = counter(
            r,
            "agentstream_agent_subruns",
            "Agents called as tools, by the caller and the outcome",
            ["agent", "callee", "outcome"],
        )
        self.guardrail_rejections = counter(
            r,
            "agentstream_agent_guardrail_rejections",
            "Requests or answers a guardrail rejected",
            ["agent", "kind"],
        )
