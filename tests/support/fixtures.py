"""Fixtures shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory
from app.migrate import upgrade_to_head
from app.services import accounts
from app.services.run_events import libpq_conninfo
from app.settings import Settings, get_settings

TABLES = ("credit_ledger", "task_runs", "tasks", "api_keys", "users")


def recreate_database(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1].split("?")[0]
    admin = libpq_conninfo(os.environ["AGENTSCHED_ADMIN_DATABASE_URL"])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def migrated_database(settings: Settings) -> str:
    """A fresh database, built with `alembic upgrade head` (the migrations are tested here)."""
    recreate_database(settings.database_url)
    upgrade_to_head(settings.database_url)
    return settings.database_url


@pytest.fixture(scope="session")
def engine(migrated_database: str, settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings, pool_size=30)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.broker_url)
    yield client
    client.close()


@pytest.fixture
def clean_state(engine: Engine, redis_client: redis.Redis) -> Iterator[None]:
    """Each test starts with empty tables and an empty Redis database."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    redis_client.flushdb()
    yield
    redis_client.flushdb()


@dataclass(frozen=True)
class Account:
    user_id: uuid.UUID
    email: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_account(session_factory: sessionmaker[Session]) -> Callable[..., Account]:
    def make(*, plan: str = "pro", credits: int | None = None, email: str | None = None) -> Account:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        with session_factory.begin() as session:
            user = accounts.create_user(session, email=email, plan=plan, monthly_credits=credits)
            key = accounts.issue_api_key(session, user)
            return Account(user.id, user.email, key)

    return make
