"""Helpers for the durable-steps tests: which model call a stub request was."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any


def call_kind(body: dict[str, Any]) -> str:
    """`plan`, `step<N>` or `final`, from the last user message of a chat request."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = str(messages[-1].get("content") or "") if messages else ""
    if "JSON array" in last:
        return "plan"
    step = re.search(r"Now do step (\d+) of", last)
    if step:
        return f"step{step.group(1)}"
    if "Write the final result" in last:
        return "final"
    return "other"


def call_counts(requests: list[dict[str, Any]]) -> Counter[str]:
    return Counter(call_kind(body) for body in requests)


def queue_run(session_factory: Any, user_id: Any, payload: dict[str, Any], *, send: bool = True) -> Any:
    """Create a task and its queued run as POST /api/agent/execute does; the run id.

    The run's message is sent when `send` (a worker then executes it).
    """
    from actors.sending import send_messages
    from app.clock import SYSTEM_CLOCK
    from app.services.task_input import parse_execute_request
    from app.services.tasks import create_task

    request = parse_execute_request(payload, default_timezone="UTC")
    with session_factory.begin() as session:
        created = create_task(session, user_id, request, SYSTEM_CLOCK.now())
    if send:
        send_messages(created.dispatches)
    return created.run_id
