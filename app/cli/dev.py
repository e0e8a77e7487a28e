"""`agentsched dev`: the whole system on this machine, embedded Postgres and Redis if needed."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import make_url

from app.cli.servers import DevState, dev_state_path, remove_dev_state, write_dev_state
from app.db import make_engine, make_session_factory
from app.embedded import Services, ensure_services
from app.errors import ConfigurationError, NotFound
from app.logging import configure_logging
from app.migrate import PROJECT_ROOT, upgrade_to_head
from app.services.accounts import create_user, get_user_by_email
from app.services.keys import issue_key
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)

STATE_DIR_NAME = ".agentsched"
DEMO_KEY_NAME = "agentsched dev"
HEALTH_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
POLL_INTERVAL_S = 0.2
PR_SET_PDEATHSIG = 1


def run_dev(args: argparse.Namespace) -> int:
    """Start services, migrate, create the demo key, run API, worker and scheduler until stopped."""
    configure_logging()
    # Until the supervisor takes over, SIGTERM unwinds like Ctrl-C, stopping embedded services.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    port: int = args.port
    _check_port_free(port)
    configured = load_settings()
    with ensure_services(
        Path.cwd() / STATE_DIR_NAME, configured.database_url, configured.broker_url
    ) as services:
        settings = load_settings(database_url=services.database_url, redis_url=services.redis_url)
        log.info("migrating the database")
        upgrade_to_head(services.database_url)
        key = _issue_demo_key(settings, args.demo_email)
        supervisor = Supervisor(_child_env(services))
        state_path = dev_state_path()
        with supervisor.handling_signals():
            try:
                # From here on, other commands of this checkout use these servers.
                write_dev_state(
                    state_path,
                    DevState(
                        os.getpid(), services.database_url, services.redis_url, f"http://127.0.0.1:{port}"
                    ),
                )
                _start_children(supervisor, settings, port)
                if not _wait_until_healthy(supervisor, port):
                    return supervisor.exit_code()
                _print_banner(services, settings, supervisor, port, args.demo_email, key)
                supervisor.wait()
            finally:
                remove_dev_state(state_path)
                supervisor.stop_all()
        return supervisor.exit_code()


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does, so connections of a previous run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigurationError(
                f"port {port} on 127.0.0.1 is in use ({exc.strerror}); pass --port"
            ) from exc


def _issue_demo_key(settings: Settings, email: str) -> str:
    """Create the demo user (plan pro, admin) unless it exists, and issue it a fresh API key."""
    engine = make_engine(settings, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            try:
                user = get_user_by_email(session, email)
            except NotFound:
                user = create_user(session, email=email, plan="pro")
                log.info("created demo user %s (plan pro)", email)
            user.is_admin = True  # a local dev's only user sees the dashboard's operations page
            key = issue_key(session, user.id, DEMO_KEY_NAME).secret
            session.commit()
    finally:
        engine.dispose()
    return key


def _child_env(services: Services) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=services.database_url, REDIS_URL=services.redis_url, PYTHONUNBUFFERED="1")
    # Local receivers (a webhook to http://127.0.0.1:...) are what development needs.
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    return env


def _start_children(supervisor: Supervisor, settings: Settings, port: int) -> None:
    python = sys.executable
    dramatiq = str(Path(python).parent / "dramatiq")
    threads = str(settings.agent_worker_concurrency)
    supervisor.spawn(
        "api",
        [python, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
    )
    supervisor.spawn("worker", [dramatiq, "actors", "--processes", "1", "--threads", threads])
    if (PROJECT_ROOT / "scheduler" / "__main__.py").exists():
        supervisor.spawn("scheduler", [python, "-m", "scheduler"])
    else:
        log.warning("scheduler/__main__.py does not exist; not starting the scheduler")


def _wait_until_healthy(supervisor: Supervisor, port: int) -> bool:
    """Wait for GET /api/health to answer 200; False when stopped or a child died first."""
    url = f"http://127.0.0.1:{port}/api/health"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if supervisor.check():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read(500).decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    log.warning("%s did not answer 200 within %ds (%s); carrying on", url, HEALTH_TIMEOUT_S, last)
    return True


def _print_banner(
    services: Services,
    settings: Settings,
    supervisor: Supervisor,
    port: int,
    email: str,
    key: str,
) -> None:
    base = f"http://127.0.0.1:{port}"
    embedded = set(services.started)
    where = {True: "embedded, under ./" + STATE_DIR_NAME, False: "from the environment"}
    body = (
        '{"goal": "Check competitor pricing and send report", "agentType": "research_agent", "async": true}'
    )
    print(
        f"""
agentsched dev is running
  API        {base}   (OpenAPI: {base}/schema, health: {base}/api/health)
  Dashboard  {base}/dashboard   (sign in with the demo key below)
  Postgres   {_hide_password(services.database_url)}   ({where["Postgres" in embedded]})
  Redis      {services.redis_url}   ({where["Redis" in embedded]})
  processes  {", ".join(f"{c.name} (pid {c.process.pid})" for c in supervisor.children)}
  worker     {settings.agent_worker_concurrency} threads

Demo user {email} (plan pro). Its API key (shown once):
  export API_KEY={key}

Queue a run:
  curl -s -X POST {base}/api/agent/execute -H "Authorization: Bearer $API_KEY" \\
    -H 'Content-Type: application/json' -d '{body}'
Then look at it (runId from the answer):
  curl -s {base}/api/runs/<runId> -H "Authorization: Bearer $API_KEY"

In another shell of this checkout, `./run status`, `./run users create --email ...` and every
other command use these servers (they find them in ./{STATE_DIR_NAME}/dev.json).
Ctrl-C stops everything.
""",
        flush=True,
    )


def _hide_password(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if `agentsched dev` dies without stopping us."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    """Children in process groups of their own, so Ctrl-C reaches only us and we stop them."""

    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    signalled: int | None = None
    failed: Child | None = None

    def spawn(self, name: str, argv: list[str]) -> None:
        log.info("starting %s: %s", name, " ".join(argv))
        process = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_die_with_parent,  # safe: this process runs no other threads
        )
        self.children.append(Child(name, process))

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self.signalled is not None:  # a second Ctrl-C: no more patience
                for child in self.children:
                    _kill_group(child)
            self.signalled = signum

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self) -> bool:
        """Whether to stop: a signal came, or a child exited on its own (reported once)."""
        if self.failed is None:
            for child in self.children:
                if child.process.poll() is not None:
                    self.failed = child
                    log.error(
                        "%s exited unexpectedly with code %s; stopping everything",
                        child.name,
                        child.process.returncode,
                    )
                    break
        return self.failed is not None or self.signalled is not None

    def wait(self) -> None:
        while not self.check():
            time.sleep(POLL_INTERVAL_S)

    def stop_all(self) -> None:
        """SIGTERM every child still running, wait for them, SIGKILL the stragglers' groups."""
        running = [c for c in self.children if c.process.poll() is None]
        if running:
            log.info("stopping %s", ", ".join(c.name for c in running))
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %ds; killing it", child.name, STOP_TIMEOUT_S)
                _kill_group(child)
                child.process.wait()
        for child in self.children:
            _kill_group(child)  # leftovers of a child, e.g. dramatiq's worker processes

    def exit_code(self) -> int:
        return 1 if self.failed is not None else 0


def _kill_group(child: Child) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signal.SIGKILL)
