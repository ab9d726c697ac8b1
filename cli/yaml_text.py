"""YAML text of plain data (dicts, lists, strings, numbers, booleans), for the manifests
``agentstream deploy render`` writes.

The package does not depend on a YAML library, and Kubernetes manifests need only this
much: block mappings and sequences, short lists of strings in flow style (``args``), and scalars
quoted (as JSON strings, which YAML reads the same) whenever a plain one could be read as
anything but the string itself (``"1"``, ``"true"``, ``"250m"``, ``"host:9093"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["documents"]

_PLAIN = re.compile(r"[A-Za-z/][A-Za-z0-9_./-]*")
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})


def documents(docs: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """``docs`` as one YAML stream, each document after ``---``, ``header`` lines as comments
    on top."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    for doc in docs:
        out.append("---")
        out.extend(_block(doc, 0))
    return "\n".join(out) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)


def _inline(value: Any) -> str | None:
    """``value`` on the line of its key, or None when it needs a block."""
    if isinstance(value, Mapping):
        return "{}" if not value else None
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        flow = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        if all(isinstance(v, str) for v in value) and len(flow) <= 60:
            return flow
        return None
    return _scalar(value)


def _block(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            inline = _inline(item)
            if inline is not None:
                lines.append(f"{pad}{_scalar(key)}: {inline}")
            else:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_block(item, indent + 1))
        return lines
    for item in value:
        inline = _inline(item)
        if inline is not None:
            lines.append(f"{pad}- {inline}")
            continue
        first, *rest = _block(item, indent + 1)
        lines.append(f"{pad}- {first.lstrip()}")
        lines.extend(rest)
    return lines
