"""Which Postgres and Redis a command uses: a live `agentsched dev`'s, else the configured ones.

`agentsched dev` writes `.agentsched/dev.json` (its pid, the URLs it uses, the API's address)
once its servers are up and removes it when it stops. Any other command run in that checkout
reads it and uses the same servers, so `./run users create ...` in a second shell reaches the
embedded Postgres that `./run dev` started. A state file whose dev process is gone, or whose
servers do not answer, is ignored (and removed when its process is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
import redis
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from app.embedded.common import pid_alive, tcp_reachable
from app.embedded.redis_server import _hide_redis_password
from app.migrate import PROJECT_ROOT
from app.settings import get_settings, load_settings

STATE_DIR_NAME = ".agentsched"
DEV_STATE_FILE_NAME = "dev.json"
#: Names the one state file to consider (instead of searching for one).
DEV_STATE_VARIABLE = "AGENTSCHED_DEV_STATE"
#: What a command meets when a server does not answer: one line for the user, not a traceback.
UNREACHABLE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
)
#: How long a command waits for a TCP answer from a dev server before ignoring the state file.
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class DevState:
    """What a running `agentsched dev` tells the other commands of its checkout."""

    pid: int
    database_url: str
    redis_url: str
    api_url: str


@dataclass(frozen=True)
class ServerChoice:
    """The URLs a command uses and, for messages, where they came from and what else was tried."""

    database_url: str
    redis_url: str
    source: str
    tried: str

    def describe(self) -> str:
        database, broker = hide_database_password(self.database_url), _hide_redis_password(self.redis_url)
        return f"Postgres {database}, Redis {broker}"


def hide_database_password(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


def dev_state_path(directory: Path | None = None) -> Path:
    """Where `agentsched dev` started in `directory` (default: the working directory) writes its state."""
    return (directory or Path.cwd()) / STATE_DIR_NAME / DEV_STATE_FILE_NAME


def write_dev_state(path: Path, state: DevState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(state), indent=2) + "\n")
    temporary.chmod(0o600)  # a database URL may carry a password
    temporary.replace(path)


def remove_dev_state(path: Path) -> None:
    """Remove the state file if it is this process's (a second dev's file is not ours to remove)."""
    state = _read(path)
    if state is not None and state.pid == os.getpid():
        path.unlink(missing_ok=True)


def _read(path: Path) -> DevState | None:
    try:
        data = json.loads(path.read_text())
        return DevState(
            pid=int(data["pid"]),
            database_url=str(data["database_url"]),
            redis_url=str(data["redis_url"]),
            api_url=str(data.get("api_url", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _candidate_paths() -> list[Path]:
    """AGENTSCHED_DEV_STATE if set; else in the working directory and its parents, then in the
    checkout this package was installed from."""
    if os.environ.get(DEV_STATE_VARIABLE):
        return [Path(os.environ[DEV_STATE_VARIABLE])]
    cwd = Path.cwd().resolve()
    paths = [dev_state_path(directory) for directory in (cwd, *cwd.parents)]
    own = dev_state_path(PROJECT_ROOT)
    return paths if own in paths else [*paths, own]


def find_live_dev_state() -> tuple[DevState | None, str]:
    """The state of a live `agentsched dev` of this checkout, and a note on what was looked at."""
    notes: list[str] = []
    for path in _candidate_paths():
        if not path.exists():
            continue
        state = _read(path)
        if state is None:
            notes.append(f"{path} is unreadable")
            continue
        if not pid_alive(state.pid):
            notes.append(f"{path} is stale (dev pid {state.pid} is gone)")
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        dead = _unreachable(state)
        if dead:
            notes.append(f"{path}: dev pid {state.pid} runs but its {dead} does not answer")
            continue
        return state, str(path)
    where = notes[0] if notes else f"no {STATE_DIR_NAME}/{DEV_STATE_FILE_NAME} of a running dev"
    return None, where


def _unreachable(state: DevState) -> str:
    database = make_url(state.database_url)
    if database.host and not tcp_reachable(database.host, database.port or 5432, PROBE_TIMEOUT_S):
        return f"Postgres ({database.host}:{database.port or 5432})"
    kwargs = redis.ConnectionPool.from_url(state.redis_url).connection_kwargs
    host, port = kwargs.get("host"), kwargs.get("port")
    if host and port and not tcp_reachable(str(host), int(port), PROBE_TIMEOUT_S):
        return f"Redis ({host}:{port})"
    return ""


def choose_servers() -> ServerChoice:
    """A live dev's servers when there is one, else DATABASE_URL / REDIS_URL (or their defaults)."""
    state, where = find_live_dev_state()
    if state is not None:
        return ServerChoice(
            database_url=state.database_url,
            redis_url=state.redis_url,
            source=f"the running `agentsched dev` (pid {state.pid}, {where})",
            tried=f"the servers of the running `agentsched dev` in {where}",
        )
    settings = load_settings()
    configured = [name for name in ("DATABASE_URL", "REDIS_URL") if os.environ.get(name)]
    source = "the environment" if configured else "the configuration (.env or the defaults)"
    return ServerChoice(
        database_url=settings.database_url,
        redis_url=settings.broker_url,
        source=f"{source}; {where}",
        tried=f"{source} ({where})",
    )


def use_servers() -> ServerChoice:
    """Point this process (and what it starts) at the chosen servers and say so on stderr."""
    choice = choose_servers()
    os.environ["DATABASE_URL"] = choice.database_url
    os.environ["REDIS_URL"] = choice.redis_url
    get_settings.cache_clear()
    print(f"agentsched: using {choice.describe()} (from {choice.source})", file=sys.stderr)
    return choice


def reached_nothing(choice: ServerChoice, exc: BaseException) -> str:
    """One line: which server did not answer, where it was, what was tried, what to do."""
    if isinstance(exc, redis.RedisError):
        what, url, variable = "Redis", _hide_redis_password(choice.redis_url), "REDIS_URL"
    else:
        what, url, variable = "Postgres", hide_database_password(choice.database_url), "DATABASE_URL"
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = lines[0] if lines else type(cause).__name__
    return (
        f"cannot reach {what} at {url} ({reason}); tried {choice.tried}. "
        f"Start `./run dev` in this checkout, or set {variable}"
    )
