"""The stats worker: per-minute aggregates of requests, tools and models, per tenant.

It folds facts from ``user_request``, ``tool_result`` and ``agent_response`` into windows
and publishes each closed window as an ``agent_stats`` event.
"""

from agentstream.handlers.stats.routes import StatsHandlers

__all__ = ["StatsHandlers"]
