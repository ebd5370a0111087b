"""systemd: readiness datagrams, socket activation with the real twistd, the unit files."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from bench.twistd import ROOT, ServerProcess, source_env, twistd, twistd_argv
from signaling.ops.systemd import notify, notify_address

from .conftest import TIMEOUT, Client
from .twistd_process import assert_serves, get_healthz, usage_error

UNITS = ROOT / "contrib" / "systemd"
INSTALLED_TWISTD = "/opt/signaling/bin/twistd"

# Sets LISTEN_PID to its own pid, which exec keeps, as systemd does for the
# process it starts; first moves the inherited socket to fd 3 (SD_LISTEN_FDS_START).
EXEC_AS_SYSTEMD = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@pytest.fixture
def abstract_notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """The same in the abstract namespace, named with a leading @ as systemd does."""
    name = f"signaling-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(TIMEOUT)
        yield sock, "@" + name


def socket_activated(
    cwd: Path, listening: socket.socket, notify_path: str, *args: str
) -> contextlib.AbstractContextManager[ServerProcess]:
    """twistd signaling ARGS started as systemd starts a service: with the
    listening socket (named ``signaling``) and NOTIFY_SOCKET=``notify_path``."""
    env = source_env() | {
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "signaling",
        "NOTIFY_SOCKET": notify_path,
    }
    return twistd(
        cwd,
        *args,
        env=env,
        wrapper=[sys.executable, "-c", EXEC_AS_SYSTEMD, str(listening.fileno())],
        pass_fds=(listening.fileno(),),
    )


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().splitlines()


def test_notify_address_forms() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract/name"}) == "\0abstract/name"


def test_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1", {"NOTIFY_SOCKET": path})
    assert received(sock) == ["READY=1"]


def test_notify_to_an_abstract_socket(
    abstract_notify_socket: tuple[socket.socket, str],
) -> None:
    sock, name = abstract_notify_socket
    assert notify("STOPPING=1", {"NOTIFY_SOCKET": name})
    assert received(sock) == ["STOPPING=1"]


def test_notify_without_systemd_or_listener_does_nothing(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})


def test_twistd_tells_systemd_ready_and_stopping(
    tmp_path: Path, abstract_notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = abstract_notify_socket
    env = source_env() | {"NOTIFY_SOCKET": name}
    with twistd(tmp_path, "--interface", "127.0.0.1", "--port", "0", env=env) as server:
        [port] = server.ports()
        assert "READY=1" in received(sock)
        assert_serves(port)
        server.signal(signal.SIGTERM)
        assert "STOPPING=1" in received(sock)
        assert server.wait_exit() == 0


@pytest.mark.parametrize(
    ("family", "domain", "address"),
    [(socket.AF_INET, "INET", "127.0.0.1"), (socket.AF_INET6, "INET6", "::1")],
)
def test_socket_activation(
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    family: socket.AddressFamily,
    domain: str,
    address: str,
) -> None:
    """The real twistd on a listening socket inherited as systemd passes it."""
    notifications, notify_path = notify_socket
    with socket.socket(family) as listening:
        listening.bind((address, 0))
        listening.listen()
        port = listening.getsockname()[1]
        with socket_activated(
            tmp_path,
            listening,
            notify_path,
            "--listen",
            f"systemd:domain={domain}:name=signaling",
            "--log-level",
            "debug",
        ) as server:
            assert "READY=1" in received(notifications)
            listening.close()  # from now on only the server holds the socket
            host = f"[{address}]" if family == socket.AF_INET6 else address
            url = f"ws://{host}:{port}/connect"
            with (
                connect(url, proxy=None, open_timeout=TIMEOUT) as a_ws,
                connect(url, proxy=None, open_timeout=TIMEOUT) as b_ws,
            ):
                a, b = Client(a_ws), Client(b_ws)
                a.join("activated")
                assert b.join("activated") == [a.id]
                assert a.expect("new-client") == {"client_id": b.id}
            shown = f"[{address}]" if ":" in address else address  # tcp6:[::1]:PORT
            server.wait_for(rf"connect \S+ from tcp[46]:{re.escape(shown)}:")
            server.signal(signal.SIGTERM)
            assert "STOPPING=1" in received(notifications)
            assert server.wait_exit() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_socket_activated_unix_socket_stays_as_its_unit_made_it(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], workers: str, request: Any
) -> None:
    """SocketMode=, Backlog= and the socket's file are the socket unit's:
    serving, and stopping, leave them as they were, so the next start (or
    nginx, meanwhile) still finds the socket."""
    notifications, notify_path = notify_socket
    # Workers share rooms through Redis (see test_workers.py).
    shared = request.getfixturevalue("shared_rooms") if workers != "1" else ()
    path = tmp_path / "signaling.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        path.chmod(0o660)
        listening.listen(77)
        with socket_activated(
            tmp_path,
            listening,
            notify_path,
            "--listen",
            "systemd:domain=UNIX:name=signaling",
            "--workers",
            workers,
            *shared,
        ) as server:
            assert "READY=1" in received(notifications)
            connection = socket.socket(socket.AF_UNIX)
            connection.connect(str(path))
            assert get_healthz(connection, TIMEOUT)[0] == 200
            assert path.stat().st_mode & 0o777 == 0o660
            listing = subprocess.run(
                ["ss", "-Hlx", "src", str(path)], capture_output=True, check=True, text=True
            ).stdout.split()
            assert listing[:2] == ["u_str", "LISTEN"] and listing[3] == "77", listing
            server.signal(signal.SIGTERM)
            assert server.wait_exit() == 0
        assert path.exists()
        with socket.socket(socket.AF_UNIX) as waiting:
            waiting.connect(str(path))  # queued for the next start


def test_socket_activation_with_an_unknown_name_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        env = source_env() | {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "other"}
        output = usage_error(
            tmp_path,
            "--listen",
            "systemd:domain=INET:name=signaling",
            env=env,
            wrapper=[sys.executable, "-c", EXEC_AS_SYSTEMD, str(listening.fileno())],
            pass_fds=(listening.fileno(),),
        )
    assert "--listen systemd:domain=INET:name=signaling: not a usable endpoint" in output
    assert "Traceback" not in output


def systemd_analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze in ``units``; missing, it skips the test (fails it under CI)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        message = "systemd-analyze not found (apt-get install systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [tool, *args], cwd=units, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The unit files, with ExecStart pointing at this test run's twistd.

    systemd-analyze verify checks that the command exists, and the units name
    the documented install location, which a test machine does not have.
    """
    here = tmp_path / "units"
    here.mkdir()
    twistd_path = twistd_argv(sys.executable)[0]
    for unit in ("signaling.service", "signaling.socket"):
        text = (UNITS / unit).read_text()
        assert unit == "signaling.socket" or INSTALLED_TWISTD in text
        (here / unit).write_text(text.replace(INSTALLED_TWISTD, twistd_path))
    return here


def test_units_pass_systemd_analyze_verify(units: Path) -> None:
    result = systemd_analyze(units, "verify", "--man=no", "signaling.socket", "signaling.service")
    # Unknown or misspelt settings only warn, so any output is a failure too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_is_hardened(units: Path) -> None:
    """systemd's own exposure score (0 safe .. 10 unsafe) stays at 2 or below."""
    result = systemd_analyze(
        units, "security", "--offline=true", "--threshold=20", "signaling.service"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_units_agree_with_each_other() -> None:
    service = (UNITS / "signaling.service").read_text()
    socket_unit = (UNITS / "signaling.socket").read_text()
    assert "FileDescriptorName=signaling" in socket_unit
    assert "--listen systemd:domain=INET6:name=signaling" in service
    for setting in (
        "Type=notify",
        "Restart=on-failure",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=65536",  # systemd's default soft limit is 1024
    ):
        assert f"\n{setting}\n" in service, setting
