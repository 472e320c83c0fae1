"""sip.tls protocol versions and cipher list: config errors that name the
key, and real TLS handshakes on loopback where a client limited to a
version or cipher the server refuses cannot connect while a good one can.

The server side is the daemon's own: the sip.tls section structured from
YAML data by siprecd.config, turned into a context by siprecd.tls, served
by Twisted's listenSSL. The client is Python's ssl module (another TLS
stack than the server's pyOpenSSL), in a thread.
"""

import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import protocol, threads

from harness.pki import Authority
from siprecd import config, tls
from siprecd.structure import ConfigError

ALLOWED = "ECDHE-ECDSA-AES256-GCM-SHA384"
REFUSED = "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = Authority("sip tls options CA", tmp_path_factory.mktemp("pki"))
    return ca, ca.issue_server(("localhost", "127.0.0.1"))


def sip_tls(pki, **options):
    ca, server = pki
    section = {"enabled": True, "certificate": str(server.certificate_path),
               "private_key": str(server.key_path), **options}
    return config.from_dict({"sip": {"tls": section}}).sip.tls


class _Hello(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"SIP/2.0 200 OK\r\n\r\n")


def listen(reactor, pki, **options):
    context = tls.listener_options(sip_tls(pki, **options), where="sip.tls")
    return reactor.listenSSL(0, protocol.Factory.forProtocol(_Hello), context,
                             interface="127.0.0.1")


def handshake(port, ca_path, max_version=None, min_version=None, ciphers=None):
    """(TLS version, cipher) the client got, or the error it failed with."""
    context = ssl.create_default_context(cafile=str(ca_path))
    if max_version:
        context.maximum_version = max_version
    if min_version:
        context.minimum_version = min_version
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.recv(100).startswith(b"SIP/2.0 200")
                return s.version(), s.cipher()[0]
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return e


async def client(port, pki, **kwargs):
    return await threads.deferToThread(handshake, port, pki[0].certificate_path, **kwargs)


def refused(result):
    return isinstance(result, Exception)


@pytest_twisted.ensureDeferred
async def test_cipher_list_refuses_other_ciphers(pki):
    from twisted.internet import reactor

    port = listen(reactor, pki, max_version="1.2", ciphers=ALLOWED)
    try:
        number = port.getHost().port
        bad = await client(number, pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers=REFUSED)
        assert refused(bad), bad
        good = await client(number, pki, max_version=ssl.TLSVersion.TLSv1_2,
                            ciphers=f"{REFUSED}:{ALLOWED}")
        assert good == ("TLSv1.2", ALLOWED)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_min_version_refuses_older_clients(pki):
    from twisted.internet import reactor

    port = listen(reactor, pki, min_version="1.3")
    try:
        number = port.getHost().port
        old = await client(number, pki, max_version=ssl.TLSVersion.TLSv1_2)
        assert refused(old), old
        good = await client(number, pki)
        assert not refused(good) and good[0] == "TLSv1.3"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_max_version_refuses_clients_that_want_newer(pki):
    from twisted.internet import reactor

    port = listen(reactor, pki, max_version="1.2")
    try:
        number = port.getHost().port
        new_only = await client(number, pki, min_version=ssl.TLSVersion.TLSv1_3)
        assert refused(new_only), new_only
        good = await client(number, pki)
        assert not refused(good) and good[0] == "TLSv1.2"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_defaults_still_take_both_versions(pki):
    from twisted.internet import reactor

    port = listen(reactor, pki)
    try:
        number = port.getHost().port
        assert (await client(number, pki, max_version=ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
        assert (await client(number, pki))[0] == "TLSv1.3"
    finally:
        await port.stopListening()


@pytest.mark.parametrize("options, key, message", [
    ({"ciphers": "NO-SUCH-CIPHER"}, "sip.tls.ciphers", "OpenSSL finds no TLS 1.2 cipher"),
    ({"ciphers": "TLS_AES_128_GCM_SHA256"}, "sip.tls.ciphers", "no TLS 1.2 cipher"),
    ({"ciphers": ""}, "sip.tls.ciphers", ""),
    ({"min_version": "1.3", "max_version": "1.2"}, "sip.tls.max_version", "at least min_version"),
    ({"max_version": "1.1"}, "sip.tls.max_version", "1.2"),
    ({"min_version": "1.0"}, "sip.tls.min_version", "1.2"),
])
def test_config_errors_name_the_key(pki, options, key, message):
    with pytest.raises(ConfigError) as e:
        sip_tls(pki, **options)
    assert str(e.value).startswith(f"{key}:") and message in str(e.value)


def test_server_options_checks_its_arguments_too(pki):
    _, server = pki
    with pytest.raises(ConfigError, match=r"^sip\.tls\.ciphers:"):
        tls.server_options(server.certificate_path, server.key_path, where="sip.tls",
                           ciphers="NULL-SHA256")
    with pytest.raises(ConfigError, match=r"^sip\.tls\.max_version:"):
        tls.server_options(server.certificate_path, server.key_path, "1.3", where="sip.tls",
                           max_version="1.2")
    # The old positional form still works.
    assert tls.server_options(server.certificate_path, server.key_path, "1.2", None, "sip.tls")


def test_check_config_reports_a_bad_cipher_string(pki, tmp_path, capsys):
    from siprecd import cli

    _, server = pki
    path = tmp_path / "siprecd.yaml"
    path.write_text(
        "sip:\n  tls:\n    enabled: true\n"
        f"    certificate: {server.certificate_path}\n    private_key: {server.key_path}\n"
        "    ciphers: 'WHAT-EVER'\n")
    assert cli.main(["check-config", "-c", str(path)]) != 0
    assert "sip.tls.ciphers" in capsys.readouterr().err
