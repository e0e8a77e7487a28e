"""What the benchmark scripts share: their own database and Redis db, seeding, child processes.

Every script uses the database `agentsched_bench_runs` (dropped and rebuilt with the migrations)
and Redis db 12 (flushed at start), never anything else, and stops every process it started.
Call `use_bench_environment()` before importing `actors`: the broker binds to settings at import.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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


# --- Postgres and Redis ------------------------------------------------------------------------


def recreate_database() -> None:
    """Drop and create `agentsched_bench_runs`, then build it with the migrations."""
    import psycopg

    from app.migrate import upgrade_to_head
    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    upgrade_to_head(DATABASE_URL)


def drop_database() -> None:
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')


def pg_setting(name: str) -> str:
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0]) if row else "?"


def pg_connections_in_use() -> int:
    """Client connections open on the whole server (other engineers' included)."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchone()
    return int(row[0]) if row else 0


def bench_connections() -> int:
    """Client connections open on the benchmark database."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (BENCH_DATABASE,)
        ).fetchone()
    return int(row[0]) if row else 0


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def flush_redis() -> None:
    client = redis_client()
    try:
        client.flushdb()
    finally:
        client.close()


def make_bench_engine(pool_size: int = 5) -> Any:
    from sqlalchemy import create_engine

    return create_engine(DATABASE_URL, pool_size=pool_size, max_overflow=pool_size)


@dataclass(frozen=True)
class BenchUser:
    user_id: uuid.UUID
    api_key: str


def create_users(engine: Any, count: int = 1, credits: int = BENCH_CREDITS) -> list[BenchUser]:
    """Users on the enterprise plan with `credits` a month, each with an API key."""
    from app.db import make_session_factory
    from app.services import accounts

    users = []
    with make_session_factory(engine).begin() as session:
        for _ in range(count):
            email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
            user = accounts.create_user(session, email=email, plan="enterprise", monthly_credits=credits)
            users.append(BenchUser(user.id, accounts.issue_api_key(session, user)))
    return users


# One task and one queued run per row of generate_series, spread round-robin over the users.
_INSERT_QUEUED_RUNS = """
WITH t AS (
    INSERT INTO tasks (id, user_id, title, description, agent_type, status, priority,
                       agent_config, schedule_enabled, tokens_used, credits_used,
                       created_at, updated_at)
    SELECT gen_random_uuid(), (CAST(:user_ids AS uuid[]))[1 + (g % CAST(:user_count AS int))],
           'bench ' || g, 'Summarise the benchmark item number ' || g, :agent_type, 'queued',
           :priority, CAST(:config AS jsonb), false, 0, 0, now(), now()
      FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
    RETURNING id, user_id, priority
)
INSERT INTO task_runs (id, task_id, user_id, trigger, status, priority, attempts, max_attempts,
                       timeout_ms, queued_at, cancel_requested, tokens_used, credits_used,
                       credits_reserved)
SELECT gen_random_uuid(), t.id, t.user_id, 'api', 'queued', t.priority, 0, CAST(:max_attempts AS int),
       CAST(:timeout_ms AS int), now(), false, 0, 0, 0
  FROM t
RETURNING id
"""


def insert_queued_runs(
    engine: Any,
    users: Sequence[BenchUser],
    count: int,
    *,
    priority: str = "medium",
    agent_type: str = "research_agent",
    timeout_ms: int = 300_000,
    max_retries: int = 3,
    batch: int = 10_000,
) -> list[uuid.UUID]:
    """`count` one-off tasks, each with one queued run (no message sent yet); the run ids."""
    import json

    from sqlalchemy import text

    run_ids: list[uuid.UUID] = []
    config = json.dumps({"timeout": timeout_ms, "maxRetries": max_retries})
    for first in range(1, count + 1, batch):
        last = min(count, first + batch - 1)
        with engine.begin() as conn:
            rows = conn.execute(
                text(_INSERT_QUEUED_RUNS),
                {
                    "user_ids": [u.user_id for u in users],
                    "user_count": len(users),
                    "agent_type": agent_type,
                    "priority": priority,
                    "config": config,
                    "first": first,
                    "last": last,
                    "max_attempts": 1 + max_retries,
                    "timeout_ms": timeout_ms,
                },
            ).all()
        run_ids.extend(row[0] for row in rows)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE tasks, task_runs, users")
        )
    return run_ids


def send_run_messages(engine: Any, run_ids: Sequence[uuid.UUID], priority: str, batch: int = 1_000) -> float:
    """Send each run's message the product's way (`actors.sending.send_dispatches`); seconds."""
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK
    from app.db import make_session_factory
    from app.services.dispatch import Dispatch

    session_factory = make_session_factory(engine)
    started = time.perf_counter()
    for start in range(0, len(run_ids), batch):
        chunk = [Dispatch(run_id, priority) for run_id in run_ids[start : start + batch]]
        send_dispatches(session_factory, chunk, SYSTEM_CLOCK)
    return time.perf_counter() - started


def run_status_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM task_runs GROUP BY status")).all()
    return {str(status): int(n) for status, n in rows}


def truncate_runs(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE credit_ledger, task_runs, tasks, api_keys, users CASCADE"))


# --- child processes ---------------------------------------------------------------------------


def log_directory(script: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"agentsched-bench-{script}-"))
    return path


@dataclass
class Child:
    """A process this script started, in a session of its own so it can be stopped with its children."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            self.argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process, then SIGKILL its process group if it has not exited in time."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace_s)
            # Its own session: the group id is its pid; this reaches only what it started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out, last started first."""
    started: list[Child] = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def dramatiq_worker(
    module: str, processes: int, threads: int, env: dict[str, str], log_path: Path, *extra: str
) -> Child:
    argv = [
        str(VENV_BIN / "dramatiq"),
        module,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        *extra,
    ]
    return Child(f"dramatiq {module}", argv, env, log_path)


def worker_pids(main_pid: int) -> list[int]:
    """The worker processes under a `dramatiq` main process (the forks that run actors)."""
    import psutil

    try:
        kids = psutil.Process(main_pid).children(recursive=False)
        return [kid.pid for kid in kids if "resource_tracker" not in " ".join(kid.cmdline())]
    except psutil.NoSuchProcess:
        return []


def rss_mb(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what or 'a condition'}")


def wait_for_port(port: int, timeout_s: float = 30.0, child: Child | None = None) -> None:
    def listening() -> bool:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if listening():
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def py_spy_path() -> str | None:
    """py-spy from PATH, else the throwaway venv /tmp/prof (never the project's venv)."""
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path("/tmp/prof/bin/py-spy")
    return str(candidate) if candidate.exists() else None


def summarize_collapsed_stacks(path: Path, top: int = 25, focus: Sequence[str] = ()) -> str:
    """A text profile from py-spy's `--format raw` output: inclusive share of interesting frames."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen: set[str] = set()
        for frame in frames:
            name = _frame_name(frame)
            if name not in seen:
                inclusive[name] = inclusive.get(name, 0) + count
                seen.add(name)
        leaf = _frame_name(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples"]
    if focus:
        lines.append("inclusive share of selected frames:")
        for name, count in sorted(inclusive.items(), key=lambda item: -item[1]):
            if any(key in name for key in focus):
                lines.append(f"  {100 * count / total:5.1f}%  {name}")
    lines.append(f"top {top} leaf frames (self time):")
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; drop the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    module = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in module:
            module = module.split(marker, 1)[1]
    return f"{name} ({module})"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def consumers_on_bench_redis() -> int:
    """Dramatiq consumers that sent a heartbeat to Redis db 12 (ours, plus any intruder's).

    Each worker process heartbeats under its own id; more ids than the processes we started means
    another program consumes our queues (a test suite pointed at db 12, say), which silently takes
    messages away and makes the figures meaningless.
    """
    client = redis_client()
    try:
        return int(client.zcard("dramatiq:__heartbeats__"))
    finally:
        client.close()


def lost_messages(statuses: dict[str, int]) -> str:
    """A warning when runs are still queued although Redis db 12 holds no message at all."""
    queued = statuses.get("queued", 0)
    if not queued:
        return ""
    client = redis_client()
    try:
        held = sum(
            int(client.llen(key)) if client.type(key) == b"list" else 0
            for key in client.scan_iter("dramatiq:*")
        ) + sum(int(client.scard(key)) for key in client.scan_iter("dramatiq:__acks__.*"))
    finally:
        client.close()
    if held:
        return ""
    return (
        f"WARNING: {queued} runs are still queued but Redis db 12 holds no message for them: "
        "something else consumed or deleted them (another program on db 12?); figures not valid"
    )


def start_py_spy(
    pids: Sequence[int], path: Path, seconds: int, *, idle: bool = False
) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of the first pid for `seconds`, as collapsed stacks in `path`."""
    spy = py_spy_path()
    if spy is None or not pids:
        print("  (no py-spy: `python -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy`)")
        return None
    argv = [
        spy,
        "record",
        "--pid",
        str(pids[0]),
        "--duration",
        str(seconds),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(path),
        "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    log = open(f"{path}.log", "wb")  # noqa: SIM115  (the child holds it until it exits)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def finish_py_spy(spy: subprocess.Popen[bytes], path: Path, seconds: int, focus: Sequence[str]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(seconds + 15)
    if spy.poll() is None:
        spy.terminate()
        spy.wait(5)
    if not path.exists():
        return f"(py-spy wrote nothing; see {path}.log)"
    return summarize_collapsed_stacks(path, focus=focus)


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


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def pg_backend_pids(engine: Any) -> list[int]:
    """The Postgres backends serving the benchmark database (not this query's own)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return [
            int(pid)
            for (pid,) in conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            )
        ]


def redis_server_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]


class CpuMeter:
    """CPU seconds used by groups of processes between `start()` and `stop()`.

    `groups()` is asked again at every `sample()`, so processes that start later (a pool's
    overflow connections, say) are counted from their start; one that exits between samples loses
    its CPU since the last sample.
    """

    def __init__(
        self,
        groups: Callable[[], dict[str, list[int]]],
        counters: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self._groups = groups
        self._counters = counters or (lambda: {})
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, tuple[str, float]] = {}
        self._counters_start: dict[str, float] = {}

    def start(self) -> None:
        self._latest = {}
        self.sample()
        self._baseline = {pid: cpu for pid, (_, cpu) in self._latest.items()}
        self._counters_start = self._counters()

    def sample(self) -> None:
        import psutil

        for name, pids in self._groups().items():
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = psutil.Process(pid).cpu_times()
                    self._latest[pid] = (name, times.user + times.system)

    def stop(self) -> dict[str, float]:
        self.sample()
        used: dict[str, float] = {}
        for pid, (name, cpu) in self._latest.items():
            used[name] = used.get(name, 0.0) + cpu - self._baseline.get(pid, 0.0)
        for name, value in self._counters().items():
            used[name] = value - self._counters_start.get(name, 0.0)
        return used


def exited_pg_backends_cpu() -> dict[str, float]:
    """CPU of Postgres backends that have exited (the postmaster's reaped children), all databases.

    Short-lived connections (a pool's overflow) are otherwise invisible to per-process sampling;
    on a shared server this includes other clients' connections.
    """
    import psutil

    for process in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if (
                process.info["name"] == "postgres"
                and psutil.Process(process.info["ppid"]).name() != "postgres"
            ):
                times = process.cpu_times()
                return {
                    "postgres backends that exited (all dbs)": times.children_user + times.children_system
                }
    return {}


def pg_sessions_opened() -> int:
    """Connections ever opened to the benchmark database (pg_stat_database.sessions, PG 14+)."""
    import psycopg

    from app.services.run_events import libpq_conninfo

    with psycopg.connect(libpq_conninfo(ADMIN_DATABASE_URL), autocommit=True) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (BENCH_DATABASE,)
        ).fetchone()
    return int(row[0]) if row else 0
