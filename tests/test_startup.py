"""What the real ``twistd signaling`` says as it starts: where clients
connect, and why it cannot listen when it cannot."""

from __future__ import annotations

import contextlib
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from websockets.sync.client import connect, unix_connect

from bench.twistd import run_once, twistd
from signaling.ops.listen import Listener, where_clients_connect

from .certs import CertificateAuthority
from .conftest import TIMEOUT, Client
from .test_wss import wss_client

#: The simple path's options, on loopback and a free port.
ON_LOOPBACK = ("--interface", "127.0.0.1", "--port", "0")
URL_LINE = r"\[signaling\.ops\.listen#info\] clients connect to (\S+?)(?:; demo page at (\S+))?$"


@contextlib.contextmanager
def taken_tcp_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@contextlib.contextmanager
def taken_unix_socket(path: Path) -> Iterator[Path]:
    """A unix socket path that another socket listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as taken:
        taken.bind(str(path))
        taken.listen()
        yield path


def cannot_listen_line(tmp_path: Path, *args: str) -> str:
    """Start twistd where it cannot listen: it must exit non-zero, with no
    traceback, having logged exactly one line about it; return that line."""
    result = run_once(tmp_path, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "CannotListenError" not in output, output
    lines = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, output
    assert "[signaling.ops.listen#error]" in lines[0], output
    return lines[0]


def test_a_taken_port_is_one_line_naming_address_port_and_options(tmp_path: Path) -> None:
    with taken_tcp_port() as port:
        line = cannot_listen_line(tmp_path, "--interface", "127.0.0.1", "--port", str(port))
    assert line.endswith(
        f"cannot listen on 127.0.0.1 port {port}: Address already in use "
        "(is another server running there?); "
        "choose another with --port and --interface, or endpoints with --listen"
    ), line


def test_a_taken_listen_endpoint_names_the_endpoint(tmp_path: Path) -> None:
    with taken_tcp_port() as port:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        line = cannot_listen_line(
            tmp_path, "--listen", "tcp:0:interface=127.0.0.1", "--listen", endpoint
        )
    assert line.endswith(
        f"--listen {endpoint}: cannot listen on 127.0.0.1 port {port}: Address already in use "
        "(is another server running there?); give --listen another endpoint"
    ), line


def test_a_taken_unix_socket_names_its_path(tmp_path: Path) -> None:
    with taken_unix_socket(tmp_path / "taken.sock") as path:
        line = cannot_listen_line(tmp_path, "--listen", f"unix:{path}")
    assert line.endswith(
        f"--listen unix:{path}: cannot listen on unix socket {path}: Address already in use "
        "(is another server running there?); give --listen another endpoint"
    ), line


def test_a_unix_socket_another_server_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signaling.sock"
    with twistd(tmp_path, "--listen", f"unix:{path}") as first:
        first.wait_for(r"clients connect to ws://localhost/connect over the unix socket")
        line = cannot_listen_line(tmp_path, "--listen", f"unix:{path}")
        assert f"cannot listen on unix socket {path}: its lock file is held" in line
        # The first server still serves on it.
        with unix_connect(str(path), "ws://localhost/connect", open_timeout=TIMEOUT) as ws:
            Client(ws).join("still-here")


def test_a_taken_metrics_port_is_one_line_too(tmp_path: Path) -> None:
    with taken_tcp_port() as port:
        line = cannot_listen_line(
            tmp_path, *ON_LOOPBACK, "--metrics-listen", f"tcp:{port}:interface=127.0.0.1"
        )
    assert f"--metrics-listen tcp:{port}:interface=127.0.0.1: cannot listen on 127.0.0.1" in line
    assert line.endswith("give --metrics-listen another endpoint"), line


def test_a_taken_manhole_port_is_one_line_too(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDiJ2Zl5kq2mBdl0DR3yYiVXZmFVHCq2tRyK7v0M2kQf t\n"
    )
    with taken_tcp_port() as port:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        line = cannot_listen_line(
            tmp_path, *ON_LOOPBACK, "--manhole", endpoint, "--manhole-keys", str(keys)
        )
    assert f"--manhole {endpoint}: cannot listen on 127.0.0.1 port {port}" in line
    assert line.endswith("give --manhole another endpoint"), line


def test_start_up_says_where_clients_and_browsers_connect(tmp_path: Path) -> None:
    with twistd(tmp_path, *ON_LOOPBACK, "--metrics-listen", "tcp:0:interface=127.0.0.1") as server:
        port, metrics_port = server.ports(2)
        found = server.wait_for(URL_LINE)
        # The bound port, not the 0 asked for.
        assert found.groups() == (
            f"ws://127.0.0.1:{port}/connect",
            f"http://localhost:{port}/",
        )
        with connect(found[1], proxy=None, open_timeout=TIMEOUT) as ws:
            Client(ws).join("from-the-log")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(found[2], timeout=TIMEOUT) as page:
            assert b"static/demo.js" in page.read()
        metrics = server.wait_for(r"\[signaling\.ops\.listen#info\] metrics at (\S+)$")
        assert metrics[1] == f"http://127.0.0.1:{metrics_port}/metrics"
        with opener.open(metrics[1], timeout=TIMEOUT) as response:
            assert b"signaling_uptime_seconds" in response.read()
    assert len(re.findall(URL_LINE, server.output, re.MULTILINE)) == 1


def test_without_the_demo_only_the_endpoint_is_named(tmp_path: Path) -> None:
    with twistd(tmp_path, *ON_LOOPBACK, "--no-demo") as server:
        found = server.wait_for(URL_LINE)
        assert found.groups() == (f"ws://127.0.0.1:{server.port}/connect", None)


def test_tls_and_unix_listeners_each_get_their_line(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    ca_file = ca.write_root(tmp_path / "ca.pem")
    cert, key = ca.write_server(tmp_path / "live", "startup-test")
    path = tmp_path / "signaling.sock"
    with twistd(
        tmp_path,
        "--listen",
        f"unix:{path}",
        "--listen-tls",
        "tcp:0:interface=127.0.0.1",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ) as server:
        tls_port = server.ports(1)[0]
        server.wait_for(
            r"\[signaling\.ops\.listen#info\] clients connect to ws://localhost/connect "
            f"over the unix socket {re.escape(str(path))}; demo page at /$"
        )
        found = server.wait_for(URL_LINE.replace("(\\S+?)", "(wss://\\S+?)"))
        assert found.groups() == (
            f"wss://127.0.0.1:{tls_port}/connect",
            f"https://localhost:{tls_port}/",
        )
        with wss_client(tls_port, ca_file) as client:
            client.join("over-tls")
        with unix_connect(str(path), "ws://localhost/connect", open_timeout=TIMEOUT) as ws:
            Client(ws).join("over-unix")


@pytest.mark.parametrize(
    ("address", "secure", "demo", "line"),
    [
        (
            IPv4Address("TCP", "0.0.0.0", 5000),
            False,
            True,
            "clients connect to ws://0.0.0.0:5000/connect; demo page at http://localhost:5000/",
        ),
        (
            IPv6Address("TCP", "::", 5443),
            True,
            True,
            "clients connect to wss://[::]:5443/connect; demo page at https://localhost:5443/",
        ),
        (
            IPv6Address("TCP", "2001:db8::7", 5000),
            False,
            True,
            "clients connect to ws://[2001:db8::7]:5000/connect; "
            "demo page at http://[2001:db8::7]:5000/",
        ),
        (
            IPv4Address("TCP", "192.0.2.7", 5000),
            False,
            False,
            "clients connect to ws://192.0.2.7:5000/connect",
        ),
        (
            UNIXAddress(b"/run/signaling.sock"),
            False,
            False,
            "clients connect to ws://localhost/connect over the unix socket /run/signaling.sock",
        ),
    ],
)
def test_where_clients_connect_for_each_kind_of_address(
    address: object, secure: bool, demo: bool, line: str
) -> None:
    assert where_clients_connect(address, secure, demo) == line  # type: ignore[arg-type]


def test_tls_listeners_and_ssl_endpoints_are_secure() -> None:
    assert Listener("tcp:5443", tls=True).secure
    assert Listener("ssl:5443:certKey=c.pem:privateKey=k.pem", tls=False).secure
    assert not Listener("tcp:5000", tls=False).secure
    assert not Listener("unix:/run/s.sock", tls=False).secure
