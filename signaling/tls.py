"""TLS for wss: certificate and key files loaded into a server context that can be reloaded.

Open connections keep the context they started with; a reload only changes
what new connections get.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from zope.interface import implementer

from .logs import ServerLogger

_log = ServerLogger()

#: ``--tls-min-version`` values.
MINIMUM_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}


_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class TLSConfigError(Exception):
    """The certificate or key files cannot be used; the message says why."""


@dataclass(frozen=True)
class LoadedCertificate:
    """A server context built from a certificate chain and its key."""

    context: SSL.Context
    certificate: x509.Certificate
    chain_length: int


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} file {path}: {e.strerror or e}") from None


def _public_key_bytes(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_certificate(cert_path: str, key_path: str, minimum: TLSVersion) -> LoadedCertificate:
    """Build a server context from PEM files as certbot writes them.

    ``cert_path`` holds the server certificate first, then any intermediate
    certificates (certbot's ``fullchain.pem``); they are all sent to clients.
    ``key_path`` holds the unencrypted private key (certbot's ``privkey.pem``).
    Raises :class:`TLSConfigError` when the files are missing, unreadable,
    malformed, or do not belong together.
    """
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(f"cannot load the private key in {key_path}: {e}") from None
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise TLSConfigError(f"{key_path} holds a key of a kind that cannot serve TLS")
    if _public_key_bytes(key.public_key()) != _public_key_bytes(chain[0].public_key()):
        raise TLSConfigError(
            f"the private key in {key_path} does not match the certificate in {cert_path}"
        )
    # CertificateOptions brings Twisted's policy (ciphers, curves, no
    # compression, server cipher preference) and the minimum version.
    context = CertificateOptions(raiseMinimumTo=minimum).getContext()
    try:
        context.use_certificate(chain[0])
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
        context.use_privatekey(key)
        context.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigError(f"OpenSSL refused {cert_path} / {key_path}: {e}") from None
    return LoadedCertificate(context, chain[0], len(chain))


def describe(certificate: x509.Certificate) -> str:
    """One line naming a certificate and its expiry, for the log."""
    return (
        f"{certificate.subject.rfc4514_string()} "
        f"(valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Server TLS from a certificate and key file, reloadable in place.

    Give it to ``TLSMemoryBIOFactory``: each new connection uses the context
    loaded last.
    """

    def __init__(self, cert_path: str, key_path: str, minimum: TLSVersion) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.minimum = minimum
        self.current = load_certificate(cert_path, key_path, minimum)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.current.context, None)

    def reload(self) -> bool:
        """Load the files again; on failure keep the current certificate and log why."""
        try:
            loaded = load_certificate(self.cert_path, self.key_path, self.minimum)
        except TLSConfigError as e:
            _log.error(
                "TLS certificate reload failed, still serving the previous one: {error}",
                error=str(e),
            )
            return False
        self.current = loaded
        _log.info(
            "TLS certificate reloaded: {certificate}", certificate=describe(loaded.certificate)
        )
        return True
