"""Model clients: the :class:`Model` protocol, the routing rule, the reply cache and the
OpenAI-compatible client.

:class:`OpenAIModel` is loaded on first use, so importing this package (or a tool, which
names a :class:`ToolSpec`) does not import the ``openai`` package: a tool worker, or an
agent on the offline model, never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.agents.models.base import (
    DEFAULT_PRICES,
    Model,
    ModelPrice,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
    ToolSpec,
    price_for,
    priced,
)
from agentstream.agents.models.cache import cache_key, cached_reply, decode_reply, encode_reply
from agentstream.agents.models.routing import ModelRouter, UnknownModel

if TYPE_CHECKING:
    from agentstream.agents.models.openai_model import OpenAIModel

__all__ = [
    "DEFAULT_PRICES",
    "Model",
    "ModelPrice",
    "ModelRejected",
    "ModelRouter",
    "ModelTimeout",
    "ModelUnavailable",
    "OpenAIModel",
    "ToolSpec",
    "UnknownModel",
    "cache_key",
    "cached_reply",
    "decode_reply",
    "encode_reply",
    "price_for",
    "priced",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIModel":
        from agentstream.agents.models.openai_model import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
