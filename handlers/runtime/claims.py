"""Claim check: events too big for the broker carry a reference, not the payload.

An output whose encoded value exceeds ``threshold_bytes`` is stored in the state store under
``claim:<event id>`` (with a TTL at least as long as the topic's retention) and published as
a small stub: the envelope's routing fields (``id``, ``type``, ``request_id``,
``conversation_id``, ``tenant``) plus ``claim_check: {key, bytes, sha256}``, with the header
``x-claim-check`` naming the key. Consumers of this project resolve the stub transparently
before decoding, and check the hash; a stub whose payload is gone (expired, another store)
is a ``SchemaError`` and goes to the dead-letter topic. Nothing is truncated or dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from agentstream.handlers.stores.base import StateStore
from agentstream.schemas import SchemaError, header
from agentstream.topics import OutgoingRecord, Record

__all__ = ["CLAIM_HEADER", "ClaimCheck"]

CLAIM_HEADER = "x-claim-check"
_ROUTING = ("id", "type", "source", "time", "request_id", "conversation_id", "tenant")


class ClaimCheck:
    def __init__(
        self, store: StateStore, namespace: str, *, threshold_bytes: int, ttl_s: int
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.threshold_bytes = threshold_bytes
        self.ttl_s = ttl_s

    async def offload(self, record: OutgoingRecord) -> OutgoingRecord:
        """``record`` itself when small enough, else a stub whose payload is in the store."""
        value = record.value
        if value is None or len(value) <= self.threshold_bytes:
            return record
        envelope = json.loads(value)
        digest = hashlib.sha256(value).hexdigest()
        key = f"{self.namespace}:claim:{envelope.get('id') or digest}"
        await self.store.put(key, value, self.ttl_s)
        stub = {name: envelope[name] for name in _ROUTING if name in envelope}
        stub["claim_check"] = {"key": key, "bytes": len(value), "sha256": digest}
        headers = (*record.headers, (CLAIM_HEADER, key.encode()))
        return replace(record, value=json.dumps(stub).encode(), headers=headers)

    async def resolve(self, record: Record) -> Record:
        """The record with its full payload back, when it carries a claim check."""
        key = header(record.headers, CLAIM_HEADER)
        if key is None:
            return record

        def fail(reason: str) -> SchemaError:
            return SchemaError(
                reason, topic=record.topic, partition=record.partition, offset=record.offset
            )

        try:
            expected = json.loads(record.value or b"")["claim_check"]["sha256"]
        except (ValueError, KeyError, TypeError):
            raise fail("claim-check stub without a valid 'claim_check' field") from None
        value = await self.store.fetch(key)
        if value is None:
            raise fail(f"claim-checked payload {key!r} is gone from the store")
        if hashlib.sha256(value).hexdigest() != expected:
            raise fail(f"claim-checked payload {key!r} does not match its hash")
        return replace(record, value=value)
