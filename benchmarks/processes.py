"""Child processes a benchmark starts (servers, Dramatiq workers), stopped on the way out, and
waiting for them: ports, pids, memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.environment import PROJECT_ROOT, STOP_GRACE_S, VENV_BIN


def log_directory(script: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"agentsched-bench-{script}-"))
    return path


@dataclass
class Child:
    """A process this script started, in a session of its own so it can be stopped with its children."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            self.argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process, then SIGKILL its process group if it has not exited in time."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace_s)
            # Its own session: the group id is its pid; this reaches only what it started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out, last started first."""
    started: list[Child] = []
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def dramatiq_worker(
    module: str, processes: int, threads: int, env: dict[str, str], log_path: Path, *extra: str
) -> Child:
    argv = [
        str(VENV_BIN / "dramatiq"),
        module,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        *extra,
    ]
    return Child(f"dramatiq {module}", argv, env, log_path)


def worker_pids(main_pid: int) -> list[int]:
    """The worker processes under a `dramatiq` main process (the forks that run actors)."""
    import psutil

    try:
        kids = psutil.Process(main_pid).children(recursive=False)
        return [kid.pid for kid in kids if "resource_tracker" not in " ".join(kid.cmdline())]
    except psutil.NoSuchProcess:
        return []


def rss_mb(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what or 'a condition'}")


def wait_for_port(port: int, timeout_s: float = 30.0, child: Child | None = None) -> None:
    def listening() -> bool:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if listening():
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")
