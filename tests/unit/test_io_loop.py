"""The process's I/O loop: one loop for every thread, a new one in a forked child."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from app import io_loop


async def _loop_and_thread() -> tuple[asyncio.AbstractEventLoop, str]:
    return asyncio.get_running_loop(), threading.current_thread().name


def test_every_thread_gets_its_result_from_the_same_loop_thread() -> None:
    seen: list[tuple[asyncio.AbstractEventLoop, str]] = []
    threads = [
        threading.Thread(target=lambda: seen.append(io_loop.run(_loop_and_thread()))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(seen) == 8
    assert {loop for loop, _ in seen} == {io_loop.io_loop()}
    assert {name for _, name in seen} == {"agentsched-io-loop"}


def test_an_error_comes_back_to_the_caller() -> None:
    async def fail() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        io_loop.run(fail())


def test_the_loop_cannot_wait_for_itself() -> None:
    async def nested() -> None:
        io_loop.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="from the I/O loop itself"):
        io_loop.run(nested())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_its_own_loop() -> None:
    parent_loop = io_loop.io_loop()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread did not survive the fork
        try:
            loop, name = io_loop.run(_loop_and_thread())
            ok = loop is not parent_loop and name == "agentsched-io-loop"
            os.write(writer, b"ok" if ok else b"same loop")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 64)
    os.waitpid(pid, 0)
    os.close(reader)
    assert answer == b"ok"
    assert io_loop.io_loop() is parent_loop
