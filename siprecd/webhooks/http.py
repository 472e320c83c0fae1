"""One HTTPS POST, bounded in time and in how much of the answer is kept.

:class:`HttpClient` is treq over a Twisted ``Agent`` with one persistent
``HTTPConnectionPool`` per webhook target. One pool per target, not one
for the process: Twisted keys pooled connections by scheme, host and port
only, so two targets on the same host with different client certificates
or CA bundles must never share a connection.

Redirects are not followed (a POST re-sent elsewhere without the
operator's say is a surprise, and treq's browser-like redirects would turn
it into a GET), cookies are never kept, and at most :data:`KEEP_BYTES` of
a response body is kept (for the error line); the rest is read and dropped
so that the connection can go back to the pool.

:meth:`HttpClient.open_ahead` opens a connection (TCP and, for https, the
TLS handshake with its certificate checks) and leaves it idle in the pool,
so that the first request of a call does not wait for it. No request is
sent on it until there is something to deliver.

:func:`describe_failure` turns what Twisted and OpenSSL raise into one
short line for logs and the outbox's ``last_error``; it never includes
request headers, so no secret can leak through it.
"""

from http.cookiejar import DefaultCookiePolicy

import attrs
import treq.client
from hyperlink import EncodedURL
from OpenSSL import SSL
from treq.cookies import IndexableCookieJar
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.python import failure as failuremod
from twisted.web import client as webclient
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

__all__ = ["HttpClient", "HttpResponse", "AttemptTimedOut", "describe_failure",
           "is_stale_connection", "KEEP_BYTES"]

KEEP_BYTES = 16 * 1024
# Servers commonly close idle keep-alive connections after 5-75 s; one we
# dropped first cannot be picked up just as the server closes it.
_IDLE_CONNECTION_TIMEOUT = 30


class AttemptTimedOut(Exception):
    """No complete answer within the target's timeout."""

    def __init__(self, timeout):
        super().__init__(f"timed out after {timeout:g}s")
        self.timeout = timeout


@attrs.frozen
class HttpResponse:
    code: int
    phrase: str
    headers: object          # twisted.web.http_headers.Headers
    body: bytes              # at most KEEP_BYTES of it

    def header(self, name):
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[-1].decode("latin-1") if values else None


class _KeepSome(Protocol):
    """Collects the first *limit* bytes of a body, drops the rest."""

    def __init__(self, finished, limit):
        self.finished = finished
        self.limit = limit
        self.parts = []
        self.kept = 0

    def dataReceived(self, data):
        if self.kept < self.limit:
            piece = data[: self.limit - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(webclient.ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)

    def abort(self, _deferred):
        # Cancelled (timeout) while the body trickles in: cut the
        # connection; the pool must not get it back half-read.
        if self.transport is not None:
            self.transport.stopProducing()


def _read_some(response, limit):
    protocol = _KeepSome(None, limit)
    finished = protocol.finished = defer.Deferred(protocol.abort)
    response.deliverBody(protocol)
    return finished


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Where the Agent connects for a URI, as Twisted's own Agent would
    (``HostnameEndpoint``, TLS for https with the target's policy); kept
    here so that :meth:`HttpClient.open_ahead` connects exactly the same
    way."""

    def __init__(self, reactor, tls_policy, connect_timeout):
        self.reactor = reactor
        self.tls_policy = tls_policy
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri):
        kwargs = {} if self.connect_timeout is None else {"timeout": self.connect_timeout}
        endpoint = HostnameEndpoint(self.reactor, uri.host.decode("ascii"), uri.port, **kwargs)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self.tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise webclient.SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


class _Pool(webclient.HTTPConnectionPool):
    """Twisted's pool, plus connections opened before a request needs one."""

    def __init__(self, reactor):
        super().__init__(reactor, persistent=True)
        self._opening = {}          # key -> Deferred of the connection being opened
        # Set by HttpClient.close(): a connection that comes back after it
        # (a request that was in flight) is closed, not kept.
        self.closed = False

    def has_idle(self, key):
        """Whether a usable idle connection for *key* is in the pool (or
        one is being opened). One the server has closed stays listed until
        its idle timeout but does not count."""
        return key in self._opening or any(
            c.state == "QUIESCENT" for c in self._connections.get(key, ()))

    def _putConnection(self, key, connection):
        if self.closed:
            connection.transport.loseConnection()
            return
        super()._putConnection(key, connection)

    def open_ahead(self, key, endpoint):
        """Open a connection for *key* and keep it idle in the pool (its
        usual idle timeout applies); a Deferred firing with True once it is
        in, or False when one was idle already. Fails as connecting failed."""
        if self.has_idle(key):
            return defer.succeed(False)
        d = self._opening[key] = self._newConnection(key, endpoint)

        def done(result):
            self._opening.pop(key, None)
            if isinstance(result, failuremod.Failure):
                return result
            self._putConnection(key, result)
            return True

        return d.addBoth(done)

    def closeCachedConnections(self):
        for opening in list(self._opening.values()):
            opening.cancel()
        return super().closeCachedConnections()


class HttpClient:
    """POSTs for one target through its own connection pool."""

    def __init__(self, reactor, tls_policy, max_connections, connect_timeout):
        self.reactor = reactor
        self.pool = _Pool(reactor)
        self.pool.maxPersistentPerHost = max_connections
        self.pool.cachedConnectionTimeout = _IDLE_CONNECTION_TIMEOUT
        self.endpoints = _Endpoints(reactor, tls_policy, connect_timeout)
        agent = webclient.Agent.usingEndpointFactory(reactor, self.endpoints, pool=self.pool)
        cookies = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self.client = treq.client.HTTPClient(agent, cookiejar=cookies)

    def post(self, url, body, headers, timeout):
        """A Deferred firing with an HttpResponse, or failing with
        AttemptTimedOut after *timeout* seconds, or with what the
        connection raised. Cancelling it aborts the request."""
        d = defer.ensureDeferred(self._post(url, body, headers))

        def timed_out(result, after):
            raise AttemptTimedOut(after)

        d.addTimeout(timeout, self.reactor, onTimeoutCancel=timed_out)
        return d

    async def _post(self, url, body, headers):
        self.pool.closed = False
        try:
            response = await self.client.post(url, data=body, headers=headers,
                                              allow_redirects=False, unbuffered=True)
        except Exception as e:
            # Twisted reports a cancelled request as ResponseNeverReceived
            # (CancelledError inside): to the caller it is a cancellation.
            if isinstance(e, defer.CancelledError) or any(
                    r.check(defer.CancelledError) for r in _reasons(e)):
                raise defer.CancelledError() from None
            raise
        kept = await _read_some(response, KEEP_BYTES)
        return HttpResponse(response.code, (response.phrase or b"").decode("latin-1"),
                            response.headers, kept)

    def open_ahead(self, url):
        """Open a connection to *url*'s server ahead of a request, unless the
        pool has an idle one (or one is being opened). A Deferred firing with
        True when one was opened; it never fails (the first request will
        say what is wrong)."""
        try:
            # The URL as treq hands it to the Agent, so that the key is the
            # one the first request looks its connection up by.
            text = url.decode("ascii") if isinstance(url, bytes) else url
            sent = EncodedURL.from_text(text).to_uri().to_text().encode("ascii")
            uri = webclient.URI.fromBytes(sent)
            key = (uri.scheme, uri.host, uri.port)
            endpoint = self.endpoints.endpointForURI(uri)
        except Exception:
            return defer.succeed(False)
        self.pool.closed = False
        d = self.pool.open_ahead(key, endpoint)
        d.addErrback(lambda _: False)
        return d

    def close(self):
        """Close idle pooled connections (fires when they are closed); one
        that a request in flight gives back later is closed too. A later
        request opens new ones."""
        self.pool.closed = True
        return self.pool.closeCachedConnections()


def _reasons(exc):
    return list(getattr(exc, "reasons", None) or [])


def is_stale_connection(exc):
    """True when a request failed because its connection closed before any
    answer, cleanly and for no reason of TLS or ours: the mark of a pooled
    keep-alive connection the server had just closed."""
    if not isinstance(exc, (webclient.ResponseNeverReceived, webclient.RequestTransmissionFailed,
                            webclient.RequestNotSent)):
        return False
    reasons = _reasons(exc)
    return bool(reasons) and all(r.check(error.ConnectionDone, error.ConnectionLost)
                                 and not r.check(defer.CancelledError) for r in reasons)


def _ssl_text(exc):
    parts = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            parts.append(str(entry[-1]))
    return ", ".join(p for p in parts if p) or str(exc) or "handshake failed"


def _one(exc):
    if isinstance(exc, AttemptTimedOut):
        return str(exc)
    if isinstance(exc, SSL.Error):
        return f"TLS: {_ssl_text(exc)}"
    name = type(exc).__name__
    if name == "VerificationError" or name.endswith("MismatchError"):
        # service_identity: the certificate does not name the URL's host.
        return "TLS: the server certificate does not match the host name"
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.DNSLookupError):
        # Twisted's text names the host (never the path or query): the
        # line then says what to fix.
        detail = " ".join(str(exc.args[0]).split())[:200] if exc.args else ""
        return f"DNS lookup failed: {detail}" if detail else "DNS lookup failed"
    if isinstance(exc, (error.TCPTimedOutError, error.TimeoutError)):
        return "connecting timed out"
    if isinstance(exc, error.ConnectingCancelledError):
        return "connecting was cancelled"
    if isinstance(exc, error.ConnectionDone):
        return "connection closed before a response"
    if isinstance(exc, error.ConnectionLost):
        return "connection lost before a response"
    if isinstance(exc, defer.CancelledError):
        return "cancelled"
    reasons = _reasons(exc)
    if reasons:
        # The interesting reason is the TLS one when there is one.
        texts = [_one(r.value) for r in reasons]
        tls = [t for t in texts if t.startswith("TLS")]
        return (tls or texts)[0]
    text = " ".join(str(exc).split())
    return f"{name}: {text[:200]}" if text else name


def describe_failure(reason):
    """One line (no secrets) for an exception or Failure of a request."""
    exc = reason.value if isinstance(reason, failuremod.Failure) else reason
    return _one(exc)
