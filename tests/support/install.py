"""Is the installed package in step with the source tree?

The package is installed in setuptools' strict editable mode (ADR 1): a tree of links to
the source files. A module added since the last install is not in that tree, and importing
it fails with a bare ``ModuleNotFoundError``. :func:`missing_modules` names such modules so
the test session can stop at once with the command that fixes it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import agentstream

__all__ = ["REPO", "listed_packages", "missing_modules", "package_dirs"]

REPO = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"])


def package_dirs() -> dict[str, str]:
    """pyproject's ``package-dir``: import package to its folder in the repository."""
    mapping: dict[str, str] = _setuptools_config()["package-dir"]
    return mapping


def listed_packages() -> list[str]:
    """pyproject's ``packages``: every import package the distribution installs."""
    packages: list[str] = _setuptools_config()["packages"]
    return packages


def missing_modules() -> list[str]:
    """Source modules of the package that the installed link tree does not have."""
    installed_root = Path(agentstream.__file__).parent
    missing: list[str] = []
    for package, folder in package_dirs().items():
        relative = Path(*package.split(".")[1:])
        for source in sorted((REPO / folder).rglob("*.py")):
            inside = source.relative_to(REPO / folder)
            if package == "agentstream" and len(inside.parts) > 1:
                continue  # the root folder's own modules only; subpackages map on their own
            if not (installed_root / relative / inside).exists():
                missing.append(f"{folder}/{inside}")
    return missing
