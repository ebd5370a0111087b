"""--listen/--listen-tls: the option rules, and the real twistd on several endpoints."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
from twisted.python import usage
from websockets.sync.client import connect, unix_connect

from bench.twistd import run_once, twistd
from signaling.ops.listen import Listener, unix_socket_path
from signaling.ops.tap import Options

from .certs import CertificateAuthority, client_context
from .conftest import TIMEOUT, Client, wait_for
from .test_wss import served_name, wss_client
from .twistd_process import get_healthz, usage_error


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def tls_files(tmp_path: Path) -> list[str]:
    cert, key = CertificateAuthority().write_server(tmp_path / "live", "listen-test")
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def test_port_and_interface_are_the_default_endpoint() -> None:
    assert parse().listeners == [Listener("tcp:5000:interface=0.0.0.0:backlog=4096", tls=False)]
    assert parse("--port", "8080", "--addr", "::").listeners == [
        Listener(r"tcp:8080:interface=\:\::backlog=4096", tls=False)
    ]


def test_tls_files_make_the_default_endpoint_wss(tls_files: list[str]) -> None:
    options = parse(*tls_files)
    assert options.listeners == [Listener("tcp:5000:interface=0.0.0.0:backlog=4096", tls=True)]
    assert options.tls is not None


def test_listen_replaces_the_default_endpoint(tls_files: list[str]) -> None:
    options = parse(
        "--listen",
        "tcp:5000:interface=127.0.0.1",
        "--listen",
        "unix:/tmp/signaling-test.sock",
        "--listen-tls",
        "tcp:5443",
        *tls_files,
    )
    assert options.listeners == [
        Listener("tcp:5000:interface=127.0.0.1", tls=False),
        Listener("unix:/tmp/signaling-test.sock", tls=False),
        Listener("tcp:5443", tls=True),
    ]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--listen", "tcp:5000", "--port", "5001"], "--port cannot be combined with --listen"),
        (["--listen", "tcp:5000", "-i", "::"], "--interface cannot be combined with --listen"),
        (["--listen-tls", "tcp:5443"], "--listen-tls needs --tls-cert and --tls-key"),
        (["--listen", "tcp:5000", "TLS"], "there is neither; add --listen-tls"),
        (["--listen-tls", "ssl:5443", "TLS"], "--listen-tls adds TLS itself"),
        (["--listen", "tcp:http"], "--listen tcp:http: not a usable endpoint"),
        (["--listen", "bogus:1"], "--listen bogus:1: not a usable endpoint"),
        (["--listen", "tcp:5000:interface=::"], r"escaped with a backslash, as in interface=\:\:"),
        (
            ["--listen", "systemd:domain=INET:name=web"],
            "is the process started by its .socket unit",
        ),
        (["--tls-min-version", "1.3"], "--tls-min-version needs --tls-cert"),
        (["--tls-min-version", "1.1", "TLS"], "1.1 is not one of 1.2, 1.3"),
        (["--trust-proxy", "-1"], "-1 is negative"),
        (["--shutdown-timeout", "nan"], "not a number of seconds"),
        (["--tls-reload-interval", "-5"], "not a number of seconds"),
        (["--shutdown-timeout", "inf"], "not a number of seconds"),
    ],
)
def test_contradictions_are_usage_errors(
    tls_files: list[str], args: list[str], complaint: str
) -> None:
    argv = [arg for a in args for arg in (tls_files if a == "TLS" else [a])]
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    assert complaint in str(info.value)


def test_twistd_reports_bad_endpoints_without_traceback(tmp_path: Path) -> None:
    assert "not a usable endpoint" in usage_error(tmp_path, "--listen", "tcp:notaport")


@pytest.mark.parametrize("option", ["--listen", "--listen-tls", "--metrics-listen", "--manhole"])
def test_missing_socket_directory_is_one_line_naming_it(
    tmp_path: Path, tls_files: list[str], option: str
) -> None:
    """Outside systemd nothing makes /run/signaling: say so, without a traceback."""
    missing = tmp_path / "run" / "signaling"
    description = f"unix:{missing}/signaling.sock:mode=660"
    extra = {
        "--listen-tls": tls_files,
        "--metrics-listen": ["--listen", f"unix:{tmp_path}/main.sock"],
        "--manhole": ["--manhole-keys", str(tmp_path / "keys")],
    }.get(option, [])
    (tmp_path / "keys").write_text("")
    output = usage_error(tmp_path, option, description, *extra)
    last = output.strip().splitlines()[-1]
    assert f"{option} {description}: directory {missing} does not exist" in last
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("description", "path"),
    [
        ("unix:/run/signaling/signaling.sock:mode=660", "/run/signaling/signaling.sock"),
        ("unix:address=/run/a\\:b/s.sock:lockfile=0", "/run/a:b/s.sock"),
        ("unix:mode=600:address=rel.sock", "rel.sock"),
        ("tcp:5000:interface=127.0.0.1", None),
        ("systemd:domain=UNIX:name=signaling", None),
    ],
)
def test_unix_socket_path(description: str, path: str | None) -> None:
    assert unix_socket_path(description) == path


def test_existing_socket_directory_is_accepted(tmp_path: Path) -> None:
    options = parse("--listen", f"unix:{tmp_path}/signaling.sock")
    assert options.listeners == [Listener(f"unix:{tmp_path}/signaling.sock", tls=False)]


def test_one_process_serves_ws_and_wss(tmp_path: Path, tls_files: list[str]) -> None:
    """--listen tcp: plus --listen ssl: (Twisted's own TLS endpoint) plus --listen-tls."""
    ca = CertificateAuthority()
    ca_file = ca.write_root(tmp_path / "ca.pem")
    cert, key = ca.write_server(tmp_path / "ssl", "ssl-endpoint")
    chain = tmp_path / "ssl" / "chain.pem"
    chain.write_bytes(ca.intermediate.pem)
    ssl_endpoint = (
        f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}:extraCertChain={chain}"
    )
    ours_cert, ours_key = ca.write_server(tmp_path / "ours", "listen-tls-endpoint")
    with twistd(
        tmp_path,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        ssl_endpoint,
        "--listen-tls",
        "tcp:0:interface=127.0.0.1",
        "--tls-cert",
        str(ours_cert),
        "--tls-key",
        str(ours_key),
    ) as server:
        ws_port, ssl_port, tls_port = server.ports(3)
        with (
            connect(f"ws://127.0.0.1:{ws_port}/connect", proxy=None, open_timeout=TIMEOUT) as ws,
            wss_client(ssl_port, ca_file) as via_ssl,
            wss_client(tls_port, ca_file) as via_tls,
        ):
            plain = Client(ws)
            assert served_name(via_ssl) == "ssl-endpoint"
            assert served_name(via_tls) == "listen-tls-endpoint"
            plain.join("mixed")
            via_ssl.join("mixed")
            via_tls.join("mixed")
            via_tls.offer(plain.id, "v=0 over wss")
            assert plain.expect("new-client") == {"client_id": via_ssl.id}
            assert plain.expect("new-client") == {"client_id": via_tls.id}
            assert plain.expect("offer") == {"client_id": via_tls.id, "sdp": "v=0 over wss"}
        # Plain HTTP requests are handed to the site on every kind of endpoint.
        context = client_context(ca_file)
        assert health_status(socket.create_connection(("127.0.0.1", ws_port))) == 200
        for port in (ssl_port, tls_port):
            raw = socket.create_connection(("127.0.0.1", port))
            assert health_status(context.wrap_socket(raw, server_hostname="127.0.0.1")) == 200


def health_status(sock: socket.socket) -> int:
    """The status of ``GET /healthz`` over ``sock`` (closed after)."""
    return get_healthz(sock, TIMEOUT)[0]


def test_unix_socket_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "signaling.sock"
    with twistd(tmp_path, "--listen", f"unix:{path}:mode=600", "--log-level", "debug") as server:
        server.wait_for(r"starting on .*signaling\.sock")
        # Twisted logs that line before it binds, then sets the mode.
        assert wait_for(lambda: path.exists() and path.stat().st_mode & 0o777 == 0o600)
        with contextlib.ExitStack() as stack:
            a, b = (
                Client(
                    stack.enter_context(
                        unix_connect(str(path), "ws://localhost/connect", open_timeout=TIMEOUT)
                    )
                )
                for _ in range(2)
            )
            a.join("over-unix")
            assert b.join("over-unix") == [a.id]
            assert a.expect("new-client") == {"client_id": b.id}
        server.wait_for(r"connect \S+ from unix")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.connect(str(path))
        assert health_status(unix) == 200
    assert not path.exists()  # removed on a clean stop


def test_help_documents_the_serving_options(tmp_path: Path) -> None:
    result = run_once(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--listen=",
        "--listen-tls=",
        "--tls-cert=",
        "--tls-key=",
        "--tls-min-version=",
        "--tls-reload-interval=",
        "--trust-proxy=",
        "--shutdown-timeout=",
    ):
        assert option in result.stdout
    assert "[default: 5000]" in result.stdout
