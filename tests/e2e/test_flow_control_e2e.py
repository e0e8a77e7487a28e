"""Flow control across real worker processes: a user's concurrency cap, one provider budget."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import text

from app.services import concurrency
from tests.e2e.conftest import Spawn, wait_until
from tests.support.openai_stub import OpenAIStub, most_within

pytestmark = pytest.mark.e2e

RUN = {"goal": "Summarise the week", "agentType": "writer_agent", "async": True}


def queue_runs(api: httpx.Client, account, count: int) -> list[uuid.UUID]:
    return [
        uuid.UUID(api.post("/api/agent/execute", json=RUN, headers=account.headers).json()["runId"])
        for _ in range(count)
    ]


def stub_env(stub: OpenAIStub, **more: str) -> dict[str, str]:
    return {"LLM_PROVIDER": "openai", "LLM_BASE_URL": stub.base_url, "LLM_API_KEY": "x", **more}


def start_two_workers(spawn: Spawn, env: dict[str, str], threads: int):
    return spawn("worker", "-m", "dramatiq", "actors", "--processes", "2", "--threads", str(threads), env=env)


def wait_for_completed(session_factory, run_ids: list[uuid.UUID], worker, timeout_s: float) -> None:
    """Until every run is completed, read in Postgres (polling the API would meet its rate limit)."""

    def all_done() -> bool:
        assert worker.popen.poll() is None, worker.log()[-4000:]
        with session_factory() as session:
            finished = session.scalar(
                text("SELECT count(*) FROM task_runs WHERE id = ANY(:ids) AND status = 'completed'"),
                {"ids": run_ids},
            )
        return finished == len(run_ids)

    wait_until(
        all_done,
        timeout_s=timeout_s,
        what=f"all {len(run_ids)} runs completing",
        logs=lambda: worker.log()[-4000:],
    )


def test_a_limit_of_2_holds_across_two_worker_processes_of_16_threads(
    api: httpx.Client, spawn: Spawn, make_account, session_factory
):
    account = make_account()
    with session_factory.begin() as session:
        concurrency.set_limit(session, account.user_id, 50)
    run_ids = queue_runs(api, account, 50)
    with session_factory.begin() as session:  # every message is in Redis: 32 threads race for them
        concurrency.set_limit(session, account.user_id, 2)
    with OpenAIStub() as stub:
        stub.delay(0.03)
        env = stub_env(stub)
        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with session_factory() as session:
                    running = session.scalar(
                        text("SELECT count(*) FROM task_runs WHERE user_id = :u AND status = 'running'"),
                        {"u": account.user_id},
                    )
                peak[0] = max(peak[0], int(running or 0))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        worker = start_two_workers(spawn, env, threads=16)

        try:
            wait_for_completed(session_factory, run_ids, worker, timeout_s=240)
        finally:
            stop.set()
            sampler.join(5)
    assert peak[0] == 2
    with session_factory() as session:
        attempts = session.scalar(
            text("SELECT max(attempts) FROM task_runs WHERE id = ANY(:ids)"),
            {"ids": run_ids},
        )
    assert attempts == 1


def test_two_worker_processes_share_one_llm_rpm_budget(
    api: httpx.Client, spawn: Spawn, make_account, session_factory
):
    account = make_account(plan="enterprise")
    run_ids = queue_runs(api, account, 10)
    with OpenAIStub() as stub:
        env = stub_env(stub, LLM_RPM="300")
        worker = start_two_workers(spawn, env, threads=4)
        wait_for_completed(session_factory, run_ids, worker, timeout_s=180)
        times = sorted(stub.request_times)
    assert len(times) == 40
    # 300 a minute is 5 a second, the bucket holds 2.5: never faster, whatever the load.
    assert most_within(times, 4.0) <= 4 * 5 + 3
    assert times[-1] - times[0] >= (40 - 3) / 5


def test_two_worker_processes_share_one_llm_tpm_budget(
    api: httpx.Client, spawn: Spawn, make_account, session_factory
):
    account = make_account(plan="enterprise")
    run_ids = queue_runs(api, account, 8)
    with OpenAIStub() as stub:
        stub.reply_with(prompt_tokens=400, completion_tokens=400)  # 800 tokens a call, as reported
        tpm = 96_000  # 1,600 tokens a second: two calls a second at most
        env = stub_env(stub, LLM_TPM=str(tpm))
        worker = start_two_workers(spawn, env, threads=4)
        wait_for_completed(session_factory, run_ids, worker, timeout_s=180)
        times = sorted(stub.request_times)
    assert len(times) == 32
    # Tokens the stub reported in any 4 s window: at most 4 s of budget plus the bucket (0.5 s)
    # plus one call's worth charged ahead (max_tokens up front, corrected after).
    assert most_within(times, 4.0) * 800 <= 4 * tpm / 60 + tpm / 120 + 2 * 1024
    assert times[-1] - times[0] >= (32 * 800 - tpm / 120 - 2 * 1024) / (tpm / 60)
