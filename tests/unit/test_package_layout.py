"""pyproject's ``packages`` lists every package of the source folders, so none is forgotten.

setuptools installs only the packages ``[tool.setuptools] packages`` names (the folders are
mapped by ``package-dir``, ADR 1): a new subpackage missing from the list works in the
editable install's link tree only if reinstalled, and is silently absent from the wheel.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.install import REPO, listed_packages, package_dirs


def _package_of(folder: Path) -> str | None:
    """The import package a folder of the repository installs as, by ``package-dir``."""
    best: tuple[int, str] | None = None
    for package, root in package_dirs().items():
        base = REPO / root
        if folder == base or base in folder.parents:
            depth = len(base.parts)
            if best is None or depth > best[0]:
                inside = folder.relative_to(base).parts
                best = (depth, ".".join([package, *inside]))
    return None if best is None else best[1]


def _source_folders() -> list[Path]:
    folders: set[Path] = set()
    for root in package_dirs().values():
        base = REPO / root
        folders.add(base)
        folders.update(p.parent for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(folders)


def test_every_package_folder_is_listed() -> None:
    listed = set(listed_packages())
    found = {
        _package_of(folder): folder
        for folder in _source_folders()
        if (folder / "__init__.py").exists()
    }
    missing = sorted(str(name) for name in set(found) - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_has_its_folder() -> None:
    folders = {_package_of(f): f for f in _source_folders()}
    for package in listed_packages():
        folder = folders.get(package)
        assert folder is not None, f"{package} is listed in pyproject.toml but has no folder"
        assert (folder / "__init__.py").exists(), f"{package}: no {folder}/__init__.py"
    assert set(package_dirs()) <= set(listed_packages())


def test_no_module_sits_in_a_folder_without_init() -> None:
    """A folder of modules without ``__init__.py`` would be a namespace package, which
    ``packages`` does not pick up: its modules would be missing from the wheel."""
    bare = [
        str(folder.relative_to(REPO))
        for folder in _source_folders()
        if any(folder.glob("*.py")) and not (folder / "__init__.py").exists()
    ]
    assert not bare, f"folders of modules without an __init__.py: {bare}"
