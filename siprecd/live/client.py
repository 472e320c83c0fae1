"""A client of the live WebSocket (for ``siprecd watch``, tools and tests).

:func:`connect` opens ``wss://HOST:PORT/conversation/v1/live`` with the
app's credentials in the API's headers and hands every event (a dict) to
``on_event``; it fires with the :class:`LiveConnection` once the upgrade
is done. The connection keeps, per stream, the last final ``sequence``
it got (:attr:`LiveConnection.positions`): pass them as *after* to
:func:`connect` again to get exactly the finals missed meanwhile.
"""

import json
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

__all__ = ["connect", "LiveConnection", "live_path"]

PATH = "/conversation/v1/live"


def live_path(guid=None, after=None, replay=False):
    """The path and query for *guid* (None: every call of the app), with
    *after* ({stream id: sequence}) or *replay*."""
    query = []
    if guid is not None:
        query.append(("externalId", guid))
    if after is not None:
        query.append(("after", ",".join(f"{s}:{n}" for s, n in sorted(after.items()))))
    if replay:
        query.append(("replay", "true"))
    return PATH + ("?" + urlencode(query) if query else "")


class LiveConnection(WebSocketClientProtocol):
    """One connection: ``on_event(dict)`` for each event, ``closed`` a
    Deferred firing with (code, reason) when it ends."""

    on_event = None

    def __init__(self):
        super().__init__()
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.positions = {}
        self.events = 0

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        event = json.loads(payload.decode("utf-8"))
        self.events += 1
        if event.get("event") == "final" and isinstance(event.get("sequence"), int):
            self.positions[event["streamId"]] = event["sequence"]
        if self.on_event is not None:
            self.on_event(event)

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError(
                f"the live connection was refused or lost: {reason or code}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def stop_reading(self):
        """Stop reading from the socket (a client that does not keep up)."""
        self.transport.pauseProducing()

    def start_reading(self):
        self.transport.resumeProducing()

    def close(self, code=1000):
        if self.state == self.STATE_OPEN:
            self.sendClose(code)


def connect(reactor, host, port, api_id, secret, *, guid=None, after=None, replay=False,
            on_event=None, cafile=None, id_header="asapp-api-id",
            secret_header="asapp-api-secret", timeout=30.0):
    """Connect; a Deferred firing with the open LiveConnection, or failing
    with the server's refusal (its error message) or the network error.
    *cafile*: PEM file of the CA (or self-signed certificate) to trust
    (None: the system's); the certificate must name *host* (the API's
    development certificate names localhost and 127.0.0.1)."""
    path = live_path(guid, after, replay)
    url = f"wss://{host}:{port}{path}"
    factory = WebSocketClientFactory(url, headers={id_header: api_id, secret_header: secret},
                                     reactor=reactor)
    factory.protocol = LiveConnection
    factory.setProtocolOptions(openHandshakeTimeout=timeout, closeHandshakeTimeout=5.0,
                               autoPingInterval=30.0, autoPingTimeout=30.0,
                               maxMessagePayloadSize=8 << 20)
    if cafile is not None:
        with open(cafile, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    else:
        trust = None
    options = ssl.optionsForClientTLS(host, trustRoot=trust)
    endpoint = wrapClientTLS(options, HostnameEndpoint(reactor, host, port, timeout=timeout))

    async def run():
        protocol = await endpoint.connect(factory)
        protocol.on_event = on_event
        return await protocol.opened

    return defer.ensureDeferred(run())

