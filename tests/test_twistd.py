"""The real ``twistd signaling`` command, run as a user would run it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
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


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of a plain GET (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def assert_serves_demo(port: int) -> None:
    status, page = http_get(port, "/?room=r")
    assert status == 200 and b"static/demo.js" in page
    status, client = http_get(port, "/static/signaling-client.js")
    assert status == 200 and b"export class SignalingClient" in client


@pytest.fixture
def run_twistd(tmp_path: Path) -> Iterator:
    started: list[Twistd] = []

    def run(*args: str, python: str = sys.executable, env: dict[str, str] | None = None) -> Twistd:
        process = Twistd(twistd_argv(python, *args), tmp_path, env or source_env())
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def test_help_documents_every_option(tmp_path: Path) -> None:
    result = subprocess.run(
        twistd_argv(sys.executable, "--help"),
        cwd=tmp_path,
        env=source_env(),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--port",
        "--interface",
        "--addr",
        "--max-message-size",
        "--max-room-id-length",
        "--no-demo",
    ):
        assert option in result.stdout
    assert "/connect" in result.stdout


def test_serves_with_addr_alias_and_port(run_twistd) -> None:
    server = run_twistd("--addr", "127.0.0.1", "--port", "0")
    assert_serves(server.port)
    assert_serves_demo(server.port)
    output = server.stop()
    assert "Server Shut Down" in output
    assert "connect " in output and "join " in output


def test_no_demo_serves_only_the_endpoint(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--no-demo")
    assert_serves(server.port)
    for path in ("/", "/static/signaling-client.js", "/static/demo.js"):
        assert http_get(server.port, path)[0] == 404


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--port", "http"], "invalid literal"),
        (["--max-message-size", "0"], "not a positive integer"),
        (["--interface", ""], "--interface must not be empty"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], complaint: str) -> None:
    result = subprocess.run(
        twistd_argv(sys.executable, *args),
        cwd=tmp_path,
        env=source_env(),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bind_failure_aborts_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            twistd_argv(sys.executable, "--interface", "127.0.0.1", "--port", str(port)),
            cwd=tmp_path,
            env=source_env(),
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


@pytest.mark.slow
def test_plain_install_into_fresh_venv_serves_from_any_directory(
    tmp_path: Path, run_twistd
) -> None:
    """pip install . (not editable) into a new venv; run twistd from elsewhere."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    build = tmp_path / "src"
    shutil.copytree(
        ROOT,
        build,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", "dropin.cache"
        ),
    )
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(build)],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(build)  # nothing may come from the source tree any more
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", python=python, env=clean_env)
    assert_serves(server.port)
    assert_serves_demo(server.port)  # the static files are package data
    assert server.process.poll() is None
    assert "Server Shut Down" in server.stop()
