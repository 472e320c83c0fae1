"""TLS to webhook targets over real sockets: custom CA bundle, the system
trust store, host name checks, TLS >= 1.2, and mutual TLS."""

import select
import socket
import time

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor, ssl, threads

from harness.pki import Authority, write_pem
from harness.receiver import Reply, WebhookReceiver
from harness.waiting import until
from siprecd import config as configmod
from siprecd.structure import ConfigError
from siprecd.webhooks.sender import DELIVERED, RETRY, TargetSender
from siprecd.webhooks.tls import ClientTLSPolicy

BODY = b'{"type":"transcript","messageId":"m-1"}'


@pytest.fixture
def authority(tmp_path):
    return Authority("server CA", tmp_path / "server-ca")


@pytest.fixture
def client_authority(tmp_path):
    return Authority("client CA", tmp_path / "client-ca")


def sender_for(url, **target):
    config = configmod.from_dict({"webhooks": {"targets": {"crm": {"url": url, "timeout": "5s",
                                                                     **target}}}})
    return TargetSender.from_config("crm", config.webhooks.targets["crm"], reactor, reactor, 2)


async def send_once(sender):
    try:
        return await sender.send(BODY, "m-1")
    finally:
        await sender.close()


@pytest_twisted.async_yield_fixture
async def receiver(authority):
    r = WebhookReceiver(reactor, authority).start()
    yield r
    await r.stop()


@pytest_twisted.ensureDeferred
async def test_a_custom_ca_bundle_verifies_the_receiver(receiver, authority):
    outcome = await send_once(sender_for(receiver.url(),
                                         ca_bundle=str(authority.certificate_path)))
    assert (outcome.kind, outcome.status) == (DELIVERED, 200)
    assert receiver.accepted[0].body == BODY


@pytest_twisted.ensureDeferred
async def test_the_wrong_ca_fails_clearly_and_sends_nothing(receiver, tmp_path):
    other = Authority("someone else's CA", tmp_path / "other")
    outcome = await send_once(sender_for(receiver.url(), ca_bundle=str(other.certificate_path)))
    assert outcome.kind == RETRY and outcome.status is None
    assert outcome.error == "TLS: certificate verify failed"
    assert receiver.received == []


@pytest_twisted.ensureDeferred
async def test_without_a_ca_bundle_the_system_trust_store_is_used(receiver):
    # The throwaway CA is in no system store, so verification must fail:
    # proof that an unconfigured target is not left unverified.
    outcome = await send_once(sender_for(receiver.url()))
    assert outcome.error == "TLS: certificate verify failed"
    assert receiver.received == []


@pytest_twisted.ensureDeferred
async def test_a_bundle_with_several_cas_trusts_each(receiver, authority, tmp_path):
    other = Authority("another CA", tmp_path / "other")
    bundle = write_pem(tmp_path / "bundle.pem", other.certificate_pem + authority.certificate_pem)
    outcome = await send_once(sender_for(receiver.url(), ca_bundle=str(bundle)))
    assert outcome.kind == DELIVERED


@pytest_twisted.ensureDeferred
async def test_the_certificate_must_name_the_host(authority):
    receiver = WebhookReceiver(reactor, authority, hostnames=("webhooks.example.com",)).start()
    try:
        outcome = await send_once(sender_for(receiver.url(),
                                             ca_bundle=str(authority.certificate_path)))
    finally:
        await receiver.stop()
    assert outcome.kind == RETRY
    assert outcome.error.startswith("TLS:")
    assert receiver.received == []


def _lenient_handshake(port):
    """The TLS version a client that accepts anything from TLS 1.0 gets."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_min_proto_version(SSL.TLS1_VERSION)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setblocking(False)
        connection = SSL.Connection(context, sock)
        connection.set_connect_state()
        deadline = time.monotonic() + 5
        while True:
            try:
                connection.do_handshake()
                return connection.get_protocol_version_name()
            except SSL.WantReadError:
                if time.monotonic() > deadline:
                    raise
                select.select([sock], [], [], 0.5)


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_only_speaks_tls_1_1_is_refused(authority):
    receiver = WebhookReceiver(reactor, authority, max_tls=ssl.TLSVersion.TLSv1_1).start()
    try:
        # The receiver does speak TLS 1.1 to a client that allows it...
        assert await threads.deferToThread(_lenient_handshake, receiver.port_number) == "TLSv1.1"
        # ...but siprecd never goes below TLS 1.2.
        outcome = await send_once(sender_for(receiver.url(),
                                             ca_bundle=str(authority.certificate_path)))
    finally:
        await receiver.stop()
    assert outcome.kind == RETRY
    assert outcome.error.startswith("TLS: ") and "protocol version" in outcome.error
    assert receiver.received == []


def test_connection_creators_are_built_once_per_host(authority):
    policy = ClientTLSPolicy.from_target(
        configmod.from_dict({"webhooks": {"targets": {"crm": {
            "url": "https://x.example", "ca_bundle": str(authority.certificate_path)}}}}
        ).webhooks.targets["crm"], "webhooks.targets.crm")
    creator = policy.creatorForNetloc(b"x.example", 443)
    assert policy.creatorForNetloc(b"x.example", 443) is creator
    assert policy.creatorForNetloc(b"y.example", 443) is not creator


@pytest_twisted.ensureDeferred
async def test_mutual_tls_presents_the_client_certificate(authority, client_authority):
    receiver = WebhookReceiver(reactor, authority, require_client_certificate=True,
                               client_authority=client_authority).start()
    client = client_authority.issue_client("siprecd-node-a")
    try:
        outcome = await send_once(sender_for(
            receiver.url(), ca_bundle=str(authority.certificate_path),
            client_certificate=str(client.certificate_path), client_key=str(client.key_path)))
    finally:
        await receiver.stop()
    assert outcome.kind == DELIVERED
    assert receiver.accepted[0].client_subject == "siprecd-node-a"


@pytest_twisted.ensureDeferred
async def test_mutual_tls_fails_without_a_client_certificate_or_with_an_untrusted_one(
        authority, client_authority, tmp_path):
    receiver = WebhookReceiver(reactor, authority, require_client_certificate=True,
                               client_authority=client_authority).start()
    stranger = Authority("stranger CA", tmp_path / "stranger").issue_client("intruder")
    try:
        bare = await send_once(sender_for(receiver.url(),
                                          ca_bundle=str(authority.certificate_path)))
        untrusted = await send_once(sender_for(
            receiver.url(), ca_bundle=str(authority.certificate_path),
            client_certificate=str(stranger.certificate_path),
            client_key=str(stranger.key_path)))
    finally:
        await receiver.stop()
    for outcome in (bare, untrusted):
        assert outcome.kind == RETRY and outcome.status is None
        assert outcome.error.startswith("TLS: "), outcome.error
    assert receiver.received == []


def test_tls_files_that_do_not_load_are_config_errors_naming_the_key(tmp_path, authority):
    client = authority.issue_client()
    other = authority.issue_client(name="other")
    config = configmod.from_dict({"webhooks": {"targets": {"crm": {
        "url": "https://x.example", "client_certificate": str(client.certificate_path),
        "client_key": str(other.key_path)}}}})
    with pytest.raises(ConfigError) as e:
        sender_for_config = config.webhooks.targets["crm"]
        TargetSender.from_config("crm", sender_for_config, reactor, reactor, 1)
    assert str(e.value).startswith("webhooks.targets.crm.client_key: the key does not belong")

    config = configmod.from_dict({"webhooks": {"targets": {"crm": {
        "url": "https://x.example", "ca_bundle": str(client.key_path)}}}})
    with pytest.raises(ConfigError, match=r"^webhooks.targets.crm.ca_bundle: no PEM certificate"):
        TargetSender.from_config("crm", config.webhooks.targets["crm"], reactor, reactor, 1)


# Opening the connection ahead of the first utterance -------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_connection_opened_ahead_carries_the_first_request_and_sends_nothing(
        receiver, authority):
    sender = sender_for(receiver.url(), ca_bundle=str(authority.certificate_path))
    try:
        await sender.open_ahead()
        await receiver.wait_for(lambda r: r.connections_made == 1, timeout=5,
                                what="the connection opened ahead")
        # Nothing is sent on it until there is something to deliver, and
        # one idle connection is enough.
        assert receiver.received == []
        assert await sender.http.open_ahead(sender.url) is False
        outcome = await sender.send(BODY, "m-1")
        assert (outcome.kind, outcome.status) == (DELIVERED, 200)
        assert receiver.connections_made == 1
    finally:
        await sender.close()
    assert receiver.accepted[0].body == BODY


@pytest_twisted.ensureDeferred
async def test_the_connection_opened_ahead_is_found_whatever_the_case_of_the_host(
        receiver, authority):
    sender = sender_for(receiver.url(host="LocalHost"), ca_bundle=str(authority.certificate_path))
    try:
        assert await sender.http.open_ahead(sender.url) is True
        outcome = await sender.send(BODY, "m-1")
    finally:
        await sender.close()
    assert outcome.kind == DELIVERED and receiver.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_opening_ahead_fails_quietly_and_the_delivery_says_why(receiver, tmp_path):
    other = Authority("someone else's CA", tmp_path / "other")
    sender = sender_for(receiver.url(), ca_bundle=str(other.certificate_path))
    refused = sender_for("https://127.0.0.1:9/hook", ca_bundle=str(other.certificate_path))
    try:
        assert await refused.http.open_ahead(refused.url) is False
        await sender.open_ahead()
        outcome = await sender.send(BODY, "m-1")
    finally:
        await sender.close()
        await refused.close()
    assert outcome.kind == RETRY and outcome.error == "TLS: certificate verify failed"
    assert receiver.received == []


@pytest_twisted.ensureDeferred
async def test_closing_cancels_a_connection_still_being_opened(authority):
    # A listener that never accepts, its queue filled: a new connection
    # attempt hangs (the kernel drops its SYNs).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    address = sock.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    sender = sender_for(f"https://127.0.0.1:{address[1]}/hook",
                        ca_bundle=str(authority.certificate_path))
    try:
        opening = sender.http.open_ahead(sender.url)
        assert not opening.called and sender.http.pool._opening
        await sender.close()
        assert await opening is False
        assert sender.http.pool._opening == {} and sender.http.pool._connections == {}
    finally:
        for s in fillers + [sock]:
            s.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_the_server_closed_does_not_count_as_one_opened_ahead(
        receiver, authority):
    sender = sender_for(receiver.url(), ca_bundle=str(authority.certificate_path))
    pool = sender.http.pool
    try:
        assert await sender.http.open_ahead(sender.url) is True
        await receiver.wait_for(lambda r: r.connections_made == 1, timeout=5)
        # The server closes it (a keep-alive timeout shorter than ours).
        for protocol in list(receiver._factory.protocols):
            protocol.transport.loseConnection()
        await until(lambda: all(c.state != "QUIESCENT" for cs in pool._connections.values()
                                for c in cs), 5, "the client to see the close", step=0.01)
        assert await sender.http.open_ahead(sender.url) is True
        await receiver.wait_for(lambda r: r.connections_made == 2, timeout=5)
        outcome = await sender.send(BODY, "m-1")
    finally:
        await sender.close()
    assert outcome.kind == DELIVERED and receiver.connections_made == 2


@pytest_twisted.ensureDeferred
async def test_a_connection_given_back_after_close_is_closed_not_kept(receiver, authority):
    receiver.script.append(Reply(200, delay=0.2))
    sender = sender_for(receiver.url(), ca_bundle=str(authority.certificate_path))
    pool = sender.http.pool
    sending = sender.send(BODY, "m-1")
    await receiver.wait_for(lambda r: len(r.received) == 1, timeout=5)
    await sender.close()                     # while the answer is on its way
    outcome = await sending
    assert outcome.kind == DELIVERED
    assert not any(c.state == "QUIESCENT" for cs in pool._connections.values() for c in cs)
    await until(lambda: not receiver._factory.protocols, 5, "the connection to be closed",
                step=0.01)
