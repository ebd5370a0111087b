"""Running the real ``twistd signaling`` in a child process, for the
benchmark and the tests: start it from this source tree, wait for lines in
its log, read its CPU time and memory, stop it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
#: How often a log written to a file is read again while waiting for a line.
_POLL_INTERVAL = 0.05

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

T = TypeVar("T")


def source_env() -> dict[str, str]:
    """This process's environment, with the package and plugin found in this
    source tree first (even if another copy is installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def twistd_argv(python: str, *args: str) -> list[str]:
    """``twistd -n signaling ARGS`` with the twistd script installed beside
    ``python``, as a user would run it (no pid file)."""
    twistd = str(Path(python).parent / "twistd")
    return [twistd, "--nodaemon", "--pidfile=", "signaling", *args]


class ServerProcess:
    """A twistd process; its output is collected as it comes.

    The output goes through a pipe and a reader thread, or with
    ``log_file`` straight into that file, which this process reads only
    when asked (so that it costs a measurement nothing).
    """

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        log_file: Path | None = None,
    ) -> None:
        self.log_file = log_file
        with contextlib.ExitStack() as opened:
            output: int | IO[str] = subprocess.PIPE
            if log_file is not None:  # the child has its own descriptor of it
                output = opened.enter_context(open(log_file, "w"))
            self.process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env or source_env(),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                pass_fds=pass_fds,
            )
        self.pid = self.process.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        if log_file is None:
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

    def _output_lines(self) -> tuple[list[str], bool]:
        """The lines of output so far, and whether the output has ended."""
        if self.log_file is None:
            with self._changed:
                lines = list(self._lines)
            return lines, bool(lines) and lines[-1] == ""
        ended = self.process.poll() is not None  # before reading: no line is missed
        if not self.log_file.exists():
            return [], ended
        return self.log_file.read_text(errors="replace").splitlines(keepends=True), ended

    def _await_output(self, seen: int, timeout: float) -> None:
        """Return when there may be more than ``seen`` lines, or after ``timeout``."""
        if self.log_file is not None:
            time.sleep(min(timeout, _POLL_INTERVAL))
            return
        with self._changed:
            if len(self._lines) == seen:
                self._changed.wait(timeout)

    @property
    def output(self) -> str:
        return "".join(self._output_lines()[0])

    def _wait(self, find: Callable[[list[str]], T | None], what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            lines, ended = self._output_lines()
            found = find(lines)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if ended or remaining <= 0:
                raise AssertionError(f"no {what} in the log:\n" + "".join(lines))
            self._await_output(len(lines), remaining)

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT, after: int = 0) -> re.Match:
        """The first log line (from line ``after`` on) matching ``pattern``."""
        regex = re.compile(pattern)

        def find(lines: list[str]) -> re.Match | None:
            return next(filter(None, map(regex.search, lines[after:])), None)

        return self._wait(find, repr(pattern), timeout)

    def mark(self) -> int:
        """A position in the log, for ``wait_for(after=...)``."""
        return len(self._output_lines()[0])

    def ports(self, count: int = 1, timeout: float = STARTUP_TIMEOUT) -> list[int]:
        """The TCP ports it listens on, from its 'starting on' lines (an
        AssertionError with the log if fewer come within ``timeout``)."""
        regex = re.compile(r"starting on (\d+)")

        def find(lines: list[str]) -> list[int] | None:
            ports = [int(m.group(1)) for m in filter(None, map(regex.search, lines))]
            return ports if len(ports) >= count else None

        return self._wait(find, f"{count} listening port(s)", timeout)

    @property
    def port(self) -> int:
        """The (first) TCP port it listens on."""
        return self.ports(1)[0]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def stop(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """SIGTERM (SIGKILL after ``timeout``), wait for the exit, and return the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return self.output

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far, from /proc/PID/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def rss_bytes(self) -> int:
        """Resident memory now, from /proc/PID/statm."""
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * _PAGE


@contextlib.contextmanager
def twistd(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[ServerProcess]:
    """Run ``twistd -n signaling ARGS`` (optionally through ``wrapper``) for a
    ``with`` block; its log is printed if the block fails."""
    server = ServerProcess(
        [*(wrapper or ()), *twistd_argv(sys.executable, *args)], cwd, env, pass_fds
    )
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
    wrapper: Sequence[str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n signaling ARGS`` to completion (for --help and start-up errors)."""
    return subprocess.run(
        [*(wrapper or ()), *twistd_argv(sys.executable, *args)],
        cwd=cwd,
        env=env or source_env(),
        pass_fds=pass_fds,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
