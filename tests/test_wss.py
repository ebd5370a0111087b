"""wss: the real twistd with --tls-cert/--tls-key, real TLS clients that verify the chain."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from bench.twistd import ServerProcess, twistd

from .certs import CertificateAuthority, client_context, peer_common_name
from .conftest import TIMEOUT, Client
from .rawws import RawWebSocket
from .twistd_process import usage_error


@contextlib.contextmanager
def wss_client(port: int, ca_file: Path) -> Iterator[Client]:
    """A websockets client over TLS 1.2 that trusts only ``ca_file``.

    Capped at 1.2 because websockets' sync client now and then stalls on TLS
    1.3 (its reader thread takes in the server's post-handshake session
    tickets while the opening handshake is written on the same SSL object);
    TLS 1.3 is tested with plain ssl sockets (``tls_version``).
    """
    with connect(
        f"wss://127.0.0.1:{port}/connect",
        ssl=client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2),
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=1,
    ) as ws:
        yield Client(ws)


def tls_version(port: int, context: ssl.SSLContext) -> str | None:
    """The TLS version of a WebSocket opened by hand over TLS, once the server greets."""
    with RawWebSocket(port, tls=context) as ws:
        assert isinstance(ws.sock, ssl.SSLSocket)
        return ws.sock.version()


def served_name(client: Client) -> str:
    """The common name of the certificate the server presented."""
    tls_socket = client.ws.socket
    assert isinstance(tls_socket, ssl.SSLSocket)
    der = tls_socket.getpeercert(binary_form=True)
    assert der is not None
    return peer_common_name(der)


def replace_files(ca: CertificateAuthority, live: Path, name: str, *, key: bool = True) -> None:
    """Renew as certbot does: whole new files put in place by rename."""
    staging = live.parent / f"staging-{name}"
    cert, new_key = ca.write_server(staging, name)
    os.replace(cert, live / "fullchain.pem")
    if key:
        os.replace(new_key, live / "privkey.pem")


def serve_tls(
    tmp_path: Path, cert: Path, key: Path, *args: str
) -> contextlib.AbstractContextManager:
    return twistd(
        tmp_path,
        "--interface",
        "127.0.0.1",
        "--port",
        "0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        *args,
    )


def test_serves_wss_with_the_chain_from_the_cert_file(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    cert, key = ca.write_server(tmp_path / "live", "signaling-test")
    with serve_tls(tmp_path, cert, key) as server:
        [port] = server.ports()
        # The client trusts only the root: the intermediate must come from the server.
        with wss_client(port, ca_file) as a, wss_client(port, ca_file) as b:
            assert served_name(a) == "signaling-test"
            assert a.join("room") == []
            assert b.join("room") == [a.id]
            assert a.expect("new-client") == {"client_id": b.id}
            b.offer(a.id, "v=0")
            assert a.expect("offer") == {"client_id": b.id, "sdp": "v=0"}
        assert tls_version(port, client_context(ca_file)) == "TLSv1.3"
        # Other paths than /connect are the HTTP site's, over TLS too.
        https = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=TIMEOUT, context=client_context(ca_file)
        )
        try:
            https.request("GET", "/healthz")
            response = https.getresponse()
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
        finally:
            https.close()
        server.wait_for(r"TLS certificate: CN=signaling-test \(valid until")


def test_plain_ws_is_not_served_on_the_tls_port(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    cert, key = ca.write_server(tmp_path / "live")
    with serve_tls(tmp_path, cert, key) as server:
        [port] = server.ports()
        with pytest.raises(Exception):  # noqa: B017 - any failure to open will do
            connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=2).close()
        with wss_client(port, ca_file) as client:
            assert client.id


def tls11_context(ca_file: Path) -> ssl.SSLContext:
    """A client that offers TLS 1.1 and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = client_context(
            ca_file, minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1
        )
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL offer the old version at all
    return context


def test_tls11_client_can_speak_tls11(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    """Control for the next test: the TLS 1.1 client really offers TLS 1.1."""
    cert, key = ca.write_server(tmp_path / "live")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(TIMEOUT)
        theirs.settimeout(TIMEOUT)
        accepted: list[str | None] = []
        thread = threading.Thread(
            target=lambda: accepted.append(
                server_context.wrap_socket(theirs, server_side=True).version()
            )
        )
        thread.start()
        client = tls11_context(ca_file).wrap_socket(ours, server_hostname="127.0.0.1")
        thread.join(TIMEOUT)
        assert client.version() == "TLSv1.1"
        assert accepted == ["TLSv1.1"]


def assert_refused(port: int, context: ssl.SSLContext) -> None:
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_tls11_is_refused_and_1_3_can_be_required(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    cert, key = ca.write_server(tmp_path / "live")
    only_12 = client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    with serve_tls(tmp_path, cert, key) as server:
        [port] = server.ports()
        assert_refused(port, tls11_context(ca_file))
        assert tls_version(port, only_12) == "TLSv1.2"
    with serve_tls(tmp_path, cert, key, "--tls-min-version", "1.3") as server:
        [port] = server.ports()
        assert_refused(port, only_12)
        assert tls_version(port, client_context(ca_file)) == "TLSv1.3"


def reloaded_after(server: ServerProcess, mark: int) -> None:
    server.wait_for(r"TLS certificate reloaded: CN=", after=mark)


def test_renewed_files_serve_new_connections_while_open_ones_stay(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    live = tmp_path / "live"
    cert, key = ca.write_server(live, "first")
    with serve_tls(tmp_path, cert, key, "--tls-reload-interval", "0.1") as server:
        [port] = server.ports()
        with wss_client(port, ca_file) as old:
            assert served_name(old) == "first"
            old.join("room")

            # A half-done renewal (new certificate, old key) is refused and logged;
            # the old certificate stays in use.
            mark = server.mark()
            replace_files(ca, live, "half", key=False)
            server.wait_for(
                r"reload failed, still serving the previous one: .*does not match", after=mark
            )
            with wss_client(port, ca_file) as during:
                assert served_name(during) == "first"

            mark = server.mark()
            replace_files(ca, live, "second")
            reloaded_after(server, mark)
            with wss_client(port, ca_file) as new:
                assert served_name(new) == "second"
                new.join("room")
                assert old.expect("new-client") == {"client_id": new.id}
                new.offer(old.id, "v=0 from new")
                assert old.expect("offer") == {"client_id": new.id, "sdp": "v=0 from new"}
                old.send("answer", {"client_id": new.id, "sdp": "v=0 from old"})
                assert new.expect("answer") == {"client_id": old.id, "sdp": "v=0 from old"}


def test_sighup_reloads(tmp_path: Path, ca: CertificateAuthority, ca_file: Path) -> None:
    live = tmp_path / "live"
    cert, key = ca.write_server(live, "first")
    with serve_tls(tmp_path, cert, key, "--tls-reload-interval", "0") as server:
        [port] = server.ports()
        with wss_client(port, ca_file) as old:
            replace_files(ca, live, "second")
            mark = server.mark()
            server.signal(signal.SIGHUP)
            server.wait_for(r"SIGHUP: reloading", after=mark)
            reloaded_after(server, mark)
            with wss_client(port, ca_file) as new:
                assert served_name(new) == "second"
            assert old.join("still-open") == []
        assert server.process.poll() is None


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        ("missing", "cannot read the certificate file"),
        ("mismatched", "does not match the certificate"),
        ("no key", "--tls-cert and --tls-key go together"),
    ],
)
def test_bad_certificate_files_are_usage_errors(
    tmp_path: Path, ca: CertificateAuthority, breakage: str, complaint: str
) -> None:
    cert, key = ca.write_server(tmp_path / "live")
    args = ["--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    if breakage == "missing":
        cert.unlink()
    elif breakage == "mismatched":
        key.write_bytes(ca.server().key_pem)
    elif breakage == "no key":
        args = args[:-2]
    assert complaint in usage_error(tmp_path, *args)


def test_sighup_without_tls_is_harmless(tmp_path: Path) -> None:
    """systemctl reload on a plain ws server must not kill it."""
    with twistd(tmp_path, "--interface", "127.0.0.1", "--port", "0") as server:
        [port] = server.ports()
        url = f"ws://127.0.0.1:{port}/connect"
        with connect(url, proxy=None, open_timeout=TIMEOUT) as ws:
            client = Client(ws)  # served: the reactor runs, its handlers are in place
            server.signal(signal.SIGHUP)
            server.wait_for(r"SIGHUP: no TLS certificate to reload")
            assert client.join("after-sighup") == []
        assert server.process.poll() is None
