"""The wheel: one import package, ``agentstream``, that lives beside the OpenAI Agents SDK.

The repository keeps the design card's top-level folders (``agents/``, ``topics/``, …) and
pyproject maps them under ``agentstream`` (DESIGN.md 8a, ADR 1). These tests build the
wheel from a copy of the sources as pip would, read its file list, and install it into a
fresh virtualenv beside ``openai-agents``, whose top-level package is ``agents``: both
import, each its own, and the console script runs.

Speed: the virtualenv is made without pip (the test's pip installs into it with
``--python``), nothing is byte-compiled, and the dependencies come from a wheelhouse kept
beside pip's cache (``~/.cache/agentstream/wheelhouse``), so a second run needs no index;
when the wheelhouse lacks something (first run, new dependencies) it is filled with
``pip download`` from the index first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.install import REPO, listed_packages, package_dirs

# Generous: the budget is for a busy machine; on an idle one the module takes 30-60 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SDK = "openai-agents"
WHEELHOUSE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentstream" / "wheelhouse"
)


def _pip(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the distribution is made of (so the build
    leaves nothing in the repository), with build isolation, as ``pip install .`` would."""
    root = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    for folder in sorted(set(package_dirs().values())):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _check(_pip("wheel", "-q", "--no-deps", "-w", str(out), str(root)), "pip wheel")
    (built,) = out.glob("agentstream-*.whl")
    return built


def test_the_wheel_holds_one_import_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == {"agentstream"}, f"top-level entries: {sorted(top)}"
    # Every listed package and every source module is in it.
    for package in listed_packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    modules = {n for n in names if n.endswith(".py")}
    for package, folder in package_dirs().items():
        base = REPO / folder
        for source in base.rglob("*.py"):
            inside = source.relative_to(base)
            if package == "agentstream" and len(inside.parts) > 1:
                continue  # subfolders of the root map on their own
            if "__pycache__" in inside.parts:
                continue
            assert "/".join([*package.split("."), *inside.parts]) in modules, source
    assert "agentstream/py.typed" in names


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and the OpenAI Agents SDK, with dependencies."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    install = [
        "--python",
        str(python),
        "install",
        "-q",
        "--no-compile",
        "--no-index",
        "--find-links",
        str(WHEELHOUSE),
        str(wheel),
        SDK,
    ]
    result = _pip(*install)
    if result.returncode != 0:  # the wheelhouse lacks something: fill it from the index
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        _check(_pip("download", "-q", "-d", str(WHEELHOUSE), str(wheel), SDK), "pip download")
        for stale in WHEELHOUSE.glob("agentstream-*"):
            stale.unlink()  # ours is the one just built, never a cached copy
        result = _pip(*install)
    _check(result, "pip install into a fresh virtualenv")
    return env


def _run(env: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Outside the repository and without PYTHONPATH: nothing but the virtualenv is seen
    # (run from the repository, `import agents` would find its folder of that name).
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AGENTSTREAM_"))}
    return subprocess.run(
        argv, cwd=cwd, env=clean, capture_output=True, text=True, timeout=60, check=False
    )


def test_agentstream_and_the_agents_sdk_import_side_by_side(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import agentstream.agents, agents, json; "
        "print(json.dumps([agentstream.agents.__file__, agents.__file__, "
        "hasattr(agentstream.agents, 'ToolRegistry'), hasattr(agents, 'Runner')]))"
    )
    result = _run(venv, str(venv / "bin" / "python"), "-c", probe, cwd=tmp_path)
    _check(result, "importing agentstream.agents and agents")
    ours, sdk, ours_is_ours, sdk_is_sdk = json.loads(result.stdout)
    site = next((venv / "lib").glob("python*/site-packages"))
    assert Path(ours).is_relative_to(site / "agentstream" / "agents")
    assert Path(sdk).is_relative_to(site / "agents")
    assert ours_is_ours
    assert sdk_is_sdk


def test_the_console_script_runs(venv: Path, tmp_path: Path) -> None:
    result = _run(venv, str(venv / "bin" / "agentstream"), "--help", cwd=tmp_path)
    _check(result, "agentstream --help")
    assert result.stdout.startswith("usage: agentstream")
    assert "worker" in result.stdout
