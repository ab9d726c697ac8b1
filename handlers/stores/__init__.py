"""State stores: the :class:`StateStore` protocol, the in-process store and the Redis store.

Run state, dedup marks, outboxes and recorded side effects live here, so workers stay
stateless and any instance continues any request. This package imports nothing else of
``agentstream.handlers`` (an import-linter contract keeps it so); the runtime and the
ingress depend on the protocol, never on a particular store.
"""

from agentstream.handlers.stores.base import (
    Delete,
    IndexAdd,
    IndexRemove,
    InProcessStore,
    Op,
    Put,
    PutValue,
    StateStore,
    Versioned,
)

__all__ = [
    "Delete",
    "InProcessStore",
    "IndexAdd",
    "IndexRemove",
    "Op",
    "Put",
    "PutValue",
    "StateStore",
    "Versioned",
]
