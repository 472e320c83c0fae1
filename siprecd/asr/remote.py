"""The remote backend (``asr.backend: remote``): recognition on vosk-server
instances, over the vosk-server WebSocket protocol.

Each recogniser has its own WebSocket. On it siprecd sends, as the
vosk-server project's clients do:

1. a text message ``{"config": {"sample_rate": 8000, "words": 1}}``;
2. each chunk of 16-bit PCM as a binary message, answered by the server
   with a JSON text message: a partial result ``{"partial": ...}`` or, at
   one of the server's endpoints, a final one ``{"text": ..., "result":
   [{"word", "start", "end", "conf"}, ...]}``;
3. to end an utterance, the text message exactly ``{"eof" : 1}``, answered
   with the final result, after which the server closes the connection.

Interim results (``IPartialResults``): vosk-server answers every chunk
that does not end an utterance with ``{"partial": ...}`` anyway;
``accept_partial`` returns it (as an AsrResult with ``final=False``)
where ``accept`` drops it, so asking costs nothing more here.

The next chunk after ``finish()`` opens a new WebSocket; word times are
shifted by the audio given before it, so they stay on the stream's
timeline (seconds from the recogniser's first sample), as with the local
Vosk backend.

Servers come from ``asr.remote.urls``. A URL may end in ``#<language>``
(``ws://asr-es:2700#es-us``) to serve that language only; one without a
fragment serves every language in ``asr.models`` (whose values are not
used here: the model is the server's). New recognisers go round-robin to
the servers that are up. A server that refuses, times out or drops a
connection is taken out of the rotation and probed again after 0.5 s,
1 s, 2 s ... up to 30 s (a probe is a whole, empty session: config, then
``{"eof" : 1}`` answered by a result), and put back once it answers.

A recogniser whose connection cannot be made, or is lost mid-stream, fails
the Deferred of the call in flight with :class:`RemoteAsrError` (one line
naming the server and why); the pipeline decides what to do. The
recogniser stays usable: its next call opens a new connection to a server
that is up.

``start()`` fires once one server has answered a probe; while none has,
it keeps probing with backoff (and the node stays not ready), so a farm
that comes up after siprecd needs no restart.
"""

import json
from urllib.parse import urldefrag

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.asr.common import AsrNotReady, OneCallAtATime, normalise_language
from siprecd.asr.results import AsrResult, from_vosk_json, partial_from_vosk_json
from siprecd.interfaces import IASRBackend, IPartialResults, IRecognizer
from siprecd.structure import ConfigError

__all__ = ["RemoteBackend", "RemoteRecognizer", "RemoteAsrError", "EOF", "config_message",
           "backoff_delay"]

#: The end-of-stream message, byte for byte as vosk-server expects it.
EOF = '{"eof" : 1}'


def config_message(sample_rate):
    return json.dumps({"config": {"sample_rate": sample_rate, "words": 1}})


def backoff_delay(failures, initial=0.5, maximum=30.0):
    """Seconds to wait before probing a server again after *failures*
    failures in a row: initial, 2 x initial, 4 x initial ... at most maximum."""
    return min(maximum, initial * 2 ** max(0, failures - 1))


class RemoteAsrError(Exception):
    """An ASR server could not be reached or went away; ``str()`` is one line."""


class _Closed(Exception):
    """The WebSocket closed; the message says how."""


@attrs.define(eq=False)
class _Server:
    url: str            # as configured, for messages
    address: str        # the WebSocket URL (no fragment)
    language: object    # a tag, or None: every configured language
    up: bool = False
    failures: int = 0
    last_error: str = "not tried yet"
    retry: object = None  # IDelayedCall of the next probe


class _VoskServerProtocol(WebSocketClientProtocol):
    """One WebSocket to a vosk-server: one request, one reply, in turn."""

    def __init__(self):
        super().__init__()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self._reply = None

    def onOpen(self):
        if not self.opened.called:  # else it timed out and is being dropped
            self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        reply, self._reply = self._reply, None
        if reply is None:
            # 4002 (private use): a reply nobody asked for.
            self.sendClose(4002, "unexpected message: one reply per request")
            return
        reply.callback(payload)

    def onClose(self, wasClean, code, reason):
        why = _Closed(reason or (f"connection closed (code {code})" if code else "connection lost"))
        if not self.opened.called:
            self.opened.errback(why)
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.errback(why)
        if not self.closed.called:
            self.closed.callback(None)

    def request(self, payload, binary):
        """Send *payload*; a Deferred firing with the reply's bytes."""
        if self.closed.called:
            return defer.fail(_Closed("connection closed"))
        self._reply = defer.Deferred()
        self.sendMessage(payload if binary else payload.encode("utf-8"), isBinary=binary)
        return self._reply

    def send_text(self, text):
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def close(self):
        if self.closed.called:
            return
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        else:
            self.dropConnection(abort=True)


def _why(exc, timeout):
    """A short reason for a failed connection or request."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError, error.TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, error.DNSLookupError):
        return "host name not found"
    if isinstance(exc, error.ConnectError):
        return (exc.osError and str(exc.osError)) or type(exc).__name__
    return str(exc) or type(exc).__name__


@implementer(IASRBackend)
class RemoteBackend:
    """vosk-server instances over WebSocket; see the module doc."""

    log = Logger()
    name = "remote"

    def __init__(self, reactor, urls, languages, connect_timeout=5.0,
                 backoff_initial=0.5, backoff_max=30.0):
        self._reactor = reactor
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        configured = sorted({normalise_language(tag) for tag in languages})
        self._servers = []
        served = set()
        for n, url in enumerate(urls):
            address, fragment = urldefrag(url)
            language = normalise_language(fragment) if fragment else None
            served.update([language] if language else configured)
            if not address.startswith(("ws://", "wss://")):
                raise ConfigError(f"expected a ws:// or wss:// URL, got {url!r}",
                                  f"asr.remote.urls.{n}")
            self._servers.append(_Server(url, address, language))
        self._languages = sorted(served)
        self._turn = 0
        self._starting = None
        self._stopping = False
        self._connections = set()
        self._watchers = []
        self.ready = False

    @classmethod
    def from_config(cls, config, reactor):
        remote = config.asr.remote
        return cls(reactor, remote.urls, config.asr.models, remote.connect_timeout)

    def describe(self):
        """What start() is doing, for the readiness report."""
        urls = ", ".join(s.url for s in self._servers) or "none configured"
        return f"connecting to ASR servers: {urls}"

    @property
    def servers(self):
        """(url, up, last error) of each server, for health reports."""
        return [(s.url, s.up, s.last_error) for s in self._servers]

    def wait_for_state(self, url, up):
        """A Deferred that fires once the server configured as *url* is
        found up (``up=True``) or down (``up=False``): at once if it is
        already so after a first attempt."""
        [server] = [s for s in self._servers if s.url == url]
        tried = server.up or server.failures
        if tried and server.up == up:
            return defer.succeed(None)
        d = defer.Deferred()
        self._watchers.append((server, up, d))
        return d

    def _tell_watchers(self, server):
        keep = []
        for watched, up, d in self._watchers:
            if watched is server and server.up == up:
                d.callback(None)
            else:
                keep.append((watched, up, d))
        self._watchers = keep

    # IASRBackend -------------------------------------------------------------

    def languages(self):
        return list(self._languages)

    def start(self):
        if not self._servers:
            return defer.fail(ConfigError(
                "no vosk-server to connect to; list their addresses, e.g. ws://asr1:2700",
                "asr.remote.urls"))
        if not self._languages:
            return defer.fail(ConfigError(
                "no language to recognise; name one in asr.models or as a URL's #fragment",
                "asr.models"))
        self._stopping = False
        self._starting = defer.Deferred()
        for server in self._servers:
            self._probe(server)
        return self._starting

    def new_recognizer(self, language, sample_rate=8000):
        if not self.ready:
            raise AsrNotReady("the remote ASR backend has not reached any server yet")
        tag = normalise_language(language)
        if tag not in self._languages:
            raise ValueError(
                f"no ASR server for language {language!r} (served: {', '.join(self._languages)})")
        return RemoteRecognizer(self, tag, sample_rate)

    def stop(self):
        self._stopping = True
        self.ready = False
        for server in self._servers:
            if server.retry is not None and server.retry.active():
                server.retry.cancel()
            server.retry = None
        if self._starting is not None and not self._starting.called:
            self._starting.errback(AsrNotReady("stopped before any ASR server answered"))
        closing = [c.closed for c in self._connections if not c.closed.called]
        for connection in list(self._connections):
            connection.close()
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)

    # Servers -------------------------------------------------------------------

    def _probe(self, server):
        server.retry = None
        if not self._stopping:
            defer.ensureDeferred(self._probe_once(server))

    async def _probe_once(self, server):
        try:
            connection = await self._open(server)
            try:
                connection.send_text(config_message(8000))
                reply = await connection.request(EOF, binary=False)
            finally:
                connection.close()
        except Exception as e:
            self._down(server, e)
            return
        try:
            json.loads(reply)["text"]
        except (ValueError, KeyError, TypeError):
            self._down(server, f"not a vosk-server: it answered {reply[:60]!r}")
            return
        self._up(server)

    def _up(self, server):
        server.failures = 0
        server.last_error = ""
        if server.retry is not None and server.retry.active():
            server.retry.cancel()
        server.retry = None
        if not server.up:
            server.up = True
            self.log.info("asr: ASR server {url} is up", url=server.url)
        self._tell_watchers(server)
        if self._starting is not None and not self._starting.called:
            self.ready = True
            self._starting.callback(None)

    def _down(self, server, exc):
        why = exc if isinstance(exc, str) else _why(exc, self.connect_timeout)
        server.failures += 1
        server.last_error = why
        delay = backoff_delay(server.failures, self.backoff_initial, self.backoff_max)
        if server.up or server.failures == 1:
            self.log.warn(
                "asr: ASR server {url} is unavailable ({why}); trying again in {delay:g}s",
                url=server.url, why=why, delay=delay)
        server.up = False
        if not self._stopping and server.retry is None:
            server.retry = self._reactor.callLater(delay, self._probe, server)
        self._tell_watchers(server)

    def _rotation(self, language):
        """The servers that are up for *language*, starting at the next turn."""
        serving = [s for s in self._servers if s.up and s.language in (None, language)]
        if not serving:
            return []
        turn = self._turn % len(serving)
        self._turn += 1
        return serving[turn:] + serving[:turn]

    async def _open(self, server):
        """A connected _VoskServerProtocol to *server*, or an exception."""
        factory = WebSocketClientFactory(server.address, reactor=self._reactor)
        factory.protocol = _VoskServerProtocol
        factory.setProtocolOptions(
            openHandshakeTimeout=0,  # ours below, with a uniform message
            closeHandshakeTimeout=self.connect_timeout,
            # A server that dies without closing is noticed by its silence.
            autoPingInterval=max(self.connect_timeout, 5.0),
            autoPingTimeout=max(self.connect_timeout, 5.0),
        )
        endpoint = HostnameEndpoint(self._reactor, factory.host, factory.port,
                                    timeout=self.connect_timeout)
        if factory.isSecure:
            endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
        connecting = endpoint.connect(factory)
        connecting.addTimeout(self.connect_timeout, self._reactor)
        connection = await connecting
        self._connections.add(connection)
        connection.closed.addBoth(lambda _: self._connections.discard(connection))
        opened = connection.opened
        opened.addTimeout(self.connect_timeout, self._reactor)
        try:
            await opened
        except Exception:
            connection.dropConnection(abort=True)
            raise
        return connection

    async def _connect(self, language):
        """(server, connection) for a recogniser of *language*."""
        rotation = self._rotation(language)
        if not rotation:
            down = "; ".join(f"{s.url}: {s.last_error}" for s in self._servers
                             if s.language in (None, language)) or "none configured"
            raise RemoteAsrError(f"no ASR server for {language} is up ({down})")
        failed = []
        for server in rotation:
            try:
                connection = await self._open(server)
            except Exception as e:
                self._down(server, e)
                failed.append(f"{server.url}: {server.last_error}")
                continue
            return server, connection
        raise RemoteAsrError(f"no ASR server for {language} could be reached ({'; '.join(failed)})")

    def _lost(self, server, why):
        if not self._stopping:
            self._down(server, why)


# The interim result when no utterance is open.
_NOTHING_OPEN = AsrResult("", (), final=False)


@attrs.define(eq=False)
class _Session:
    server: _Server
    connection: _VoskServerProtocol
    first_sample: int   # the stream's sample this session's sample 0 is


@implementer(IRecognizer, IPartialResults)
class RemoteRecognizer(OneCallAtATime):
    """One stream's recognition on a vosk-server; see the module doc."""

    def __init__(self, backend, language, sample_rate=8000):
        self._backend = backend
        self.language = language
        self.sample_rate = sample_rate
        self._given = 0
        self._session = None

    def __repr__(self):
        return f"<RemoteRecognizer {self.language} at {id(self):#x}>"

    @property
    def server(self):
        """URL of the server of the current session, or None."""
        return self._session.server.url if self._session is not None else None

    def accept(self, pcm):
        return self._call(lambda: defer.ensureDeferred(self._accept(bytes(pcm))))

    def accept_partial(self, pcm):
        return self._call(lambda: defer.ensureDeferred(self._accept(bytes(pcm), True)))

    def finish(self):
        return self._call(lambda: defer.ensureDeferred(self._finish()))

    def _release(self):
        session, self._session = self._session, None
        if session is not None:
            session.connection.close()

    async def _accept(self, pcm, partial=False):
        if not pcm:
            return [_NOTHING_OPEN] if partial else []
        first = self._given
        self._given += len(pcm) // 2
        session = self._session
        if session is None:
            server, connection = await self._backend._connect(self.language)
            if self._closed:
                connection.close()
                return [_NOTHING_OPEN] if partial else []
            connection.send_text(config_message(self.sample_rate))
            session = self._session = _Session(server, connection, first)
        reply = await self._ask(session, pcm, binary=True)
        return self._parse(session, reply, partial)

    async def _finish(self):
        session, self._session = self._session, None
        if session is None:
            return []
        try:
            reply = await self._ask(session, EOF, binary=False)
        finally:
            session.connection.close()
        return self._parse(session, reply)

    async def _ask(self, session, payload, binary):
        try:
            return await session.connection.request(payload, binary)
        except _Closed as e:
            if self._session is session:
                self._session = None
            if not self._closed:
                self._backend._lost(session.server, str(e))
            raise RemoteAsrError(
                f"ASR server {session.server.url} went away mid-stream: {e}") from None

    def _parse(self, session, reply, partial=False):
        offset = session.first_sample / self.sample_rate
        try:
            results = from_vosk_json(reply, offset)
            if partial:
                document = json.loads(reply)
                # After an endpoint nothing is open until the next chunk.
                results.append(partial_from_vosk_json(document, offset)
                               if "partial" in document else _NOTHING_OPEN)
            return results
        except (ValueError, KeyError, TypeError) as e:
            if self._session is session:
                self._session = None
            session.connection.close()
            raise RemoteAsrError(
                f"ASR server {session.server.url} sent something that is not a Vosk result: {e}"
            ) from None
