"""TLS with the clients people use: curl and ALPN-offering clients on every kind
of TLS listener (--tls-cert, --listen-tls, ssl:), the cipher policy, and failed
TLS handshakes in /metrics and the debug log.

Browsers and curl offer ALPN; Python's default SSL context offers none, so a
test that only uses the latter says nothing about the former.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from bench.twistd import ServerProcess, twistd

from .certs import CertificateAuthority, client_context
from .conftest import TIMEOUT, Client
from .test_wss import reloaded_after, replace_files
from .tools import require_program
from .twistd_process import usage_error

LISTENERS = ["tls-cert", "listen-tls", "ssl-endpoint"]


def listener_args(kind: str, tmp_path: Path, ca: CertificateAuthority) -> list[str]:
    """twistd arguments for one wss listener of ``kind`` on 127.0.0.1, port 0."""
    cert, key = ca.write_server(tmp_path / "live", kind)
    if kind == "tls-cert":
        return ["--interface", "127.0.0.1", "--port", "0", "--tls-cert", str(cert),
                "--tls-key", str(key)]  # fmt: skip
    if kind == "listen-tls":
        return ["--listen-tls", "tcp:0:interface=127.0.0.1", "--tls-cert", str(cert),
                "--tls-key", str(key)]  # fmt: skip
    chain = tmp_path / "live" / "chain.pem"
    chain.write_bytes(ca.intermediate.pem)
    return [
        "--listen",
        f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}:extraCertChain={chain}",
    ]


@contextlib.contextmanager
def serve(
    kind: str, tmp_path: Path, ca: CertificateAuthority, *args: str
) -> Iterator[ServerProcess]:
    with twistd(tmp_path, *listener_args(kind, tmp_path, ca), *args) as server:
        yield server


def alpn_context(ca_file: Path, protocols: list[str], **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = client_context(ca_file, **versions)  # type: ignore[arg-type]
    context.set_alpn_protocols(protocols)
    return context


@contextlib.contextmanager
def wss(port: int, context: ssl.SSLContext) -> Iterator[Client]:
    with connect(
        f"wss://127.0.0.1:{port}/connect",
        ssl=context,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=1,
    ) as ws:
        yield Client(ws)


def negotiated(client: Client) -> str | None:
    tls = client.ws.socket
    assert isinstance(tls, ssl.SSLSocket)
    return tls.selected_alpn_protocol()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    program = require_program("curl", "curl")
    return subprocess.run(
        [program, "--silent", "--show-error", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


@pytest.mark.parametrize("kind", LISTENERS)
def test_curl_gets_healthz_and_http_1_1_over_alpn(
    kind: str, tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    with serve(kind, tmp_path, ca) as server:
        url = f"https://127.0.0.1:{server.port}/healthz"
        # curl offers h2 and http/1.1, as browsers do.
        result = curl("--verbose", "--cacert", str(ca_file), url)
        assert result.returncode == 0, result.stderr
        assert '"status":"ok"' in result.stdout
        assert re.search(r"ALPN.*accepted.*http/1\.1", result.stderr), result.stderr


@pytest.mark.parametrize("kind", LISTENERS)
def test_alpn_clients_open_websockets(
    kind: str, tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    only_12 = {"maximum": ssl.TLSVersion.TLSv1_2}  # see test_wss.wss_client
    with serve(kind, tmp_path, ca) as server:
        port = server.port
        with (
            wss(port, alpn_context(ca_file, ["h2", "http/1.1"], **only_12)) as browser_like,
            wss(port, alpn_context(ca_file, ["http/1.1"], **only_12)) as http11,
            wss(port, alpn_context(ca_file, ["h2"], **only_12)) as h2_only,
        ):
            assert negotiated(browser_like) == "http/1.1"
            assert negotiated(http11) == "http/1.1"
            # Nothing in common: no ALPN answer, and no failed handshake.
            assert negotiated(h2_only) is None
            assert browser_like.join("alpn") == []
            assert http11.join("alpn") == [browser_like.id]
            assert h2_only.join("alpn") == [browser_like.id, http11.id]
            h2_only.offer(browser_like.id, "v=0")
            assert browser_like.expect("new-client") == {"client_id": http11.id}
            assert browser_like.expect("new-client") == {"client_id": h2_only.id}
            assert browser_like.expect("offer") == {"client_id": h2_only.id, "sdp": "v=0"}


def test_reloaded_certificate_keeps_the_tls_policy(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    with serve("tls-cert", tmp_path, ca, "--tls-reload-interval", "0.1") as server:
        server.wait_for(r"TLS certificate: CN=tls-cert")
        mark = server.mark()
        replace_files(ca, tmp_path / "live", "renewed")
        reloaded_after(server, mark)
        result = curl("--verbose", "--cacert", str(ca_file),
                      f"https://127.0.0.1:{server.port}/healthz")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "CN=renewed" in result.stderr or "CN = renewed" in result.stderr, result.stderr
        assert re.search(r"ALPN.*accepted.*http/1\.1", result.stderr), result.stderr
        assert_tls12_cipher_refused(server.port, ca_file, "ECDHE-ECDSA-AES128-SHA")


def tls12_handshake(port: int, ca_file: Path, ciphers: str) -> str:
    """The cipher suite of a TLS 1.2 handshake offering only ``ciphers``."""
    context = client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(ciphers)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


def assert_tls12_cipher_refused(port: int, ca_file: Path, ciphers: str) -> None:
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
        tls12_handshake(port, ca_file, ciphers)


@pytest.mark.parametrize("kind", LISTENERS)
def test_tls12_offers_only_forward_secret_aead_suites(
    kind: str, tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    with serve(kind, tmp_path, ca) as server:
        port = server.port
        assert tls12_handshake(port, ca_file, "ECDHE-ECDSA-AES128-GCM-SHA256") == (
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        assert tls12_handshake(port, ca_file, "ECDHE-ECDSA-CHACHA20-POLY1305") == (
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        )
        # CBC with SHA-1, and no forward secrecy: both outside Mozilla's
        # intermediate list.
        assert_tls12_cipher_refused(port, ca_file, "ECDHE-ECDSA-AES128-SHA")
        assert_tls12_cipher_refused(port, ca_file, "AES128-GCM-SHA256")


@pytest.mark.parametrize("kind", ["tls-cert", "ssl-endpoint"])
def test_tls_ciphers_option_replaces_the_list(
    kind: str, tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    with serve(kind, tmp_path, ca, "--tls-ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384") as server:
        port = server.port
        assert tls12_handshake(port, ca_file, "ECDHE-ECDSA-AES256-GCM-SHA384") == (
            "ECDHE-ECDSA-AES256-GCM-SHA384"
        )
        assert_tls12_cipher_refused(port, ca_file, "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_unusable_tls_ciphers_are_usage_errors(tmp_path: Path, ca: CertificateAuthority) -> None:
    args = listener_args("tls-cert", tmp_path, ca)
    assert "--tls-ciphers: OpenSSL knows no cipher suite in 'NOPE'" in usage_error(
        tmp_path, *args, "--tls-ciphers", "NOPE"
    )
    assert "--tls-ciphers needs a TLS listener" in usage_error(
        tmp_path, "--port", "0", "--tls-ciphers", "ECDHE-RSA-AES128-GCM-SHA256"
    )


@pytest.mark.parametrize("kind", ["tls-cert", "ssl-endpoint"])
def test_failed_tls_handshakes_are_counted_and_logged_at_debug(
    kind: str, tmp_path: Path, ca: CertificateAuthority, ca_file: Path
) -> None:
    with serve(kind, tmp_path, ca, "--log-level", "debug") as server:
        port = server.port
        assert_tls12_cipher_refused(port, ca_file, "AES128-SHA")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on TLS
            raw.settimeout(TIMEOUT)
            while raw.recv(4096):
                pass
        server.wait_for(r"TLS failed tcp4:127\.0\.0\.1:\d+: .*no shared cipher")
        server.wait_for(r"TLS failed tcp4:127\.0\.0\.1:\d+: .*(http request|wrong version)")
        result = curl("--cacert", str(ca_file), f"https://127.0.0.1:{port}/metrics")
        assert result.returncode == 0, result.stderr
        assert metric(result.stdout, "signaling_tls_failures_total") == 2
    # Not at the default level: a scanner must not fill the log.
    with serve(kind, tmp_path, ca) as server:
        assert_tls12_cipher_refused(server.port, ca_file, "AES128-SHA")
        result = curl("--cacert", str(ca_file), f"https://127.0.0.1:{server.port}/metrics")
        assert metric(result.stdout, "signaling_tls_failures_total") == 1
        assert "TLS failed" not in server.output
