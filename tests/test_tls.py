"""Loading certificate and key files into a server TLS context, and reloading them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.ssl import TLSVersion

from signaling.wire.tls import ReloadableServerTLS, TLSConfigError, load_certificate

from .certs import CertificateAuthority


@pytest.fixture
def files(tmp_path: Path, ca: CertificateAuthority) -> tuple[Path, Path]:
    return ca.write_server(tmp_path / "live", "first")


def options_of(context: SSL.Context) -> int:
    return context.set_options(0)  # adds nothing, returns the options in force


def test_loads_certbot_style_files_with_their_chain(files: tuple[Path, Path]) -> None:
    loaded = load_certificate(str(files[0]), str(files[1]), TLSVersion.TLSv1_2)
    assert loaded.chain_length == 2
    assert loaded.certificate.subject.rfc4514_string() == "CN=first"
    options = options_of(loaded.context)
    for flag in (
        SSL.OP_NO_COMPRESSION,
        SSL.OP_CIPHER_SERVER_PREFERENCE,
        SSL.OP_NO_SSLv3,
        SSL.OP_NO_TLSv1,
        SSL.OP_NO_TLSv1_1,
    ):
        assert options & flag, hex(flag)
    assert not options & SSL.OP_NO_TLSv1_2


def test_minimum_1_3_turns_1_2_off(files: tuple[Path, Path]) -> None:
    loaded = load_certificate(str(files[0]), str(files[1]), TLSVersion.TLSv1_3)
    assert options_of(loaded.context) & SSL.OP_NO_TLSv1_2


def _encrypted_key(files: tuple[Path, Path], path: Path) -> None:
    key = serialization.load_pem_private_key(files[1].read_bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        ("missing cert", "cannot read the certificate file {cert}: No such file"),
        ("missing key", "cannot read the private key file {key}: No such file"),
        ("cert is a directory", "cannot read the certificate file {cert}: Is a directory"),
        ("garbage cert", "{cert} holds no PEM certificate"),
        ("key in cert file", "{cert} holds no PEM certificate"),
        ("garbage key", "cannot load the private key in {key}"),
        ("encrypted key", "cannot load the private key in {key}: Password was not given"),
        ("other key", "the private key in {key} does not match the certificate in {cert}"),
    ],
)
def test_unusable_files_are_explained(
    tmp_path: Path,
    ca: CertificateAuthority,
    files: tuple[Path, Path],
    breakage: str,
    complaint: str,
) -> None:
    cert, key = files
    if breakage == "missing cert":
        cert.unlink()
    elif breakage == "missing key":
        key.unlink()
    elif breakage == "cert is a directory":
        cert.unlink()
        cert.mkdir()
    elif breakage == "garbage cert":
        cert.write_text("not a certificate\n")
    elif breakage == "key in cert file":
        cert.write_bytes(key.read_bytes())
    elif breakage == "garbage key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif breakage == "encrypted key":
        _encrypted_key(files, key)
    elif breakage == "other key":
        key.write_bytes(ca.server().key_pem)
    with pytest.raises(TLSConfigError) as info:
        load_certificate(str(cert), str(key), TLSVersion.TLSv1_2)
    assert complaint.format(cert=cert, key=key) in str(info.value)


def test_reload_swaps_the_context_for_new_connections(
    tmp_path: Path, ca: CertificateAuthority, files: tuple[Path, Path]
) -> None:
    tls = ReloadableServerTLS(str(files[0]), str(files[1]), TLSVersion.TLSv1_2)
    before = tls.current
    assert tls.serverConnectionForTLS(None).get_context() is before.context
    ca.write_server(tmp_path / "live", "second")
    assert tls.reload()
    assert tls.current.certificate.subject.rfc4514_string() == "CN=second"
    assert tls.serverConnectionForTLS(None).get_context() is tls.current.context
    assert tls.current.context is not before.context


def test_failed_reload_keeps_the_old_certificate(
    ca: CertificateAuthority, files: tuple[Path, Path]
) -> None:
    tls = ReloadableServerTLS(str(files[0]), str(files[1]), TLSVersion.TLSv1_2)
    before = tls.current
    files[1].write_bytes(ca.server().key_pem)  # a key that belongs to another certificate
    assert not tls.reload()
    assert tls.current is before
