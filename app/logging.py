"""Logging, configured once per entry point: text (default) or one JSON object a line.

``LOG_FORMAT=json`` makes every line of every process (API, worker, scheduler, CLI) a JSON
object: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``run_id`` while a run
is being executed (see :func:`run_context`), ``exception`` with the traceback when there is one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(threadName)s] %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
#: Loggers that servers give handlers of their own (uvicorn); their lines follow LOG_FORMAT too.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentsched_run_id", default=None)


@contextlib.contextmanager
def run_context(run_id: object) -> Iterator[None]:
    """Every log line written in this context (this thread or task) carries `run_id`."""
    token = _run_id.set(str(run_id))
    try:
        yield
    finally:
        _run_id.reset(token)


def current_run_id() -> str | None:
    return _run_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, run_id (when set), exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None) or _run_id.get()
        if run_id:
            entry["run_id"] = str(run_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format() -> str:
    """LOG_FORMAT from the environment (or `.env`, through the settings); `text` by default."""
    value = os.environ.get("LOG_FORMAT")
    if not value:
        from app.errors import ConfigurationError
        from app.settings import load_settings

        try:  # not get_settings(): its cache must not outlive an entry point's own changes
            value = load_settings().log_format
        except ConfigurationError:  # the entry point reports it; log in the default format
            value = "text"
    return value.strip().lower() if value.strip().lower() in LOG_FORMATS else "text"


def make_formatter(fmt: str | None = None) -> logging.Formatter:
    return JsonFormatter() if (fmt or log_format()) == "json" else logging.Formatter(LOG_FORMAT)


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Root logging at LOG_LEVEL (INFO) in LOG_FORMAT; handlers already there get the format too.

    A process whose server configured logging first (the `dramatiq` CLI's worker processes,
    uvicorn) keeps its handlers and streams, with our formatter.
    """
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    name = (level or os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    # An unknown level is the settings' to report (naming LOG_LEVEL); log at INFO until then.
    root.setLevel(name if name in logging.getLevelNamesMapping() else "INFO")
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    handlers = [*root.handlers]
    for name in SERVER_LOGGERS:
        handlers.extend(logging.getLogger(name).handlers)
    for handler in handlers:
        # JSON everywhere; text keeps the format a server chose for its own handlers.
        if isinstance(formatter, JsonFormatter) or handler.formatter is None:
            handler.setFormatter(formatter)
