"""Starting the real server for a measurement, and watching its CPU and memory."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .wsclient import HOST

ROOT = Path(__file__).resolve().parent.parent
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

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


class Server:
    """``twistd -n signaling`` on 127.0.0.1, optionally pinned to core 0."""

    def __init__(self, extra: Sequence[str] = (), pin: bool = True) -> None:
        self.workdir = tempfile.mkdtemp(prefix="signaling-bench-")
        self.logfile = Path(self.workdir) / "twistd.log"
        twistd = str(Path(sys.executable).parent / "twistd")
        self.argv = [
            twistd,
            "--nodaemon",
            "--pidfile=",
            "--logfile",
            str(self.logfile),
            "signaling",
            "--interface",
            HOST,
            "--port",
            "0",
            *BENCH_OPTIONS,
            *extra,
        ]
        if pin:
            self.argv = ["taskset", "-c", str(SERVER_CORE), *self.argv]
        env = dict(os.environ)
        # Measure the server in this source tree, even if another copy is installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the server exited at start-up:\n" + self.log_tail())
            if self.logfile.exists():
                found = re.search(r"starting on (\d+)", self.logfile.read_text(errors="replace"))
                if found:
                    return int(found.group(1))
            time.sleep(0.05)
        raise RuntimeError("the server did not start listening in time:\n" + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        if not self.logfile.exists():
            return "(no log)"
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def health(self) -> dict[str, object]:
        """The server's ``/healthz`` document (rooms and open connections)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            return dict(json.loads(connection.getresponse().read()))
        finally:
            connection.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
