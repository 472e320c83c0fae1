"""Throwaway certificate authorities and certificates, for tests and benches.

Real TLS needs real certificates: a test of "custom CA bundle" or "mTLS"
means nothing against a mocked handshake. :class:`Authority` makes a CA
with the ``cryptography`` package and issues server certificates (with
DNS and IP subject alternative names, so ``https://127.0.0.1:PORT`` and
``https://localhost:PORT`` both verify) and client certificates. Keys are
EC P-256: quick to make, so every test can have its own CA.

Nothing here is fit for production: keys are written unencrypted.
"""

import datetime
import ipaddress
import os
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "Issued", "write_pem"]

_LIFETIME = datetime.timedelta(days=2)


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path, data, private=False):
    """Write *data* to *path* (mode 0600 when *private*); returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@attrs.frozen
class Issued:
    """A certificate and its key, as PEM bytes, and where they were written."""

    certificate_pem: bytes
    key_pem: bytes
    certificate_path: Path | None = None
    key_path: Path | None = None


class Authority:
    """A self-signed CA that issues leaf certificates.

    ``Authority("test CA", directory)`` writes ``ca.pem`` in *directory*
    (when given) and each issued pair as ``<name>.pem`` / ``<name>.key``.
    """

    def __init__(self, common_name="siprecd test CA", directory=None):
        self.directory = Path(directory) if directory is not None else None
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.certificate_path = None
        if self.directory is not None:
            self.certificate_path = write_pem(self.directory / "ca.pem", self.certificate_pem)

    def _issue(self, name, common_name, sans, usage):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
        cert_path = key_path = None
        if self.directory is not None:
            cert_path = write_pem(self.directory / f"{name}.pem", cert_pem)
            key_path = write_pem(self.directory / f"{name}.key", key_pem, private=True)
        return Issued(cert_pem, key_pem, cert_path, key_path)

    def issue_server(self, hostnames=("localhost", "127.0.0.1"), name="server"):
        """A server certificate valid for *hostnames* (names or IP addresses)."""
        sans = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(name, hostnames[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(self, common_name="siprecd", name="client"):
        """A client certificate (for mTLS) with *common_name* as its subject."""
        return self._issue(name, common_name, [], ExtendedKeyUsageOID.CLIENT_AUTH)
