"""LOG_FORMAT=json: every line of the API, the worker, the scheduler and the CLI is one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, Spawn, free_port, wait_until

pytestmark = pytest.mark.e2e

JSON_LOGS = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
#: The worker at DEBUG: a completed run logs its end there, with its id.
DEBUG_JSON_LOGS = {**JSON_LOGS, "LOG_LEVEL": "DEBUG"}
KEYS = {"time", "level", "logger", "message"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON; fails naming the first line that is not."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole output\n{text[-4000:]}")
        assert isinstance(entry, dict), line
        assert set(entry) >= KEYS, line
        entries.append(entry)
    return entries


def test_every_process_logs_json_lines_and_a_runs_lines_carry_its_id(spawn: Spawn, make_account):
    account = make_account()
    port = free_port()
    api_process = spawn("api", "-m", "uvicorn", "api.app:app", "--port", str(port), env=JSON_LOGS)
    # --skip-logging: dramatiq's own parent process would print its few lines in its text format.
    worker = spawn(
        "worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", "--skip-logging",
        env=DEBUG_JSON_LOGS,
    )  # fmt: skip
    scheduler = spawn("scheduler", "-m", "scheduler", env={**JSON_LOGS, "SCHEDULER_POLL_INTERVAL": "1"})

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in (api_process, worker, scheduler))

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:

        def healthy() -> bool:
            try:
                return api.get("/api/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout_s=30, what="API start", logs=logs)
        wait_until(lambda: "worker starting" in worker.log(), timeout_s=30, what="worker boot", logs=logs)
        answer = api.post(
            "/api/agent/execute",
            json={"goal": "Log as JSON", "agentType": "writer_agent", "agentConfig": {"timeout": 30000}},
            headers=account.headers,
        )
        assert answer.status_code == 200, answer.text
        run_id = answer.json()["runId"]
        assert answer.json()["status"] == "completed"
        assert api.get("/api/tasks/not-a-uuid", headers=account.headers).status_code in (400, 404)
    wait_until(lambda: "scheduling pass" in scheduler.log() or "starting" in scheduler.log(),
               timeout_s=30, what="scheduler start", logs=logs)  # fmt: skip

    for process in (scheduler, worker):
        assert process.stop() == 0, f"{process.name} exit\n{logs()}"
    api_process.stop()  # uvicorn re-raises SIGTERM once it has shut down cleanly

    worker_lines = json_lines(worker.log())
    assert any(entry.get("run_id") == run_id for entry in worker_lines), worker.log()
    assert all(entry.get("run_id") in (None, run_id) for entry in worker_lines)
    assert any(entry["logger"].startswith("dramatiq") for entry in worker_lines)
    scheduler_lines = json_lines(scheduler.log())
    assert any(entry["logger"] == "scheduler" for entry in scheduler_lines)
    api_lines = json_lines(api_process.log())
    assert any(entry["logger"].startswith("uvicorn") for entry in api_lines), api_process.log()

    cli = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env={**os.environ, **JSON_LOGS},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    # The CLI's own messages to its user ("agentsched: using Postgres ...") are not log lines.
    logged = "\n".join(line for line in cli.stderr.splitlines() if not line.startswith("agentsched: "))
    assert json_lines(logged), cli.stderr  # alembic's lines, as JSON
