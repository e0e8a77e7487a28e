"""One settings object, read from the environment (and `.env`), built once per process."""

from __future__ import annotations

from functools import cache
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.errors import ConfigurationError

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/agentsched"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"


class Settings(BaseSettings):
    """Every knob of the service; names are the contract's environment variables."""

    # An empty value (`NAME=`, as compose passes an unset `${NAME:-}`) counts as unset.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, populate_by_name=True, env_ignore_empty=True
    )

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_password: SecretStr | None = None

    cron_secret: SecretStr | None = None
    #: Signs the dashboard's CSRF tokens; shared by every API process (default: derived, see api/dashboard).
    dashboard_secret: SecretStr | None = None
    agent_worker_concurrency: int = Field(default=5, ge=1, le=1024)
    scheduler_poll_interval: int = Field(default=60, ge=1, le=3600)
    default_timezone: str = "America/New_York"

    llm_provider: Literal["openai", "offline"] | None = None
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = OPENAI_DEFAULT_MODEL

    #: Retry backoff: attempt n waits about min(RETRY_MIN_BACKOFF_MS * 2**(n-1), max), jittered.
    retry_min_backoff_ms: int = Field(default=1_000, ge=1)
    retry_max_backoff_ms: int = Field(default=300_000, ge=1)
    #: Tokens a single run may spend; its credit reservation is the cost of this many tokens.
    run_token_budget: int = Field(default=20_000, ge=100)
    #: Tokens per credit (a run costs ceil(tokens / rate), at least 1 credit).
    tokens_per_credit: int = Field(default=1_000, ge=1)
    #: Past its deadline plus this grace, a running run's worker is taken for dead.
    run_lease_grace_ms: int = Field(default=30_000, ge=0)
    #: A queued run whose message was not sent (or was lost) this long is sent again.
    reconcile_grace_ms: int = Field(default=60_000, ge=1_000)
    #: Scheduler: reconciler period.
    reconcile_interval_s: int = Field(default=30, ge=1)
    #: Log lines as text, or one JSON object a line (app.logging); LOG_LEVEL sets the level.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: A worker renews the leases of its running runs this often (one statement per process) ...
    run_heartbeat_s: float = Field(default=5, gt=0, le=3600)
    #: ... and a running run whose lease is older than this is taken for lost and claimed again.
    run_lease_s: float = Field(default=30, gt=0, le=86_400)
    #: A stopping worker lets in-flight model calls finish for this long, then hands runs back.
    worker_stop_grace_s: float = Field(default=30, ge=0, le=3600)
    #: Stream model answers (`stream: true`); false for servers that cannot.
    llm_stream: bool = True

    #: Flow control (app.services.concurrency, app.providers.ratelimit, api.rate_limit).
    #: Provider budget for every worker process together: requests and tokens a minute (unset: none).
    llm_rpm: int | None = Field(default=None, ge=1)
    llm_tpm: int | None = Field(default=None, ge=1)
    #: Our API: requests a minute per API key, and per client address on /api/cron/* and
    #: /api/queue/*, one budget across API processes (0 turns the limit off).
    api_rate_limit: int = Field(default=600, ge=0)
    cron_rate_limit: int = Field(default=60, ge=0)

    #: Webhooks (app.webhooks): a delivery is retried for this long after its event.
    webhook_retry_hours: float = Field(default=24, gt=0, le=24 * 30)
    #: Allow webhook URLs on loopback, private, link-local and metadata addresses (`agentsched dev`).
    webhook_allow_private: bool = False
    #: Retry backoff of a delivery: attempt n waits about min(min * 2**(n-1), max), jittered.
    webhook_min_backoff_ms: int = Field(default=5_000, ge=1)
    webhook_max_backoff_ms: int = Field(default=3_600_000, ge=1)
    #: Deliveries sent at once per worker process (the rest wait in Redis, holding no thread).
    webhook_concurrency: int = Field(default=4, ge=1, le=256)
    #: Fernet key(s), comma-separated, that encrypt users' signing secrets at rest (the first
    #: encrypts, each decrypts); unset: stored as is (app.webhooks.secret_store).
    webhook_secrets_key: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        if url.get_backend_name() != "postgresql":
            raise ValueError("must be a postgresql:// URL")
        if url.drivername in ("postgresql", "postgres"):
            value = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _fold_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().lower() if info.field_name == "log_format" else value.strip().upper()

    @field_validator("default_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value

    @field_validator("webhook_secrets_key")
    @classmethod
    def _check_webhook_secrets_key(cls, value: SecretStr | None) -> SecretStr | None:
        from app.webhooks.secret_store import check_key_setting

        try:
            check_key_setting(value.get_secret_value() if value else None)
        except ConfigurationError as exc:
            raise ValueError(exc.message.removeprefix("WEBHOOK_SECRETS_KEY: ")) from None
        return value

    @property
    def webhook_secrets_key_value(self) -> str | None:
        return self.webhook_secrets_key.get_secret_value() if self.webhook_secrets_key else None

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        if self.run_lease_s <= self.run_heartbeat_s:
            raise ValueError("RUN_LEASE_S must be greater than RUN_HEARTBEAT_S")
        return self

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.retry_max_backoff_ms < self.retry_min_backoff_ms:
            raise ValueError("RETRY_MAX_BACKOFF_MS must be >= RETRY_MIN_BACKOFF_MS")
        return self

    @property
    def broker_url(self) -> str:
        """REDIS_URL, or one built from the seed's REDIS_HOST / REDIS_PORT / REDIS_PASSWORD."""
        if self.redis_url:
            return self.redis_url
        auth = ""
        if self.redis_password is not None:
            auth = ":" + quote(self.redis_password.get_secret_value(), safe="") + "@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/0"

    @property
    def provider_name(self) -> str:
        """LLM_PROVIDER, else `openai` when a key or base URL is set, else `offline`."""
        if self.llm_provider:
            return self.llm_provider
        return "openai" if (self.llm_api_key or self.llm_base_url) else "offline"

    @property
    def provider_base_url(self) -> str:
        return self.llm_base_url or OPENAI_BASE_URL


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "configuration"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from exc


@cache
def get_settings() -> Settings:
    """The process-wide settings, for entry points that have no factory argument."""
    return load_settings()
