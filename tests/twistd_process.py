"""Running the real ``twistd signaling`` in a child process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0


def source_env() -> dict[str, str]:
    """Environment that finds the package and plugin in this source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def twistd_argv(python: str, *args: str) -> list[str]:
    """The twistd script installed beside ``python``, as a user would run it."""
    twistd = str(Path(python).parent / "twistd")
    return [twistd, "--nodaemon", "--pidfile=", "signaling", *args]


def assert_serves(port: int) -> None:
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


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


T = TypeVar("T")


class ServerProcess:
    """twistd running the signaling plugin; its output is collected as it comes."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            pass_fds=pass_fds,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # end of output
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def _wait(self, find: Callable[[list[str]], T | None], what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = find(self._lines)
                if found is not None:
                    return found
                ended = bool(self._lines) and self._lines[-1] == ""
                remaining = deadline - time.monotonic()
                if ended or remaining <= 0:
                    raise AssertionError(f"no {what} in the log:\n" + "".join(self._lines))
                self._changed.wait(remaining)

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT, after: int = 0) -> re.Match:
        """The first log line (from line ``after`` on) matching ``pattern``."""
        regex = re.compile(pattern)

        def find(lines: list[str]) -> re.Match | None:
            return next(filter(None, map(regex.search, lines[after:])), None)

        return self._wait(find, repr(pattern), timeout)

    def mark(self) -> int:
        """A position in the log, for ``wait_for(after=...)``."""
        with self._changed:
            return len(self._lines)

    def ports(self, count: int = 1) -> list[int]:
        """The TCP ports it listens on, from its 'starting on' lines."""
        regex = re.compile(r"starting on (\d+)")

        def find(lines: list[str]) -> list[int] | None:
            ports = [int(m.group(1)) for m in filter(None, map(regex.search, lines))]
            return ports if len(ports) >= count else None

        return self._wait(find, f"{count} listening port(s)", STARTUP_TIMEOUT)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    @property
    def port(self) -> int:
        """The (first) TCP port it listens on."""
        return self.ports(1)[0]

    def stop(self) -> str:
        """SIGTERM, wait for the exit, and return the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STARTUP_TIMEOUT)
        self._reader.join(STARTUP_TIMEOUT)
        return self.output


@contextlib.contextmanager
def twistd(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[ServerProcess]:
    """Run ``twistd -n signaling ARGS`` (optionally through ``wrapper``) for a ``with`` block."""
    argv = (wrapper or []) + twistd_argv(sys.executable, *args)
    server = ServerProcess(argv, cwd, env or source_env(), pass_fds)
    try:
        yield server
    except BaseException:
        server.stop()
        print(f"twistd exited with {server.process.returncode}; its log:\n{server.output}")
        raise
    finally:
        server.stop()


def run_once(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n signaling ARGS`` to completion (for --help and start-up errors)."""
    return subprocess.run(
        (wrapper or []) + twistd_argv(sys.executable, *args),
        cwd=cwd,
        env=env or source_env(),
        pass_fds=pass_fds,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )


def usage_error(cwd: Path, *args: str, **kwargs: Any) -> str:
    """Run twistd expecting a start-up usage error; return its output."""
    result = run_once(cwd, *args, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    return output


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
