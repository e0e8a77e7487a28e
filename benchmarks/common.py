"""What the benchmark scripts share, in one import: each concept lives in a module of its own.

`benchmarks.environment` (the benchmarks' database and Redis db, their processes' environment, the
one-at-a-time lock), `benchmarks.stores` (rebuilding and inspecting them), `benchmarks.seeding`
(users and queued runs), `benchmarks.processes` (child processes), `benchmarks.profiling` (py-spy)
and `benchmarks.measuring` (percentiles and CPU). This module re-exports their public names.

Every script uses the database `agentsched_bench_runs` (dropped and rebuilt with the migrations)
and Redis db 12 (flushed at start), never anything else, and stops every process it started.
Call `use_bench_environment()` before importing `actors`: the broker binds to settings at import.
"""

from benchmarks.environment import (
    ADMIN_DATABASE_URL,
    BENCH_CREDITS,
    BENCH_DATABASE,
    DATABASE_URL,
    PG_SERVER,
    PROJECT_ROOT,
    REDIS_DB,
    REDIS_URL,
    STOP_GRACE_S,
    VENV_BIN,
    bench_environment,
    exclusive_benchmark,
    use_bench_environment,
)
from benchmarks.measuring import (
    CpuMeter,
    cpu_seconds,
    exited_pg_backends_cpu,
    machine_note,
    median,
    percentile,
    pg_backend_pids,
    redis_server_pids,
)
from benchmarks.processes import (
    Child,
    children,
    dramatiq_worker,
    free_port,
    log_directory,
    peak_rss_mb,
    rss_mb,
    wait_for_port,
    wait_until,
    worker_pids,
)
from benchmarks.profiling import finish_py_spy, py_spy_path, start_py_spy, summarize_collapsed_stacks
from benchmarks.seeding import (
    BenchUser,
    create_users,
    insert_queued_runs,
    run_status_counts,
    send_run_messages,
    truncate_runs,
)
from benchmarks.stores import (
    bench_connections,
    consumers_on_bench_redis,
    drop_database,
    flush_redis,
    lost_messages,
    make_bench_engine,
    pg_connections_in_use,
    pg_sessions_opened,
    pg_setting,
    recreate_database,
    redis_client,
)

__all__ = [
    "ADMIN_DATABASE_URL",
    "BENCH_CREDITS",
    "BENCH_DATABASE",
    "DATABASE_URL",
    "PG_SERVER",
    "PROJECT_ROOT",
    "REDIS_DB",
    "REDIS_URL",
    "STOP_GRACE_S",
    "VENV_BIN",
    "BenchUser",
    "Child",
    "CpuMeter",
    "bench_connections",
    "bench_environment",
    "children",
    "consumers_on_bench_redis",
    "cpu_seconds",
    "create_users",
    "dramatiq_worker",
    "drop_database",
    "exclusive_benchmark",
    "exited_pg_backends_cpu",
    "finish_py_spy",
    "flush_redis",
    "free_port",
    "insert_queued_runs",
    "log_directory",
    "lost_messages",
    "machine_note",
    "make_bench_engine",
    "median",
    "peak_rss_mb",
    "percentile",
    "pg_backend_pids",
    "pg_connections_in_use",
    "pg_sessions_opened",
    "pg_setting",
    "py_spy_path",
    "recreate_database",
    "redis_client",
    "redis_server_pids",
    "rss_mb",
    "run_status_counts",
    "send_run_messages",
    "start_py_spy",
    "summarize_collapsed_stacks",
    "truncate_runs",
    "use_bench_environment",
    "wait_for_port",
    "wait_until",
    "worker_pids",
]
