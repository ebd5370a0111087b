"""Redis servers for tests: the shared one on 127.0.0.1:6379 (each test under
a key prefix of its own, removed after), and private ``redis-server``
processes on free ports that a test can stop and restart."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conftest import wait_for
from .tools import missing, require_program
from .twistd_process import free_port

SHARED = ("127.0.0.1", 6379)
SHARED_URL = f"redis://{SHARED[0]}:{SHARED[1]}/0"
TIMEOUT = 5.0


def answers(host: str, port: int) -> bool:
    """Whether something on host:port answers a RESP PING."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def redis_command(port: int, *args: str) -> Any:
    """One command's reply from the Redis on 127.0.0.1:``port``."""
    import hiredis

    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(hiredis.pack_command(args))
        while (reply := reader.gets()) is False:
            reader.feed(sock.recv(65536))
    return reply


def redis_keys(prefix: str, port: int = SHARED[1]) -> list[str]:
    """The keys under ``prefix`` (database 0)."""
    return sorted(key.decode() for key in redis_command(port, "KEYS", prefix + "*"))


def require_shared() -> None:
    """Skip (fail under CI) unless the shared Redis answers."""
    if not answers(*SHARED):
        missing(f"no Redis answers on {SHARED[0]}:{SHARED[1]}: apt-get install redis-server")


@contextlib.contextmanager
def shared_prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis; its keys (databases 0 and 7)
    are deleted at the end."""
    require_shared()
    name = f"signaling-test:{uuid.uuid4().hex}:"
    try:
        yield name
    finally:
        forget_prefix(name)


def forget_prefix(name: str) -> None:
    import hiredis

    forget = (
        "for _, key in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', key) end"
    )
    reader = hiredis.Reader()
    with socket.create_connection(SHARED, timeout=TIMEOUT) as sock:
        for db in (0, 7):
            sock.sendall(hiredis.pack_command(("SELECT", db)))
            sock.sendall(hiredis.pack_command(("EVAL", forget, 0, name)))
        replies: list[Any] = []
        while len(replies) < 4:
            reader.feed(sock.recv(4096))
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    assert not [reply for reply in replies if isinstance(reply, Exception)], replies


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, keeping nothing on disk."""

    def __init__(self, directory: Path, *options: str, tls: bool = False) -> None:
        self.program = require_program("redis-server", "redis-server")
        self.directory = directory
        self.options = options
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ports = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        keep_nothing = ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            [self.program, *ports, "--bind", "127.0.0.1", *keep_nothing, *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        assert wait_for(listening, TIMEOUT), "redis-server did not start"

    def stop(self) -> None:
        """Kill it, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(TIMEOUT)
            self.process = None

    def url(self, credentials: str = "", db: int = 0) -> str:
        scheme = "rediss://localhost" if self.tls else "redis://127.0.0.1"
        at = f"{credentials}@" if credentials else ""
        return f"{scheme.replace('://', '://' + at)}:{self.port}/{db}"
