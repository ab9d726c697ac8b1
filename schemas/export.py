"""The published contract, generated from the models: one JSON Schema per event type.

``agentstream schema export DIR`` calls :func:`export_json_schemas`. The files are what
other-language producers build from, and what the compatibility test compares with the
committed previous version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentstream.schemas.events import EVENT_TYPES

__all__ = ["event_json_schema", "export_json_schemas"]

_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_json_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the envelope of ``event_type``."""
    cls = EVENT_TYPES[event_type]
    schema = cls.model_json_schema(mode="validation")
    schema["$schema"] = _SCHEMA_DIALECT
    schema["$id"] = f"urn:agentstream:schema:{event_type}"
    schema["title"] = event_type
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<type>.json`` for every event type into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in sorted(EVENT_TYPES):
        path = directory / f"{event_type}.json"
        path.write_text(json.dumps(event_json_schema(event_type), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
