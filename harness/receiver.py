"""A real HTTPS webhook receiver (and OAuth2 token endpoint) for tests and benches.

:class:`WebhookReceiver` listens with TLS on 127.0.0.1 (port 0 unless told
otherwise) in the caller's reactor, optionally asks for and verifies a
client certificate (mTLS), and records every request (path, query,
headers, body, client certificate) before it answers. What it answers is
scripted: a queue of :class:`Reply` first, then a ``behaviour`` callable,
so a test can fail requests with 5xx, send ``Retry-After``, answer 410,
or hold a response past the sender's timeout. A held response the client
gave up on is marked ``answered=False``: that is a request the receiver
*did* get although the sender saw a timeout, i.e. a duplicate to come.

With a :class:`TokenIssuer` it also serves an OAuth2 token endpoint
(RFC 6749 §4.4, client_credentials) at ``/token`` and accepts webhook
requests only with a Bearer token it issued and has not revoked.

Waiting is on the real event with a bounded timeout (:meth:`wait_for`),
never on sleeps. :func:`seed_streams` and :func:`add_utterances` put
app-less calls, streams and messages with outbox rows straight into
storage, as the transcription service would.
"""

import base64
import json
import secrets
import time
import uuid
from urllib.parse import parse_qs, unquote

import attrs
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer, ssl
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from siprecd.storage.records import Call, Message, Stream

__all__ = [
    "Reply", "Received", "TokenIssuer", "WebhookReceiver", "seed_streams", "add_utterances",
    "webhook_config", "until",
]


@attrs.define
class Reply:
    """One scripted answer. *delay*: seconds before answering (the request
    is recorded when it arrives, whatever the delay)."""

    status: int = 200
    headers: dict = attrs.field(factory=dict)
    body: bytes = b'{"ok": true}'
    delay: float = 0.0


@attrs.define
class Received:
    """One request as the receiver saw it; header names are lower case."""

    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    client_subject: str | None
    at: float
    status: int | None = None
    # True once the response was written; False if the client left first.
    answered: bool | None = None

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def accepted(self):
        return self.status is not None and 200 <= self.status < 300


class TokenIssuer:
    """Issues Bearer tokens for the client_credentials grant.

    *client_auth*: "basic", "body" or "any" (which client authentication
    RFC 6749 §2.3.1 forms are taken). Every fetch is kept in ``fetches``.
    """

    def __init__(self, client_id, client_secret, expires_in=3600, scope=None,
                 client_auth="any"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.scope = scope
        self.client_auth = client_auth
        self.fetches = []
        self.valid = set()
        self.status = None  # set to e.g. 503 to fail fetches

    def revoke_all(self):
        """Every token issued so far is refused from now on (a 401 follows)."""
        self.valid.clear()

    def _client(self, request, form):
        header = request.getHeader("authorization") or ""
        if header.lower().startswith("basic ") and self.client_auth in ("basic", "any"):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None, "basic"
            # RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
            return (unquote(user.replace("+", " ")), unquote(password.replace("+", " "))), "basic"
        if "client_id" in form and self.client_auth in ("body", "any"):
            return (form["client_id"][0], form.get("client_secret", [""])[0]), "body"
        return None, None

    def render(self, request):
        form = parse_qs(request.content.read().decode("ascii", "replace"))
        client, how = self._client(request, form)
        self.fetches.append({"grant_type": form.get("grant_type", [None])[0],
                             "scope": form.get("scope", [None])[0], "client_auth": how,
                             "content_type": request.getHeader("content-type")})
        request.setHeader("content-type", "application/json")
        request.setHeader("cache-control", "no-store")
        if self.status is not None:
            request.setResponseCode(self.status)
            return b'{"error": "temporarily_unavailable"}'
        if client != (self.client_id, self.client_secret):
            request.setResponseCode(401)
            return b'{"error": "invalid_client"}'
        if form.get("grant_type") != ["client_credentials"]:
            request.setResponseCode(400)
            return b'{"error": "unsupported_grant_type"}'
        token = f"tok-{len(self.fetches)}-{secrets.token_hex(8)}"
        self.valid.add(token)
        answer = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        if self.scope is not None:
            answer["scope"] = self.scope
        return json.dumps(answer).encode()


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, receiver):
        super().__init__()
        self.receiver = receiver

    def render(self, request):
        return self.receiver._render(request)


class _CountingFactory(WrappingFactory):
    def __init__(self, site, receiver):
        super().__init__(site)
        self.receiver = receiver

    def buildProtocol(self, addr):
        self.receiver.connections_made += 1
        protocol = super().buildProtocol(addr)
        self.receiver._check_waiters()
        return protocol


class WebhookReceiver:
    """See the module docstring. ``behaviour(received) -> Reply`` decides
    every answer the script queue does not."""

    log = Logger()

    def __init__(self, reactor, authority, require_client_certificate=False,
                 client_authority=None, tokens=None, behaviour=None,
                 require_header=None, require_query=None, hostnames=("127.0.0.1", "localhost"),
                 max_tls=None):
        self.reactor = reactor
        self.authority = authority
        self.server = authority.issue_server(hostnames, name="receiver")
        self.require_client_certificate = require_client_certificate
        self.client_authority = client_authority or authority
        self.tokens = tokens
        self.behaviour = behaviour or (lambda received: Reply())
        self.require_header = require_header
        self.require_query = require_query
        # e.g. ssl.TLSVersion.TLSv1_1: an outdated server, to show that
        # siprecd refuses to talk to it.
        self.max_tls = max_tls
        self.script = []
        self.received = []
        # TLS connections accepted (each counted when its TCP connection is).
        self.connections_made = 0
        self.port = None
        self.port_number = None
        self._factory = None
        self._waiters = []

    # Life cycle ------------------------------------------------------------

    def _context(self):
        cert = ssl.PrivateCertificate.loadPEM(self.server.certificate_pem + self.server.key_pem)
        kwargs = {}
        if self.require_client_certificate:
            ca = crypto.load_certificate(crypto.FILETYPE_PEM,
                                         self.client_authority.certificate_pem)
            kwargs = {"verify": True, "caCerts": [ca], "requireCertificate": True}
        if self.max_tls is not None:
            options = ssl.CertificateOptions(
                privateKey=cert.privateKey.original, certificate=cert.original,
                insecurelyLowerMinimumTo=ssl.TLSVersion.TLSv1_0,
                lowerMaximumSecurityTo=self.max_tls, **kwargs,
            )
            # The system's OpenSSL policy may set its own floor: lift it on
            # the (cached) context before any connection uses it.
            context = options.getContext()
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            context.set_min_proto_version(SSL.TLS1_VERSION)
            context.set_max_proto_version(
                SSL.TLS1_1_VERSION if self.max_tls == ssl.TLSVersion.TLSv1_1
                else SSL.TLS1_VERSION)
            return options
        return ssl.CertificateOptions(
            privateKey=cert.privateKey.original, certificate=cert.original,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **kwargs,
        )

    def start(self, port=None):
        """Listen (again: on the same port as before unless *port* is given)."""
        if port is None:
            port = self.port_number or 0
        site = server.Site(_Root(self))
        site.noisy = False
        site.timeOut = None
        # No access log: it would print the query (a secret token, in the
        # tests that check that siprecd never logs it).
        site.log = lambda request: None
        self._factory = _CountingFactory(site, self)
        self._factory.noisy = False
        # A deep accept queue: with Twisted's default of 50, a burst of
        # new connections loses SYNs, and a retransmitted SYN costs a
        # second, which a sender with a short timeout sees as a timeout.
        self.port = self.reactor.listenSSL(port, self._factory, self._context(),
                                           backlog=1024, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self

    def stop(self):
        """Stop listening and cut every open connection (as a crash would)."""
        port, self.port = self.port, None
        for protocol in list(self._factory.protocols if self._factory else ()):
            protocol.transport.abortConnection()
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    def url(self, path="/hook", host="127.0.0.1"):
        return f"https://{host}:{self.port_number}{path}"

    @property
    def token_url(self):
        return self.url("/token")

    # What came in -------------------------------------------------------------

    @property
    def accepted(self):
        return [r for r in self.received if r.accepted]

    def accepted_json(self):
        return [r.json for r in self.accepted]

    def wait_for(self, predicate, timeout=15.0, what="the expected requests"):
        """A Deferred firing with this receiver once ``predicate(self)`` is
        true (checked after every connection, request and answer); fails with
        TimeoutError naming *what* after *timeout* seconds."""
        if predicate(self):
            return defer.succeed(self)
        d = defer.Deferred()
        waiter = (predicate, d)
        self._waiters.append(waiter)

        def expire():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                d.errback(defer.TimeoutError(
                    f"timed out after {timeout}s waiting for {what} "
                    f"({len(self.received)} requests, {len(self.accepted)} accepted)"))

        call = self.reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def wait_for_accepted(self, count, timeout=15.0):
        return self.wait_for(lambda r: len(r.accepted) >= count, timeout,
                             f"{count} accepted requests")

    def _check_waiters(self):
        for waiter in list(self._waiters):
            predicate, d = waiter
            if waiter in self._waiters and predicate(self):
                self._waiters.remove(waiter)
                d.callback(self)

    # Answering ----------------------------------------------------------------

    def _client_subject(self, request):
        try:
            cert = request.channel.transport.getPeerCertificate()
        except Exception:
            return None
        if cert is None:
            return None
        names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return names[0].value if names else None

    def _render(self, request):
        path = request.path.decode()
        if self.tokens is not None and path == "/token" and request.method == b"POST":
            return self.tokens.render(request)
        received = Received(
            method=request.method.decode(), path=path,
            query={k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            headers={k.decode().lower(): v[-1].decode()
                     for k, v in request.requestHeaders.getAllRawHeaders()},
            body=request.content.read(), client_subject=self._client_subject(request),
            at=time.monotonic(),
        )
        reply = self._decide(received)
        received.status = reply.status
        self.received.append(received)

        def answer():
            if received.answered is not None:
                return
            request.setResponseCode(reply.status)
            for name, value in reply.headers.items():
                request.setHeader(name, str(value))
            request.setHeader("content-type", "application/json")
            request.write(reply.body)
            request.finish()
            received.answered = True
            self._check_waiters()

        def gone(reason):
            if received.answered is None:
                received.answered = False
                if pending is not None and pending.active():
                    pending.cancel()
                self._check_waiters()

        pending = None
        request.notifyFinish().addErrback(gone)
        if reply.delay > 0:
            pending = self.reactor.callLater(reply.delay, answer)
        else:
            answer()
        self._check_waiters()
        return server.NOT_DONE_YET

    def _decide(self, received):
        if self.require_header is not None:
            name, value = self.require_header
            if received.headers.get(name.lower()) != value:
                return Reply(401, body=b'{"error": "bad secret"}')
        if self.require_query is not None:
            name, value = self.require_query
            if received.query.get(name) != [value]:
                return Reply(401, body=b'{"error": "bad secret"}')
        if self.tokens is not None:
            auth = received.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens.valid:
                return Reply(401, {"www-authenticate": 'Bearer error="invalid_token"'},
                             b'{"error": "invalid_token"}')
        if self.script:
            return self.script.pop(0)
        return self.behaviour(received)


# Seeding the outbox -------------------------------------------------------------


async def seed_streams(storage, count, now_ms=None, node="test-node", prefix="seed"):
    """*count* app-less streams (one call, one leg each); fires with them."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    streams = []
    for n in range(count):
        guid = f"{prefix}-{n}-{uuid.uuid4().hex[:8]}"
        await storage.upsert_call(Call(guid, f"{guid}@test", node, now_ms), now=now_ms)
        leg = await storage.start_leg(guid, f"cust-{n}", f"agent-{n}",
                                      {"language": "en-US"}, now=now_ms)
        stream = Stream(str(uuid.uuid4()), guid, leg.id, "customer", f"cust-{n}", now_ms,
                        label="1")
        await storage.upsert_stream(stream, now=now_ms)
        streams.append(stream)
    return streams


def add_utterances(storage, streams, per_stream, targets, created_ms=None, interleave=True):
    """Add *per_stream* messages to each stream (with outbox rows for
    *targets*); fires with the list of Message written, in the order added.
    Interleaved across streams, as concurrent calls produce them."""
    created_ms = int(time.time() * 1000) if created_ms is None else created_ms
    order = ([(n, s) for n in range(per_stream) for s in streams] if interleave
             else [(n, s) for s in streams for n in range(per_stream)])
    written = []
    writes = []
    for n, stream in order:
        message = Message(str(uuid.uuid4()), stream.id, f"utterance {n}", n * 1000,
                          n * 1000 + 800, created_ms)
        written.append(message)
        writes.append(storage.add_message(message, targets))
    return defer.gatherResults(writes, consumeErrors=True).addCallback(lambda _: written)


def webhook_config(state_dir, targets, node="test-node", **webhooks):
    """A Config whose ``webhooks`` section has *targets* (dicts, as in the
    YAML) and the other *webhooks* settings; state in *state_dir*."""
    from siprecd import config as configmod

    return configmod.from_dict({
        "state_dir": str(state_dir), "node": {"id": node},
        "webhooks": {"targets": targets, **webhooks},
    })


def until(service, predicate, timeout=15.0, what="the expected deliveries"):
    """A Deferred firing once ``predicate(service)`` holds for a
    WebhookService (or a list of them, e.g. two nodes), checked after
    every outcome any of them stores (through their ``on_outcome`` hooks); fails
    with TimeoutError naming *what* after *timeout* seconds."""
    from twisted.internet import reactor

    services = list(service) if isinstance(service, (list, tuple)) else [service]
    if predicate(service):
        return defer.succeed(service)
    d = defer.Deferred()

    def check(item, outcome):
        if not d.called and predicate(service):
            # Not from inside the service's own callback chain.
            reactor.callLater(0, lambda: d.called or d.callback(service))

    def expire():
        if not d.called:
            stats = [dict(s.stats) for s in services]
            d.errback(defer.TimeoutError(
                f"timed out after {timeout}s waiting for {what} (stats: {stats})"))

    for s in services:
        s.on_outcome.add(check)
    timer = reactor.callLater(timeout, expire)

    def cleanup(result):
        for s in services:
            s.on_outcome.remove(check)
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(cleanup)
