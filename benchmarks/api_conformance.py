"""API conformance: `schemathesis run --checks all` over every operation of the live OpenAPI
document, with an API key and with the cron secret; prints schemathesis' own report.

Starts uvicorn (one process) and `dramatiq actors` on the benchmark database and Redis db, a
user with a key, and runs the schemathesis CLI with tests/support/schemathesis.toml (auth per
security scheme) and tests/support/schemathesis_hooks.py (cron and webhook-URL generation).
Exit status: schemathesis'. `.venv/bin/python -m benchmarks.api_conformance [--max-examples 100]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from benchmarks.common import (
    PROJECT_ROOT,
    VENV_BIN,
    Child,
    bench_environment,
    children,
    create_users,
    drop_database,
    exclusive_benchmark,
    flush_redis,
    free_port,
    log_directory,
    make_bench_engine,
    recreate_database,
    use_bench_environment,
    wait_for_port,
)

CRON_SECRET = "conformance-cron-secret"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with exclusive_benchmark("api_conformance"):
        overrides = {"CRON_SECRET": CRON_SECRET, "WEBHOOK_ALLOW_PRIVATE": "true"}
        use_bench_environment(**overrides)
        recreate_database()
        flush_redis()
        engine = make_bench_engine()
        [user] = create_users(engine)
        engine.dispose()
        logs = log_directory("api_conformance")
        port = free_port()
        env = bench_environment(**overrides)
        python = sys.executable
        try:
            with children() as started:
                api = Child(
                    "api",
                    [python, "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning"],
                    env,
                    logs / "api.log",
                ).start()
                started.append(api)
                worker = [python, "-m", "dramatiq", "actors", "--processes", "1", "--threads", "4"]
                started.append(Child("worker", worker, env, logs / "worker.log").start())
                wait_for_port(port, child=api)
                print(f"API on :{port}, logs in {logs}", flush=True)
                command = [
                    str(VENV_BIN / "schemathesis"),
                    "--config-file",
                    "tests/support/schemathesis.toml",
                    "run",
                    f"http://127.0.0.1:{port}/schema/openapi.json",
                    "--checks",
                    "all",
                    "--max-examples",
                    str(args.max_examples),
                    "--seed",
                    str(args.seed),
                    "--request-timeout",
                    "75",  # a waiting execute answers within min(timeout, 60 s)
                    "--wait-for-schema",
                    "60",
                ]
                print("$ " + " ".join(command), flush=True)
                schemathesis_env = {
                    **os.environ,
                    "AGENTSCHED_API_KEY": user.api_key,
                    "CRON_SECRET": CRON_SECRET,
                    "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
                }
                return subprocess.run(command, cwd=PROJECT_ROOT, env=schemathesis_env, check=False).returncode
        finally:
            drop_database()


if __name__ == "__main__":
    raise SystemExit(main())
