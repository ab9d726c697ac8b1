"""Logging set-up: readable lines on a terminal, JSON lines otherwise.

Handlers bind ``request_id``, ``topic``, ``partition`` and ``offset`` through ``extra``;
the JSON formatter emits them as fields so log pipelines can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "configure_logging"]

_BOUND = ("request_id", "topic", "partition", "offset")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _BOUND:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


#: The Kafka client's loggers. aiokafka logs a failed bootstrap as an ERROR line before it
#: raises; a one-shot command reports the exception itself, readably, so it hides these.
_CLIENT_LOGGERS = ("aiokafka", "kafka")


def _not_client(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_CLIENT_LOGGERS)


def configure_logging(
    level: str = "INFO", json_logs: bool | None = None, *, client_logs: bool = True
) -> None:
    """Log to stderr. ``client_logs=False`` (one-shot CLI commands) drops the Kafka
    client's records: their failures come back as exceptions the command prints as one line."""
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    handler = logging.StreamHandler(sys.stderr)
    if not client_logs:
        handler.addFilter(_not_client)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
