"""The LLM response cache's logic: exact-match keys and the stored form of a reply.

The storage is the handler's (Redis, with a TTL); this module says what the key is and what
is stored. The key is the SHA-256 of the canonical JSON of the model name, the messages
and the tool specs, so it changes whenever anything the model sees changes, and never
depends on dict order or process. A reply served from the cache reports
``Usage(cached_calls=1)`` and no tokens or cost, since none were spent.

Only deterministic inputs make sense to cache: a conversation containing a clock tool's
result has that result in its messages, so it naturally gets its own key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache

from agentstream.agents.messages import Message, ModelReply
from agentstream.agents.models.base import ToolSpec
from agentstream.schemas import Usage

__all__ = ["CACHE_KEY_VERSION", "cache_key", "cached_reply", "decode_reply", "encode_reply"]

#: Part of every key; bump it when the key's inputs or the stored form change.
CACHE_KEY_VERSION = 1


def cache_key(model_name: str, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
    """The hex SHA-256 that identifies one model call by everything the model sees."""
    # The canonical JSON of {"v", "model", "messages", "tools"} with sorted keys, assembled
    # from its parts so the tools' part (the bulk of it, and the same for every call) is
    # dumped once per tool set.
    canonical = "".join(
        (
            '{"messages":',
            _canonical([m.model_dump(mode="json", exclude_defaults=True) for m in messages]),
            ',"model":',
            _canonical(model_name),
            ',"tools":',
            _tools_json(tuple(tools)),
            ',"v":',
            _canonical(CACHE_KEY_VERSION),
            "}",
        )
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=64)
def _tools_json(tools: tuple[ToolSpec, ...]) -> str:
    """The canonical JSON of ``tools`` sorted by name (a stable sort, as it always was)."""
    dumped = sorted((t.model_dump(mode="json") for t in tools), key=lambda spec: str(spec["name"]))
    return _canonical(dumped)


def encode_reply(reply: ModelReply) -> str:
    """The JSON text to store under a key."""
    return reply.model_dump_json()


def decode_reply(stored: str | bytes) -> ModelReply:
    """The reply read back from the store, exactly as it was encoded."""
    return ModelReply.model_validate_json(stored)


def cached_reply(stored: str | bytes) -> ModelReply:
    """A stored reply as a cache hit: same content, usage ``cached_calls=1`` and nothing spent."""
    reply = decode_reply(stored)
    return reply.model_copy(update={"usage": Usage(cached_calls=1)})
