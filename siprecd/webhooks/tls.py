"""How siprecd verifies a webhook target and proves itself to it over TLS.

One :class:`ClientTLSPolicy` per target (an ``IPolicyForHTTPS`` for
Twisted's ``Agent``, which treq uses): the server is verified against the
target's own CA bundle when it has one, else against the system trust
store; its certificate must name the host of the URL (a DNS or IP subject
alternative name, checked by service-identity); TLS 1.2 is the least
version offered; and when the target has ``client_certificate`` and
``client_key`` that certificate (with any intermediates that follow it in
the file) is presented for mutual TLS.

Everything is loaded once, when the service is built, so that a missing
file or a key that does not match its certificate is a configuration
error naming the key path, at start-up, rather than a failed delivery
at the first utterance.
"""

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from siprecd.structure import ConfigError
from siprecd.tls import load_certificates

__all__ = ["ClientTLSPolicy", "MINIMUM_TLS", "check_targets"]

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


def _client_certificate(cert_file, key_file, where):
    chain = load_certificates(cert_file, f"{where}.client_certificate")
    try:
        data = open(key_file, "rb").read()
    except OSError as e:
        raise ConfigError(f"cannot read {key_file}: {e.strerror or e}",
                          f"{where}.client_key") from None
    try:
        key = ssl.KeyPair.load(data, crypto.FILETYPE_PEM)
    except Exception:
        raise ConfigError(f"no usable PEM private key in {key_file}",
                          f"{where}.client_key") from None
    try:
        leaf = ssl.PrivateCertificate.fromCertificateAndKeyPair(chain[0], key)
    except Exception:
        raise ConfigError(f"the key does not belong to the certificate in {cert_file}",
                          f"{where}.client_key") from None
    return leaf, [c.original for c in chain[1:]]


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """TLS settings of one webhook target; see the module docstring.

    Connection creators are kept per host name: building one loads the
    trust roots into a new OpenSSL context, which is worth doing once and
    not for every connection a pool opens.
    """

    def __init__(self, trust_root=None, client_certificate=None, extra_chain=()):
        self.trust_root = trust_root if trust_root is not None else ssl.platformTrust()
        self.client_certificate = client_certificate
        self.extra_chain = list(extra_chain)
        self._creators = {}

    @classmethod
    def from_target(cls, target, where):
        """From a ``WebhookTarget``; *where* is its key path for errors
        (e.g. ``webhooks.targets.crm``)."""
        trust_root = None
        if target.ca_bundle is not None:
            authorities = load_certificates(target.ca_bundle, f"{where}.ca_bundle")
            trust_root = ssl.trustRootFromCertificates(authorities)
        client, chain = None, ()
        if target.client_certificate is not None:
            client, chain = _client_certificate(target.client_certificate, target.client_key,
                                                where)
        return cls(trust_root, client, chain)

    def creatorForNetloc(self, hostname, port):
        host = hostname.decode("ascii") if isinstance(hostname, bytes) else hostname
        creator = self._creators.get(host)
        if creator is None:
            extra = {"raiseMinimumTo": MINIMUM_TLS}
            if self.extra_chain:
                extra["extraCertChain"] = self.extra_chain
            creator = self._creators[host] = ssl.optionsForClientTLS(
                host, trustRoot=self.trust_root, clientCertificate=self.client_certificate,
                extraCertificateOptions=extra,
            )
        return creator


def check_targets(config, only=None):
    """Load the TLS material of every webhook target (or of the one named
    *only*), raising ConfigError (naming the key) for one that does not
    load: for ``check-config``, so a bad file is found before the daemon
    runs, not at start."""
    for name, target in config.webhooks.targets.items():
        if only is None or name == only:
            ClientTLSPolicy.from_target(target, f"webhooks.targets.{name}")
