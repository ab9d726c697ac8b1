"""What the test run was given, and what a test does when a server cannot be had.

``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL`` and ``CI`` are read once, at configure time
(:func:`read_environment`, called by :mod:`tests.services.plugin`), because tests may clear
``os.environ`` with an autouse fixture before a session fixture first runs. :func:`unavailable`
is the one policy for a missing server: fail on CI (``CI=true``), skip elsewhere, so a test
needing a server never silently skips on CI.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["ENV_KEYS", "env", "on_ci", "read_environment", "unavailable"]

ENV_KEYS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CI")
#: The variables of ``ENV_KEYS`` that were set when the session was configured.
env: dict[str, str] = {}


def read_environment() -> None:
    """Take the snapshot of ``ENV_KEYS`` that the fixtures read instead of ``os.environ``."""
    env.clear()
    env.update({key: os.environ[key] for key in ENV_KEYS if key in os.environ})


def on_ci() -> bool:
    return env.get("CI", os.environ.get("CI", "")).lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Fail on CI, skip elsewhere: a test needing a server never silently skips on CI."""
    if on_ci():
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)
