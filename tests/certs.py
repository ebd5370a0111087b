"""Throwaway certificate authorities and server certificates for TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_ADDRESS = "127.0.0.1"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def pem(self) -> bytes:
        return _pem(self.certificate)


def _issue(
    subject: str,
    issuer: Issued | None,
    *,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    signer = key if issuer is None else issuer.key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


class CertificateAuthority:
    """A root CA and an intermediate under it, as a public CA would have."""

    def __init__(self, name: str = "Test Root CA") -> None:
        self.root = _issue(name, None, ca=True)
        self.intermediate = _issue(name + " Intermediate", self.root, ca=True)

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root.pem)
        return path

    def server(self, common_name: str = SERVER_ADDRESS) -> Issued:
        """A server certificate for 127.0.0.1, issued by the intermediate."""
        san: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(SERVER_ADDRESS)),
            x509.DNSName("localhost"),
        ]
        return _issue(common_name, self.intermediate, ca=False, san=san)

    def write_server(self, directory: Path, common_name: str = SERVER_ADDRESS) -> tuple[Path, Path]:
        """fullchain.pem (server then intermediate) and privkey.pem, as certbot lays them out."""
        issued = self.server(common_name)
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / "fullchain.pem"
        key = directory / "privkey.pem"
        cert.write_bytes(issued.pem + self.intermediate.pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        return cert, key


def client_context(
    ca_file: Path,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that trusts only ``ca_file`` and checks the host name."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


def peer_common_name(der: bytes) -> str:
    """The common name of a DER certificate (what ``getpeercert(True)`` gives)."""
    certificate = x509.load_der_x509_certificate(der)
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # type: ignore[return-value]
