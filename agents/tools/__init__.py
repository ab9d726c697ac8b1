"""Tools: the registry that declares, validates and runs them, and the built-in ones.

A tool is declared once with typed (pydantic) arguments; the registry derives the JSON
Schema the model sees, validates arguments before a call, and runs each tool under its
timeout and circuit breaker (:mod:`agentstream.agents.tools.circuit`). The built-in tools
(:func:`builtin_registry`: calculator, time, units, text) touch no shell, file or network.
"""

from agentstream.agents.tools.builtin import builtin_registry
from agentstream.agents.tools.circuit import CircuitBreaker, CircuitOpen, CircuitState
from agentstream.agents.tools.registry import (
    InvalidArguments,
    Tool,
    ToolRegistry,
    ToolTimeout,
    UnknownTool,
)

__all__ = [
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "InvalidArguments",
    "Tool",
    "ToolRegistry",
    "ToolTimeout",
    "UnknownTool",
    "builtin_registry",
]
