"""compose.yaml: it validates, and what each service gets from it starts the service."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.migrate import PROJECT_ROOT
from app.settings import Settings

APP_SERVICES = ("migrate", "api", "worker", "scheduler")
#: What a service process does first: logging, then settings (`api.app`, `actors`, `scheduler`).
STARTUP = """
import json
from app.logging import configure_logging
from app.settings import load_settings
configure_logging()
s = load_settings()
print(json.dumps({"database": s.database_url, "redis": s.broker_url, "provider": s.provider_name,
                  "timezone": s.default_timezone, "threads": s.agent_worker_concurrency,
                  "cron_secret": s.cron_secret is not None}))
"""

pytestmark = pytest.mark.timeout(120)


def compose_config(directory: Path, host_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose config` of our compose.yaml, alone in `directory` (no .env beside it)."""
    program = shutil.which("docker-compose")
    if program is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "compose.yaml", directory / "compose.yaml")
    result = subprocess.run(
        [program, "--project-directory", str(directory), "-f", str(directory / "compose.yaml"), "config"],
        cwd=directory,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(host_env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def environment(config: dict[str, Any], service: str) -> dict[str, str]:
    env = config["services"][service].get("environment") or {}
    return {name: "" if value is None else str(value) for name, value in env.items()}


def readme_variables() -> list[str]:
    """The variable names of the README's configuration table."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])
    return names


def test_every_service_starts_with_what_compose_gives_it_and_nothing_on_the_host(tmp_path: Path) -> None:
    config = compose_config(tmp_path / "compose")
    for service in APP_SERVICES:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment(config, service)}
        started = subprocess.run(
            [sys.executable, "-c", STARTUP],
            cwd=tmp_path / "compose",  # no .env here
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert started.returncode == 0, f"{service}: {started.stderr}"
        seen = json.loads(started.stdout)
        assert seen["database"] == "postgresql+psycopg://postgres:postgres@postgres:5432/agentsched", service
        assert seen["redis"] == "redis://redis:6379/0", service
        assert seen["provider"] == "offline", service
        assert seen["timezone"] == "America/New_York", service
        assert seen["threads"] == 5, service
        assert seen["cron_secret"] is False, service


def test_every_configuration_variable_reaches_every_service(tmp_path: Path) -> None:
    names = sorted({*readme_variables(), *(name.upper() for name in Settings.model_fields)})
    assert "CRON_SECRET" in names
    assert "LLM_PROVIDER" in names
    host = {name: f"from-host-{name.lower()}" for name in names}
    config = compose_config(tmp_path / "compose", host)
    for service in APP_SERVICES:
        env = environment(config, service)
        missing = [name for name in names if env.get(name) != host[name]]
        assert not missing, f"compose.yaml does not pass {missing} to {service} (add NAME: ${{NAME:-}})"


def test_health_checks_ask_the_processes_heartbeats(tmp_path: Path) -> None:
    services = compose_config(tmp_path / "compose")["services"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "agentsched", "health", "worker"]
    assert services["scheduler"]["healthcheck"]["test"] == ["CMD", "agentsched", "health", "scheduler"]
    assert "/api/health" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("api", "worker", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_image_is_a_non_root_non_editable_install_of_a_clean_context() -> None:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and line[0].isupper()]
    users = [args.strip() for keyword, args in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1] not in ("root", "0")
    assert "pip install -e" not in dockerfile
    assert "--editable" not in dockerfile
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for name in (".venv", ".env", ".agentsched", ".git", "**/__pycache__", ".mypy_cache", ".pytest_cache"):
        assert name in ignored, f".dockerignore does not exclude {name}"
