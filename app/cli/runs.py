"""`agentsched runs show ID`: a run and its steps, in a terminal."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from app.db import make_engine, make_session_factory
from app.errors import InvalidInput, NotFound
from app.models import RunStep, TaskRun
from app.services.run_steps import list_steps
from app.settings import get_settings

#: Characters of each step's output shown (the API has them whole).
OUTPUT_CHARS = 300


def add_parser(commands: Any) -> None:
    group = commands.add_parser("runs", help="runs").add_subparsers(dest="action", required=True)
    group.add_parser("show", help="a run and its steps").add_argument("id", help="the run's id")


def run(args: argparse.Namespace) -> int:
    run_id = _run_id(args.id)
    engine = make_engine(get_settings(), pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            found = session.get(TaskRun, run_id)
            if found is None:
                raise NotFound(f"no run {run_id}")
            print(format_run(found, list(list_steps(session, run_id))))
    finally:
        engine.dispose()
    return 0


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput({"id": f"not a run id (a UUID): {text!r}"}) from None


def format_run(run: TaskRun, steps: list[RunStep]) -> str:
    """The run's head line, tokens, outcome, then one block per step."""
    lines = [
        f"run {run.id}  {run.status}  attempt {run.attempts}/{run.max_attempts}  task {run.task_id}",
        f"tokens {run.tokens_used} (prompt {run.prompt_tokens}, cached {run.cached_tokens}, "
        f"completion {run.completion_tokens})  credits {run.credits_used}  steps {run.step_count}",
    ]
    if run.error:
        lines.append(f"error: {run.error.get('code')}: {run.error.get('message')}")
    lines.append("")
    if not steps:
        lines.append("no steps yet")
    for step in steps:
        latency = f"{step.latency_ms} ms" if step.latency_ms is not None else "-"
        estimated = " (estimated)" if step.usage_estimated else ""
        lines.append(
            f"[{step.index}] {step.kind:5}  {step.status:9}  attempt {step.attempt}  {latency:>9}  "
            f"tokens {step.prompt_tokens}+{step.completion_tokens}{estimated}  {step.title}"
        )
        if step.error:
            lines.append(f"      error: {step.error.get('code')}: {step.error.get('message')}")
        output = " ".join((step.output or "").split())
        if output:
            cut = output if len(output) <= OUTPUT_CHARS else output[: OUTPUT_CHARS - 1] + "…"
            lines.append(f"      {cut}")
    return "\n".join(lines)
