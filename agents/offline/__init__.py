"""The offline demo model: deterministic, no network, no key (DESIGN.md 5).

It stands in for a real model so the whole pipeline runs anywhere; it is not part of the
agent API. :mod:`.intents` reads what a message asks with heuristics that serve only this
model.
"""

from agentstream.agents.offline.model import OfflineModel

__all__ = ["OfflineModel"]
