"""py-spy profiles of a benchmark's processes, summarised as text."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def py_spy_path() -> str | None:
    """py-spy from PATH, else the throwaway venv /tmp/prof (never the project's venv)."""
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path("/tmp/prof/bin/py-spy")
    return str(candidate) if candidate.exists() else None


def start_py_spy(
    pids: Sequence[int], path: Path, seconds: int, *, idle: bool = False
) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of the first pid for `seconds`, as collapsed stacks in `path`."""
    spy = py_spy_path()
    if spy is None or not pids:
        print("  (no py-spy: `python -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy`)")
        return None
    argv = [
        spy,
        "record",
        "--pid",
        str(pids[0]),
        "--duration",
        str(seconds),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(path),
        "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    log = open(f"{path}.log", "wb")  # noqa: SIM115  (the child holds it until it exits)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def finish_py_spy(spy: subprocess.Popen[bytes], path: Path, seconds: int, focus: Sequence[str]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(seconds + 15)
    if spy.poll() is None:
        spy.terminate()
        spy.wait(5)
    if not path.exists():
        return f"(py-spy wrote nothing; see {path}.log)"
    return summarize_collapsed_stacks(path, focus=focus)


def summarize_collapsed_stacks(path: Path, top: int = 25, focus: Sequence[str] = ()) -> str:
    """A text profile from py-spy's `--format raw` output: inclusive share of interesting frames."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen: set[str] = set()
        for frame in frames:
            name = _frame_name(frame)
            if name not in seen:
                inclusive[name] = inclusive.get(name, 0) + count
                seen.add(name)
        leaf = _frame_name(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples"]
    if focus:
        lines.append("inclusive share of selected frames:")
        for name, count in sorted(inclusive.items(), key=lambda item: -item[1]):
            if any(key in name for key in focus):
                lines.append(f"  {100 * count / total:5.1f}%  {name}")
    lines.append(f"top {top} leaf frames (self time):")
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; drop the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    module = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in module:
            module = module.split(marker, 1)[1]
    return f"{name} ({module})"
