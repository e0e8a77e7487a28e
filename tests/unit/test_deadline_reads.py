"""The deadline transport reads a plain socket itself (no `settimeout` per read), mapped as httpcore maps."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import httpcore
import httpcore._backends.sync as httpcore_sync
import pytest

from app.providers.deadline_http import _DeadlineStream, call_deadline


@pytest.fixture
def pair() -> Iterator[tuple[_DeadlineStream, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # TCP: a reset must be possible
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    stream = _DeadlineStream(httpcore_sync.SyncStream(ours))
    yield stream, theirs
    ours.close()
    theirs.close()


def test_reads_come_straight_from_the_socket_and_keep_its_timeout(
    pair: tuple[_DeadlineStream, socket.socket],
) -> None:
    stream, theirs = pair
    theirs.sendall(b"data: one\n\n")
    assert stream.read(1024, timeout=30) == b"data: one\n\n"
    theirs.sendall(b"data: two\n\n")
    assert stream.read(1024, timeout=30) == b"data: two\n\n"
    assert stream._sock is not None
    assert stream._sock.gettimeout() == 1.0  # STOP_POLL_S, set once, not before every read


def test_a_read_past_the_deadline_is_a_read_timeout(pair: tuple[_DeadlineStream, socket.socket]) -> None:
    stream, _ = pair
    started = time.monotonic()
    with call_deadline(time.monotonic() + 0.3), pytest.raises(httpcore.ReadTimeout):
        stream.read(1024, timeout=30)
    assert 0.25 < time.monotonic() - started < 1.5


def test_a_reset_connection_is_a_read_error(pair: tuple[_DeadlineStream, socket.socket]) -> None:
    stream, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.sendall(b"x")
    stream.read(1, timeout=30)
    theirs.close()  # linger 0: an RST, not a FIN
    time.sleep(0.05)
    with pytest.raises(httpcore.ReadError):
        stream.read(1024, timeout=30)
