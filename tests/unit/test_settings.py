"""Settings: the contract's names and defaults; a wrong value stops the process naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.errors import ConfigurationError
from app.settings import load_settings

ENV_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "CRON_SECRET",
    "AGENT_WORKER_CONCURRENCY",
    "SCHEDULER_POLL_INTERVAL",
    "DEFAULT_TIMEZONE",
    "LLM_PROVIDER",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the repo


def test_defaults_follow_the_contract(clean_env):
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/agentsched"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.cron_secret is None
    assert settings.agent_worker_concurrency == 5
    assert settings.scheduler_poll_interval == 60
    assert settings.default_timezone == "America/New_York"
    assert settings.provider_name == "offline"


def test_the_seed_redis_names_build_the_url(clean_env, monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "redis.internal")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss/word")
    assert load_settings().broker_url == "redis://:p%40ss%2Fword@redis.internal:6380/0"
    monkeypatch.setenv("REDIS_URL", "redis://other:6379/3")
    assert load_settings().broker_url == "redis://other:6379/3"


def test_a_key_or_base_url_selects_the_openai_provider(clean_env, monkeypatch):
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:11434/v1/")
    settings = load_settings()
    assert settings.provider_name == "openai"
    assert settings.provider_base_url == "http://127.0.0.1:11434/v1"


def test_a_plain_postgresql_url_gets_the_psycopg_driver(clean_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/app")
    assert load_settings().database_url == "postgresql+psycopg://u:p@db:5432/app"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/app"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("DEFAULT_TIMEZONE", "Mars/Olympus_Mons"),
        ("AGENT_WORKER_CONCURRENCY", "-3"),
        ("SCHEDULER_POLL_INTERVAL", "0"),
        ("REDIS_PORT", "seventy"),
        ("LLM_PROVIDER", "anthropic-direct"),
        ("LLM_BASE_URL", "ftp://models"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_variable(clean_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert name in caught.value.message


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "app.cli", "tasks", "list"],
        [sys.executable, "-m", "scheduler"],
        [sys.executable, "-c", "import api.app; api.app.app"],
        [sys.executable, "-c", "import actors"],
    ],
    ids=["cli", "scheduler", "api", "worker"],
)
def test_every_process_stops_at_start_with_a_message_naming_the_variable(tmp_path, command):
    env = {**os.environ, "DEFAULT_TIMEZONE": "Mars/Olympus_Mons", "PYTHONPATH": os.getcwd()}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert done.returncode != 0
    assert "DEFAULT_TIMEZONE" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_readme_documents_every_setting():
    """CONTRACT.md lists only some variables; the README's configuration section names them all."""
    from pathlib import Path

    from app.settings import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in section]
    assert missing == []
