"""The real server as a measurement needs it: limits out of the way,
pinned to its own core, its CPU time and memory at hand."""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .twistd import ServerProcess, twistd_argv
from .wsclient import HOST

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVER_CORE = 0
GENERATOR_CORE = 1

#: Limits switched high (but on) so that they never decide a measurement.
BENCH_OPTIONS = [
    "--max-connections-per-address",
    "0",
    "--max-connections",
    "30000",
    "--max-rooms",
    "100000",
    "--rate-limit",
    "1000000",
    "--rate-burst",
    "1000000",
    "--connect-rate",
    "0",
    "--max-pending-per-address",
    "0",
    "--max-pending-connections",
    "0",
]


def raise_open_files(wanted: int = 65536) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def can_pin() -> bool:
    """True if this process may run on both the server's and the generator's core."""
    return {SERVER_CORE, GENERATOR_CORE} <= os.sched_getaffinity(0)


def pin_generator() -> None:
    os.sched_setaffinity(0, {GENERATOR_CORE})


class Server:
    """``twistd -n signaling`` on 127.0.0.1, optionally pinned to core 0, in
    a temporary directory that holds its log."""

    def __init__(self, extra: Sequence[str] = (), pin: bool = True) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="signaling-bench-"))
        args = ["--interface", HOST, "--port", "0", *BENCH_OPTIONS, *extra]
        wrapper = ["taskset", "-c", str(SERVER_CORE)] if pin else []
        self.process = ServerProcess(
            [*wrapper, *twistd_argv(sys.executable, *args)],
            self.workdir,
            log_file=self.workdir / "twistd.log",
        )
        self.pid = self.process.pid
        try:
            self.port = self.process.ports(1, STARTUP_TIMEOUT)[0]
        except AssertionError:
            if self.alive():
                problem = "the server did not start listening in time"
            else:
                problem = "the server exited at start-up"
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{problem}:\n{tail}") from None
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.process.output.splitlines()[-lines:]) or "(no log)"

    def cpu_seconds(self) -> float:
        return self.process.cpu_seconds()

    def rss_bytes(self) -> int:
        return self.process.rss_bytes()

    def health(self) -> dict[str, object]:
        """The server's ``/healthz`` document (rooms and open connections)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            return dict(json.loads(connection.getresponse().read()))
        finally:
            connection.close()

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
