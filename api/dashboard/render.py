"""Rendering: whole pages or htmx fragments of the same templates, and the template filters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie, State
from litestar.plugins.htmx import HTMXTemplate
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from app.agents.registry import agent_names
from app.models.enums import Priority, RunStatus, TaskStatus

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

#: Status -> CSS class; the status is always written out too (never colour alone).
STATUS_TONES = {
    "pending": "neutral",
    "queued": "info",
    "running": "info",
    "completed": "good",
    "failed": "bad",
    "cancelled": "muted",
    "skipped": "muted",
    "delivered": "good",
}


def utc_text(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_text(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def duration_text(ms: float | int | None) -> str:
    if ms is None:
        return "\u2013"
    if ms < 1000:
        return f"{round(ms)} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def number_text(value: int | float | None) -> str:
    return "\u2013" if value is None else f"{value:,}"


def _register(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.filters.update(
        utc=utc_text,
        iso=iso_text,
        duration=duration_text,
        number=number_text,
        tone=lambda status: STATUS_TONES.get(str(status), "neutral"),
    )
    env.globals.update(
        task_statuses=[s.value for s in TaskStatus],
        run_statuses=[s.value for s in RunStatus],
        priorities=[p.value for p in Priority],
        agent_types=agent_names(),
    )
    env.trim_blocks = True
    env.lstrip_blocks = True


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_register)


def is_fragment_request(request: Request[Any, Any, State], target: str) -> bool:
    """An htmx request that swaps the element `target` (not a boosted, whole-page one)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and htmx.target == target  # type: ignore[union-attr]


def page(
    name: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    cookies: list[Cookie] | None = None,
    push_url: str | None = None,
) -> Template:
    """A whole page (or a fragment template, by name); `push_url` updates the address bar for htmx."""
    if push_url is not None:
        return HTMXTemplate(
            template_name=name,
            context=dict(context),
            status_code=status_code,
            cookies=cookies,
            push_url=push_url,
        )
    return Template(template_name=name, context=dict(context), status_code=status_code, cookies=cookies)
