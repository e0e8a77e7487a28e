"""A fresh clone, with nothing beside it, collects the whole suite: no test reads outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.migrate import PROJECT_ROOT

pytestmark = pytest.mark.timeout(180)


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if _git("rev-parse", "--is-inside-work-tree", cwd=PROJECT_ROOT).returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout")
    # Alone in a new temporary directory: nothing that stands beside this checkout is beside the clone.
    clone = tmp_path_factory.mktemp("fresh") / "r"
    cloned = _git("clone", "--quiet", str(PROJECT_ROOT), str(clone), cwd=PROJECT_ROOT)
    assert cloned.returncode == 0, cloned.stderr
    assert sorted(p.name for p in clone.parent.iterdir()) == ["r"]
    return clone


def _in_clone(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=150, check=False
    )


def test_the_clone_imports_its_own_code(fresh_clone: Path) -> None:
    """The checks below prove something only if the clone's modules are the ones imported."""
    found = _in_clone(fresh_clone, "-c", "import app, tests; print(app.__file__); print(tests.__file__)")
    assert found.returncode == 0, found.stderr
    for line in found.stdout.split():
        assert Path(line).resolve().is_relative_to(fresh_clone.resolve()), found.stdout


def test_a_fresh_clone_collects_the_whole_suite_without_errors(fresh_clone: Path) -> None:
    collected = _in_clone(fresh_clone, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    output = collected.stdout + collected.stderr
    assert collected.returncode == 0, output[-4000:]
    summary = output.strip().splitlines()[-1]
    assert "error" not in summary.lower(), output[-4000:]
    count = summary.split()[0]
    assert count.isdigit(), summary
    assert int(count) > 0, summary
    assert "tests/integration/" in output, output[-4000:]
    assert "tests/unit/" in output, output[-4000:]
