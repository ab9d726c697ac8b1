"""Shared fixtures: a clean environment per test, the real-server plugin, unique prefixes."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support.install import missing_modules

pytest_plugins = ["tests.services.plugin"]


def pytest_configure(config: pytest.Config) -> None:
    """Stop at once, saying what to run, when the install lags behind the source tree."""
    missing = missing_modules()
    if missing:
        pytest.exit(
            f"modules added since the last install: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; run `make setup` (the package is "
            "installed in strict editable mode, ADR 1)",
            returncode=4,
        )


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
