"""Running the real ``twistd signaling`` in a child process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0


def source_env() -> dict[str, str]:
    """Environment that finds the package and plugin in this source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Twistd:
    """A ``twistd -n signaling`` process; knows the port it listens on."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            found = re.search(r"starting on (\d+)", line)
            if found:
                return int(found.group(1))
        self.stop()
        raise AssertionError("twistd did not start listening:\n" + "".join(self.output))

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=STARTUP_TIMEOUT)
        return "".join(self.output) + (rest or "")


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
