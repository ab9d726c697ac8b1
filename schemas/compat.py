"""Is a new JSON Schema a compatible evolution of the old one? (Within one ``.vN`` type.)

Compatible means every event valid under the old schema is still read, and every producer
written against the old schema still produces valid events: no event type removed, no
property removed or retyped, no property newly required. Adding optional properties is
fine. ``agentstream schema check`` and the CI test use :func:`breaking_changes`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["breaking_changes"]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root.get("$defs", {})[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        out: set[str] = set()
        for option in schema["anyOf"]:
            out |= _types(option, root)
        return out
    if "const" in schema:
        return {f"const:{schema['const']}"}
    kind = schema.get("type")
    if isinstance(kind, list):
        return set(kind)
    return {kind} if kind else {"any"}


def _compare(
    old: dict[str, Any],
    new: dict[str, Any],
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    path: str,
    problems: list[str],
) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    old_types, new_types = _types(old, old_root), _types(new, new_root)
    if "any" not in new_types and not old_types <= new_types:
        problems.append(f"{path}: type changed from {sorted(old_types)} to {sorted(new_types)}")
        return
    old_props = old.get("properties", {})
    new_props = new.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"{path}.{name}: property removed")
            continue
        _compare(old_props[name], new_props[name], old_root, new_root, f"{path}.{name}", problems)
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(newly_required):
        problems.append(f"{path}.{name}: newly required")


def breaking_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """Problems that make ``new`` (type name to schema) incompatible with ``old``."""
    problems: list[str] = []
    for event_type, old_schema in sorted(old.items()):
        if event_type not in new:
            problems.append(f"{event_type}: event type removed (add a new .vN beside it instead)")
            continue
        _compare(old_schema, new[event_type], old_schema, new[event_type], event_type, problems)
    return problems
