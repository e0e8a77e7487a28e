"""Embedded Postgres: pgserver's binaries, on a free 127.0.0.1 port, as a non-root user."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

from app.embedded.common import (
    LOCALHOST,
    PG_SUPERUSER,
    PG_SYSTEM_USER,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    EmbeddedServer,
    ServiceUnavailable,
    _package_dir,
    _tail,
    create_database,
    free_port,
    libpq_url,
    pid_alive,
    process_name,
    wait_for_exit,
)

log = logging.getLogger(__name__)


class EmbeddedPostgres(EmbeddedServer):
    """pgserver's Postgres 16 on 127.0.0.1:<free port>, data in `<directory>/data`."""

    name = "Postgres"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.install = _package_dir("pgserver") / "pginstall"
        self.data = self.directory / "data"
        self.logfile = self.directory / "postgres.log"

    def __str__(self) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@{LOCALHOST}:{self.port}"

    def url(self, database: str) -> str:
        return URL.create(
            "postgresql+psycopg", username=PG_SUPERUSER, host=LOCALHOST, port=self.port,
            database=database,
        ).render_as_string(hide_password=False)  # fmt: skip

    def create_database(self, name: str) -> None:
        create_database(libpq_url(self.url("postgres")), name)

    def _find_running(self) -> bool:
        info = self._postmaster_info()
        if info is None:
            return False
        pid, port, _ = info
        if not pid_alive(pid) or process_name(pid) != "postgres":
            log.info("removing the stale postmaster.pid of embedded Postgres (pid %s is gone)", pid)
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            return False
        self.pid, self.port = pid, port
        if self._answers():
            return True
        log.warning("embedded Postgres (pid %s) does not answer on %s; restarting it", pid, self)
        self._stop()
        return False

    def _postmaster_info(self) -> tuple[int, int, str] | None:
        """(pid, port, status) from postmaster.pid; port 0 when it does not listen on TCP."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        listening = len(lines) > 5 and lines[5].strip() == LOCALHOST
        status = lines[7].strip() if len(lines) > 7 else ""
        return pid, port if listening else 0, status

    def _answers(self) -> bool:
        """Whether our own cluster (not another one on that port) accepts connections."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.port and self.pid is not None and pid_alive(self.pid):
            try:
                with psycopg.connect(libpq_url(self.url("postgres")), connect_timeout=2) as conn:
                    row = conn.execute("SELECT current_setting('data_directory')").fetchone()
                return row is not None and Path(row[0]).resolve() == self.data
            except psycopg.OperationalError:
                info = self._postmaster_info()
                # A postmaster still starting (or recovering from a crash) is worth waiting for.
                if info is None or info[2] == "ready" or time.monotonic() > deadline:
                    return False
            time.sleep(0.2)
        return False

    def _start(self) -> None:
        self._prepare_system_user()
        if self.data.exists() and not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.data)  # an initdb that was interrupted
        if not self.data.exists():
            self._pg(
                "initdb", "-D", str(self.data), "--auth=trust", "--encoding=UTF8", "--locale=C",
                "-U", PG_SUPERUSER, "--no-instructions",
            )  # fmt: skip
        for attempt in range(3):
            port = self.port = free_port(self._saved_port() if attempt == 0 else None)
            options = f"-c listen_addresses={LOCALHOST} -p {port} -k '' -c max_connections=200"
            try:
                self._pg(
                    "pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w",
                    "-t", str(START_TIMEOUT_S), "-o", options,
                )  # fmt: skip
                break
            except ServiceUnavailable:
                # Another program may have taken the port between our check and the start.
                if "could not bind" not in _tail(self.logfile, 10) or attempt == 2:
                    raise
        self._save_port(port)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def _stop(self) -> None:
        try:
            wait = str(STOP_TIMEOUT_S)
            self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", wait)
        except ServiceUnavailable as exc:
            log.warning("pg_ctl stop failed, killing embedded Postgres: %s", exc.message)
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGQUIT)
        if self.pid is not None and not wait_for_exit(self.pid, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            wait_for_exit(self.pid, 5)

    def _pg(self, program: str, *args: str) -> None:
        """Run a Postgres program, as `pgserver` when we are root; raise with its output."""
        command = [str(self.install / "bin" / program), *args]
        # Files, not pipes: the postmaster that pg_ctl forks could keep a pipe open forever.
        with tempfile.TemporaryFile("w+") as output:
            user = self._system_user()
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self.directory, timeout=START_TIMEOUT_S + 30, check=False,
                user=user[0] if user else None, group=user[1] if user else None,
                extra_groups=[] if user else None,
            )  # fmt: skip
            if result.returncode != 0:
                output.seek(0)
                raise ServiceUnavailable(
                    f"{program} {' '.join(args[:1])} failed (exit {result.returncode}):\n"
                    f"{output.read().strip()}\n{_tail(self.logfile)}".rstrip()
                )

    def _system_user(self) -> tuple[int, int] | None:
        """(uid, gid) of `pgserver` when we are root (postgres refuses to run as root)."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def _prepare_system_user(self) -> None:
        """As root: create `pgserver`, give it the directory, let it reach the programs."""
        if os.geteuid() != 0:
            return
        if self._system_user() is None:
            log.info("creating system user %s to run embedded Postgres", PG_SYSTEM_USER)
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        user = self._system_user()
        assert user is not None
        os.chown(self.directory, *user)
        if self.data.exists():
            os.chown(self.data, *user)
        _allow_traversal(self.directory)
        _allow_traversal(self.install)
        _allow_reading(self.install)


def _allow_traversal(path: Path) -> None:
    """Add the search bit for others on every parent of `path` that lacks it."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log.info("allowing other users to traverse %s (for embedded Postgres)", parent)
            parent.chmod(mode | 0o001)


def _allow_reading(root: Path) -> None:
    """Make the Postgres installation readable (and its programs executable) by other users."""
    for directory, _, files in os.walk(root):
        for path in [Path(directory), *(Path(directory) / name for name in files)]:
            mode = path.stat().st_mode
            wanted = mode | 0o004 | (0o001 if path.is_dir() or mode & 0o100 else 0)
            if wanted != mode:
                path.chmod(wanted)
