"""Shared fixtures: a clean environment per test, the real-server plugin, unique prefixes."""

from __future__ import annotations

import os
import uuid

import pytest

pytest_plugins = ["tests.services.plugin"]

_OURS = ("AGENTSTREAM_",)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build ``Settings(...)`` explicitly: no AGENTSTREAM_* variable leaks in."""
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test alone, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:10]}."
