"""Test configuration: real Postgres and Redis, from DATABASE_URL / REDIS_URL (see `agentsched test`).

The suite uses its own database (`<name>_test`, rebuilt with Alembic once per session, so the
migrations are tested on every run) and its own Redis database number. Both are chosen here, at
import, because the `actors` package binds its broker to the settings when first imported.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url

from app.settings import DEFAULT_DATABASE_URL

_base_db = make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
TEST_DATABASE = os.environ.get("AGENTSCHED_TEST_DATABASE", f"{_base_db.database or 'agentsched'}_test")
os.environ["DATABASE_URL"] = _base_db.set(database=TEST_DATABASE).render_as_string(hide_password=False)
os.environ["AGENTSCHED_ADMIN_DATABASE_URL"] = _base_db.set(database="postgres").render_as_string(
    hide_password=False
)

_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_REDIS_DB = int(os.environ.get("AGENTSCHED_TEST_REDIS_DB", "14"))
os.environ["REDIS_URL"] = (
    _redis.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}" if _redis.count("/") >= 3 else f"{_redis}/{TEST_REDIS_DB}"
)

# Fast, deterministic defaults for tests; individual tests override through settings.
os.environ.setdefault("RETRY_MIN_BACKOFF_MS", "100")
os.environ.setdefault("RETRY_MAX_BACKOFF_MS", "2000")
os.environ.setdefault("RUN_LEASE_GRACE_MS", "2000")
os.environ["LLM_PROVIDER"] = "offline"
os.environ.setdefault("CRON_SECRET", "test-cron-secret")
os.environ.setdefault("AGENT_WORKER_CONCURRENCY", "4")

pytest_plugins = ["tests.support.fixtures", "tests.support.webhook_fixtures"]
