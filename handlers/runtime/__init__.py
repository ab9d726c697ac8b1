"""The generic worker runtime: everything a consumer-group member does around a handler.

In-flight scheduling (lanes per conversation, paced admission, the in-flight budget),
offsets committed up to the lowest unfinished one, retries in place and through the retry
topic, dead letters, the outbox and the dedup mark, claim checks, and the metrics of all of
it. A handler takes one typed event and a :class:`Context` and returns the events to emit;
it is declared as a :class:`Route`. Nothing here imports a worker's handlers (an
import-linter contract keeps it so): workers import the runtime, never the other way.
"""

from agentstream.handlers.runtime.context import Context
from agentstream.handlers.runtime.metrics import RuntimeMetrics
from agentstream.handlers.runtime.retries import RetryPolicy
from agentstream.handlers.runtime.route import Job, Route
from agentstream.handlers.runtime.worker import Worker

__all__ = ["Context", "Job", "RetryPolicy", "Route", "RuntimeMetrics", "Worker"]
