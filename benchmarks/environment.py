"""The benchmarks' own database and Redis db, the environment their processes get, and the lock
that keeps two scripts from sharing them at once.

Every script uses the database `agentsched_bench_runs` (dropped and rebuilt with the migrations)
and Redis db 12 (flushed at start), never anything else, and stops every process it started.
Call `use_bench_environment()` before importing `actors`: the broker binds to settings at import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BENCH_DATABASE = "agentsched_bench_runs"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
DATABASE_URL = f"{PG_SERVER}/{BENCH_DATABASE}"
ADMIN_DATABASE_URL = f"{PG_SERVER}/postgres"
REDIS_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
#: Credits for the benchmark user: enough for any run count here (the column is an int4).
BENCH_CREDITS = 2_000_000_000
#: How long a stopped child gets to exit on SIGTERM before it is killed (seconds).
STOP_GRACE_S = 15.0


def bench_environment(**overrides: str) -> dict[str, str]:
    """The environment of every child process: our database and Redis db, offline by default."""
    env = dict(os.environ)
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "LLM_BASE_URL", "LLM_API_KEY"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        LLM_PROVIDER="offline",
        # One benchmark client sends far more than 600 requests a minute with one key.
        API_RATE_LIMIT="0",
        CRON_RATE_LIMIT="0",
        PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def use_bench_environment(**overrides: str) -> None:
    """Point this process at the benchmark database and Redis db (before importing `actors`)."""
    os.environ.update(bench_environment(**overrides))
    os.chdir(PROJECT_ROOT)
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))


@contextlib.contextmanager
def exclusive_benchmark(name: str) -> Iterator[None]:
    """Refuse to start while another of these scripts runs: they share one database and Redis db."""
    import fcntl

    lock_path = Path(tempfile.gettempdir()) / f"{BENCH_DATABASE}.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise SystemExit(
                f"{name}: another benchmark holds {lock_path} ({lock.read().strip()}); they share "
                f"the database {BENCH_DATABASE} and Redis db {REDIS_DB}, so run them one at a time"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{name}, pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
