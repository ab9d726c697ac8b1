"""The committed contract (docs/contract/) is still honoured by the models.

A change that breaks compatibility within a version fails here; the fix is a new ``.vN``
type, or, for an additive change, `agentstream schema export docs/contract` to commit it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from agentstream.schemas.compat import breaking_changes
from agentstream.schemas.events import EVENT_TYPES
from agentstream.schemas.export import event_json_schema

CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "contract"


def _committed() -> dict[str, dict[str, Any]]:
    return {
        p.name.removesuffix(".json"): json.loads(p.read_text())
        for p in CONTRACT.glob("agentstream.*.json")
    }


def _current() -> dict[str, dict[str, Any]]:
    return {t: event_json_schema(t) for t in EVENT_TYPES}


def test_committed_contract_covers_every_type() -> None:
    assert set(_committed()) == set(EVENT_TYPES)


def test_models_are_compatible_with_the_committed_contract() -> None:
    assert breaking_changes(_committed(), _current()) == []


def test_the_check_catches_breaking_changes() -> None:
    old = _current()
    new = copy.deepcopy(old)
    new["agentstream.user_request.v1"]["properties"].pop("tenant")
    new["agentstream.tool_call.v1"]["required"].append("traceparent")
    del new["agentstream.agent_response.v1"]
    problems = breaking_changes(old, new)
    assert any("tenant: property removed" in p for p in problems)
    assert any("traceparent: newly required" in p for p in problems)
    assert any("agent_response.v1: event type removed" in p for p in problems)


def test_adding_an_optional_field_is_compatible() -> None:
    old = _current()
    new = copy.deepcopy(old)
    new["agentstream.user_request.v1"]["properties"]["priority"] = {"type": "integer"}
    assert breaking_changes(old, new) == []
