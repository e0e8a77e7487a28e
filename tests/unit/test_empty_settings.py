"""An empty value counts as unset, as compose passes an unset `${NAME:-}` (no docker-compose needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings, load_settings


def test_every_setting_left_empty_takes_its_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in Settings.model_fields:
        monkeypatch.setenv(name.upper(), "")
    monkeypatch.setenv("LOG_LEVEL", "")
    settings = load_settings()
    defaults = Settings.model_construct()
    for name in Settings.model_fields:
        assert getattr(settings, name) == getattr(defaults, name), name
    assert settings.provider_name == "offline"


def test_an_empty_value_in_dotenv_counts_as_unset_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLM_PROVIDER", raising=False)
    monkeypatch.delenv("DEFAULT_TIMEZONE", raising=False)
    (tmp_path / ".env").write_text("LLM_PROVIDER=\nDEFAULT_TIMEZONE=\n")
    settings = load_settings()
    assert settings.llm_provider is None
    assert settings.default_timezone == "America/New_York"
