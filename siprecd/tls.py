"""TLS material: loading PEM files into server contexts, and a development
certificate made on first start when none is configured.
"""

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl

from siprecd.structure import ConfigError

__all__ = ["ensure_self_signed", "server_options", "listener_options", "make_self_signed",
           "check_ciphers"]

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def make_self_signed(common_name, alt_names=(), days=825):
    """Return (certificate PEM, private key PEM) for a throwaway certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans = []
    for alt in (common_name, *alt_names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(alt)))
        except ValueError:
            sans.append(x509.DNSName(alt))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _write_private(path, data):
    """Create *path* readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_self_signed(directory):
    """Return (cert path, key path, made now) of the development
    certificate in *directory*, making it first if it is not there yet."""
    directory = Path(directory)
    cert_path = directory / "api-selfsigned.crt"
    key_path = directory / "api-selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hostname = socket.gethostname()
    cert_pem, key_pem = make_self_signed(hostname, ("localhost", "127.0.0.1", "::1"))
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert_pem)
    return cert_path, key_path, True


def _read(path, key_path):
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}", key_path) from None


def load_certificates(path, key_path):
    """All certificates in a PEM file, leaf first."""
    data = _read(path, key_path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"no PEM certificate found in {path}", key_path)
    return [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs]


def _tls12_ciphers(ciphers):
    """The TLS 1.2 ciphers OpenSSL makes of the cipher string *ciphers*."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_cipher_list(ciphers.encode("ascii"))
    names = SSL.Connection(context, None).get_cipher_list()
    # TLS 1.3 suites are always listed; a cipher string does not choose them.
    return [n for n in names if not n.startswith("TLS_")]


def check_ciphers(ciphers):
    """What is wrong with the OpenSSL cipher string *ciphers*, or None."""
    try:
        if _tls12_ciphers(ciphers):
            return None
    except UnicodeEncodeError:
        return "expected an OpenSSL cipher string (ASCII)"
    except SSL.Error:
        pass
    return f"OpenSSL finds no TLS 1.2 cipher in {ciphers!r} (see `openssl ciphers -v '...'`)"


def server_options(cert_file, key_file, min_version="1.2", client_ca=None, where="api", *,
                   max_version=None, ciphers=None):
    """CertificateOptions for a TLS server; errors name the config key.

    *min_version* and *max_version* are "1.2" or "1.3" (no maximum: the
    highest OpenSSL has); *ciphers* an OpenSSL cipher string for TLS 1.2
    (TLS 1.3 suites stay OpenSSL's), default Twisted's list.
    """
    chain = load_certificates(cert_file, f"{where}.certificate")
    key_data = _read(key_file, f"{where}.private_key")
    try:
        key = ssl.KeyPair.load(key_data, crypto.FILETYPE_PEM)
    except Exception:
        raise ConfigError(f"no usable PEM private key in {key_file}", f"{where}.private_key") from None
    try:
        leaf = ssl.PrivateCertificate.fromCertificateAndKeyPair(chain[0], key)
    except Exception:
        raise ConfigError(
            f"the private key does not belong to the certificate in {cert_file}",
            f"{where}.private_key",
        ) from None
    kwargs = {}
    if max_version is not None:
        if max_version not in _TLS_VERSIONS or max_version < min_version:
            raise ConfigError(
                f"expected a max_version of at least {min_version}, got {max_version!r}",
                f"{where}.max_version")
        kwargs["lowerMaximumSecurityTo"] = _TLS_VERSIONS[max_version]
    if ciphers is not None:
        problem = check_ciphers(ciphers)
        if problem:
            raise ConfigError(problem, f"{where}.ciphers")
        kwargs["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(ciphers)
    if client_ca is not None:
        kwargs["verify"] = True
        kwargs["caCerts"] = [c.original for c in load_certificates(client_ca, f"{where}.client_ca")]
        kwargs["requireCertificate"] = True
    try:
        options = ssl.CertificateOptions(
            privateKey=leaf.privateKey.original,
            certificate=leaf.original,
            extraCertChain=[c.original for c in chain[1:]],
            raiseMinimumTo=_TLS_VERSIONS[min_version],
            **kwargs,
        )
    except Exception as e:
        raise ConfigError(f"certificate and key do not work together: {e}", f"{where}.private_key") from None
    if ciphers is not None:
        try:
            options.getContext()  # made once and kept: a bad list shows now, not per connection
        except Exception:
            raise ConfigError(f"OpenSSL cannot use the ciphers {ciphers!r} here",
                              f"{where}.ciphers") from None
    return options


def listener_options(listener, where="sip.tls"):
    """:func:`server_options` for a TLS listener's config section
    (``config.TlsListener``: certificate, private_key, client_ca,
    min_version, max_version, ciphers)."""
    return server_options(
        listener.certificate, listener.private_key, listener.min_version, listener.client_ca,
        where=where, max_version=listener.max_version, ciphers=listener.ciphers,
    )


def sip_client_options(listener, where="sip.tls"):
    """A function ``host -> client TLS options`` for SIP/TLS connections we
    open ourselves (a BYE to an SBC whose connection is gone).

    The peer is verified against ``client_ca`` (the CA of the SBCs'
    certificates) when it is set, else against the system's trust store,
    and by its host name or address; our own certificate is offered as
    the client certificate."""
    chain = load_certificates(listener.certificate, f"{where}.certificate")
    key_data = _read(listener.private_key, f"{where}.private_key")
    try:
        leaf = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            chain[0], ssl.KeyPair.load(key_data, crypto.FILETYPE_PEM))
    except Exception:
        raise ConfigError(f"no usable private key for the certificate in {listener.certificate}",
                          f"{where}.private_key") from None
    trust = None
    if listener.client_ca is not None:
        trust = ssl.trustRootFromCertificates(
            load_certificates(listener.client_ca, f"{where}.client_ca"))

    def options(host):
        return ssl.optionsForClientTLS(
            host, trustRoot=trust, clientCertificate=leaf,
            extraCertificateOptions={"raiseMinimumTo": _TLS_VERSIONS[listener.min_version]})

    return options
