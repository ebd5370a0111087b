"""Checks around the real ``twistd signaling`` run by :mod:`bench.twistd`."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from bench.twistd import STARTUP_TIMEOUT, run_once


def assert_serves(port: int) -> None:
    """Two clients connect to ``port`` and meet in a room."""
    with (
        connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=5) as a,
        connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=5) as b,
    ):
        assert '"notify-client-id"' in a.recv(5)
        assert '"notify-client-id"' in b.recv(5)
        a.send('{"type": "join", "payload": {"room_id": "r"}}')
        assert '"joined"' in a.recv(5)
        b.send('{"type": "join", "payload": {"room_id": "r"}}')
        assert '"joined"' in b.recv(5)
        assert '"new-client"' in a.recv(5)


def usage_error(cwd: Path, *args: str, **kwargs: Any) -> str:
    """Run twistd expecting a start-up usage error; return its output."""
    result = run_once(cwd, *args, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    return output


def get_healthz(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """The status and body of ``GET /healthz`` over ``sock`` (closed after)."""
    with sock:
        sock.settimeout(timeout)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_unix_listening(path: Path, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until a unix socket accepts connections (its file appears at
    bind, a moment before it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)
