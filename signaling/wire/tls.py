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
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from zope.interface import implementer

from signaling.logs import ServerLogger

_log = ServerLogger()

#: ``--tls-min-version`` values.
MINIMUM_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

#: The TLS 1.2 cipher suites of Mozilla's "intermediate" configuration: all
#: with forward secrecy and AEAD (TLS 1.3's suites are all of that kind and
#: are not affected).  The DHE suites are unused without DH parameters.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

#: The application protocol the server speaks over TLS, named as ALPN names it.
HTTP_1_1 = b"http/1.1"


def select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """ALPN: choose ``http/1.1`` when the client offers it; otherwise answer
    with no protocol rather than failing the handshake (a client offering
    only ``h2`` may still speak HTTP/1.1, and it is its call)."""
    return HTTP_1_1 if HTTP_1_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


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


def describe_error(error: SSL.Error) -> str:
    """OpenSSL's reasons for ``error``, e.g. ``no shared cipher``."""
    reasons = [
        entry[-1] for entry in (error.args[0] if error.args else ()) if isinstance(entry, tuple)
    ]
    return ", ".join(filter(None, reasons)) or str(error) or type(error).__name__


def check_ciphers(ciphers: str) -> None:
    """Raise :class:`TLSConfigError` unless OpenSSL knows a cipher suite in
    ``ciphers`` (an OpenSSL cipher list, as ``--tls-ciphers`` takes)."""
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TLSConfigError(f"OpenSSL knows no cipher suite in {ciphers!r}") from None


def load_certificate(
    cert_path: str,
    key_path: str,
    minimum: TLSVersion,
    ciphers: str = INTERMEDIATE_CIPHERS,
) -> LoadedCertificate:
    """Build a server context from PEM files as certbot writes them.

    ``cert_path`` holds the server certificate first, then any intermediate
    certificates (certbot's ``fullchain.pem``); they are all sent to clients.
    ``key_path`` holds the unencrypted private key (certbot's ``privkey.pem``).
    ``ciphers`` is the OpenSSL cipher list for TLS 1.2.  Raises
    :class:`TLSConfigError` when the files are missing, unreadable,
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
    # CertificateOptions brings Twisted's policy (curves, no compression,
    # server cipher preference) and the minimum version.
    context = CertificateOptions(
        raiseMinimumTo=minimum,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(ciphers),
    ).getContext()
    # Twisted 25.x and later answer an ALPN offer with a protocol only when the
    # serving factory names one, and fail the handshake otherwise: every
    # browser and curl offers ALPN.  This context answers for itself.
    context.set_alpn_select_callback(select_alpn)
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

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        minimum: TLSVersion,
        ciphers: str = INTERMEDIATE_CIPHERS,
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.minimum = minimum
        self.ciphers = ciphers
        self.current = self._load()

    def _load(self) -> LoadedCertificate:
        return load_certificate(self.cert_path, self.key_path, self.minimum, self.ciphers)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.current.context, None)

    def reload(self) -> bool:
        """Load the files again; on failure keep the current certificate and log why."""
        try:
            loaded = self._load()
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
