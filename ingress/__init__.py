"""The HTTP ingress: requests in as ``user_request`` events, answers out from the store.

A top-level package of its own (not inside ``handlers/``) because it is a separate process
with its own public contract, the HTTP API; see ``docs/adr/0006-ingress.md``. It sits between
the handlers and the wiring: it imports ``handlers``, ``topics`` and ``schemas``, and the
wiring (``agentstream``) imports it.
"""

from agentstream.ingress.app import ApiError, create_app
from agentstream.ingress.config import AppSettings, IngressOptions
from agentstream.ingress.server import IngressServer, projection_worker, serve

__all__ = [
    "ApiError",
    "AppSettings",
    "IngressOptions",
    "IngressServer",
    "create_app",
    "projection_worker",
    "serve",
]
