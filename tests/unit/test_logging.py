"""LOG_FORMAT: text by default, or one JSON object a line carrying the run id where there is one."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from app.errors import ConfigurationError
from app.logging import JsonFormatter, configure_logging, current_run_id, run_context
from app.settings import load_settings


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (handlers, their formatters, level)."""
    root = logging.getLogger()
    saved = [(handler, handler.formatter) for handler in root.handlers]
    level = root.level
    yield root
    for handler in [*root.handlers]:
        if handler not in dict(saved):
            root.removeHandler(handler)
    for handler, formatter in saved:
        handler.setFormatter(formatter)
    root.setLevel(level)


def _capture(root: logging.Logger, fmt: str) -> io.StringIO:
    stream = io.StringIO()
    root.addHandler(logging.StreamHandler(stream))
    configure_logging("DEBUG", fmt=fmt)
    return stream


def test_json_lines_carry_time_level_logger_message_and_the_run_id(root_logging):
    stream = _capture(root_logging, "json")
    log = logging.getLogger("agentsched.test")
    log.info("before %s", "the run")
    with run_context("6f1c2d3e-0000-4000-8000-000000000001"):
        log.warning("inside the run\nwith a second line")
    log.info("after")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # a newline in a message stays inside its JSON line
    first, inside, after = (json.loads(line) for line in lines)
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO"
    assert first["logger"] == "agentsched.test"
    assert first["message"] == "before the run"
    assert first["time"].endswith("Z")
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert inside["run_id"] == "6f1c2d3e-0000-4000-8000-000000000001"
    assert inside["message"] == "inside the run\nwith a second line"
    assert "run_id" not in after


def test_an_exception_is_part_of_its_json_line(root_logging):
    stream = _capture(root_logging, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("agentsched.test").exception("it failed")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exception"]
    assert "Traceback" in entry["exception"]


def test_the_run_id_belongs_to_its_thread():
    seen: list[str | None] = []
    with run_context("run-a"):
        thread = threading.Thread(target=lambda: seen.append(current_run_id()))
        thread.start()
        thread.join()
        assert current_run_id() == "run-a"
    assert seen == [None]
    assert current_run_id() is None


def test_json_replaces_the_format_of_handlers_a_server_installed(root_logging):
    # `dramatiq actors` and uvicorn configure logging before our code is imported.
    stream = io.StringIO()
    server_handler = logging.StreamHandler(stream)
    server_handler.setFormatter(logging.Formatter("[%(asctime)s] [PID %(process)d] %(message)s"))
    root_logging.addHandler(server_handler)
    uvicorn_stream = io.StringIO()
    uvicorn_handler = logging.StreamHandler(uvicorn_stream)
    uvicorn_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    uvicorn = logging.getLogger("uvicorn.error")
    # Other tests may have configured it (a level, or disabled by a dictConfig): as uvicorn would.
    saved = (uvicorn.level, uvicorn.disabled)
    uvicorn.setLevel(logging.INFO)
    uvicorn.disabled = False
    uvicorn.addHandler(uvicorn_handler)
    try:
        configure_logging("INFO", fmt="json")
        logging.getLogger("dramatiq.worker").info("worker ready")
        uvicorn.info("Started server process")
    finally:
        uvicorn.removeHandler(uvicorn_handler)
        uvicorn.setLevel(saved[0])
        uvicorn.disabled = saved[1]
    assert json.loads(stream.getvalue().splitlines()[0])["message"] == "worker ready"
    assert isinstance(server_handler.formatter, JsonFormatter)
    assert json.loads(uvicorn_stream.getvalue())["logger"] == "uvicorn.error"


def test_text_is_the_default_and_keeps_a_servers_own_format(root_logging, monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    stream = io.StringIO()
    server_handler = logging.StreamHandler(stream)
    server_format = logging.Formatter("SERVER %(message)s")
    server_handler.setFormatter(server_format)
    root_logging.addHandler(server_handler)
    configure_logging("INFO")
    logging.getLogger("agentsched.test").info("plain")
    assert stream.getvalue().splitlines()[-1] == "SERVER plain"
    assert server_handler.formatter is server_format


def test_log_format_and_level_are_checked_settings(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings()
    assert (settings.log_format, settings.log_level) == ("json", "DEBUG")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError, match="LOG_FORMAT"):
        load_settings()
    monkeypatch.setenv("LOG_FORMAT", "")  # empty counts as unset
    monkeypatch.setenv("LOG_LEVEL", "")
    assert load_settings().log_format == "text"
