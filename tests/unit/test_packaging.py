"""The package as the Docker image installs it (non-editable): complete, and able to migrate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app.migrate import PROJECT_ROOT

PACKAGES = ("app", "actors", "api", "scheduler")
#: Not part of the build: what .dockerignore keeps out of the image's build context.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".agentsched", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".*_cache", ".env"
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (building writes build/ beside the sources)."""
    sources = tmp_path_factory.mktemp("sources") / "agentsched"
    shutil.copytree(PROJECT_ROOT, sources, ignore=NOT_SOURCES)
    wheels = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        # As `pip install .` in the Dockerfile does: the build backend in an isolated environment.
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=sources,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    if built.returncode != 0 and "No matching distribution found" in built.stderr:
        pytest.skip(f"no package index for the build backend: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    return next(wheels.glob("agentsched-*.whl"))


def test_the_wheel_holds_every_file_of_the_packages(wheel: Path) -> None:
    """Templates, assets and the like too: the image has nothing but what the wheel holds."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        path.relative_to(PROJECT_ROOT).as_posix()
        for package in PACKAGES
        for path in (PROJECT_ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    missing = sorted(name for name in expected if name not in names)
    assert not missing, f"not in the wheel (add them as package data in pyproject.toml): {missing}"
    assert not [name for name in names if name.startswith("tests/")]


def test_the_installed_package_migrates_from_the_images_working_directory(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site-packages"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    # The image's working directory: alembic.ini and migrations/, nothing else.
    workdir = tmp_path / "srv"
    workdir.mkdir()
    shutil.copy(PROJECT_ROOT / "alembic.ini", workdir)
    shutil.copytree(PROJECT_ROOT / "migrations", workdir / "migrations", ignore=NOT_SOURCES)
    probe = "import app.migrate as m; print(m.PROJECT_ROOT); print(m.alembic_config('postgresql://x/y').config_file_name)"
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    package_root, config_file = found.stdout.split()
    assert Path(package_root) == target  # the installed copy, not the checkout
    assert Path(config_file) == workdir / "alembic.ini"
