"""The live WebSocket: an API request upgraded (autobahn over Twisted).

:class:`LiveEndpoint` is handed an authenticated, authorised API request
for ``GET /conversation/v1/live`` (the API checks credentials, rate limit
and app isolation first, as for every route) and answers it with the
WebSocket upgrade, on the same TLS connection, listener and port. Each
connection is a :class:`~siprecd.live.session.LiveSession` subscribed to
the :class:`~siprecd.live.hub.LiveHub`:

- it is subscribed before storage is read for a replay, so nothing falls
  between the replayed finals and the live ones;
- it is a push producer's consumer: when the transport's buffer is full
  Twisted pauses it and events queue, bounded (the session cuts off a
  client that does not keep up, close code 4008 with the reason);
- clients send nothing but control frames: a message of theirs is
  ignored, and frames are limited to 4 KiB;
- a connection that stops answering pings (``live.ping_interval``) is
  dropped; an HTTP idle timeout no longer applies once upgraded;
- at most ``live.max_connections`` connections, and
  ``live.max_connections_per_app`` per app (429-01 past them);
- when the node stops, every connection is closed with 4503 (reconnect,
  to another node if need be).
"""

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from siprecd.interfaces import StorageError
from siprecd.live.events import subscribed_event
from siprecd.live.hub import Subscription
from siprecd.live.request import LiveRefused
from siprecd.live.session import LiveSession

__all__ = ["LiveEndpoint", "REPLAY_LIMIT", "GOING_AWAY", "STORAGE_FAILED"]

# Finals replayed at most (the API's GET messages answers as many).
REPLAY_LIMIT = 1000
GOING_AWAY = 4503
STORAGE_FAILED = 4500
# Client frames carry nothing we use; control frames are small.
MAX_CLIENT_FRAME = 4096


class LiveEndpoint(service.Service):
    """See the module docstring. *hub* a LiveHub, *storage* the IStorage
    finals are replayed from, *clock* for timestamps."""

    name = "live"
    log = Logger()

    def __init__(self, hub, storage, reactor, *, max_connections=500, max_per_app=100,
                 max_events=1000, max_bytes=1 << 20, ping_interval=30.0, close_timeout=5.0):
        self.hub = hub
        self.storage = storage
        self.reactor = reactor
        self.max_connections = max_connections
        self.max_per_app = max_per_app
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.connections = set()
        self._per_app = {}
        self.factory = _Factory(self, reactor=reactor)
        self.factory.setProtocolOptions(
            maxFramePayloadSize=MAX_CLIENT_FRAME, maxMessagePayloadSize=MAX_CLIENT_FRAME,
            autoPingInterval=ping_interval, autoPingTimeout=ping_interval,
            openHandshakeTimeout=10.0, closeHandshakeTimeout=close_timeout,
            # A client that breaks the rules is told why (a close frame).
            failByDrop=False)

    @classmethod
    def from_config(cls, config, hub, storage, reactor):
        live = config.live
        return cls(hub, storage, reactor, max_connections=live.max_connections,
                   max_per_app=live.max_connections_per_app, max_events=live.queue_events,
                   max_bytes=live.queue_bytes, ping_interval=live.ping_interval)

    # -- from the API ---------------------------------------------------------------------

    def upgrade(self, request, app, wanted):
        """The resource that upgrades *request* (authenticated as *app*,
        allowed to see what *wanted*, a LiveRequest, names); LiveRefused
        when it is not a WebSocket request or a limit is reached."""
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket" or request.method != b"GET":
            raise LiveRefused("this path takes a WebSocket upgrade (GET with "
                              "Upgrade: websocket)")
        if not self.running:
            raise LiveRefused("the node is stopping", status=503, retry_after=5)
        if len(self.connections) >= self.max_connections:
            raise LiveRefused(f"this node serves at most {self.max_connections} live "
                              "connections", status=429, retry_after=5)
        if self._per_app.get(app.api_id, 0) >= self.max_per_app:
            raise LiveRefused(f"an app may hold at most {self.max_per_app} live connections",
                              status=429, retry_after=5)
        # The HTTP idle timeout must not end the WebSocket that replaces it.
        request.channel.setTimeout(None)
        return _Upgrade(self.factory, (app.api_id, wanted))

    # -- connections ----------------------------------------------------------------------

    def opened(self, protocol, app_id, wanted):
        self.connections.add(protocol)
        self._per_app[app_id] = self._per_app.get(app_id, 0) + 1
        session = LiveSession(protocol.send_text, protocol.cut, max_events=self.max_events,
                              max_bytes=self.max_bytes, positions=wanted.positions,
                              replay=wanted.replay)
        subscription = Subscription(app_id, wanted.guid, session.deliver, protocol.cut)
        protocol.session, protocol.subscription = session, subscription
        protocol.take_transport()
        self.hub.subscribe(subscription)
        self.log.info("live: {peer} connected for {what} (app {app_id})", peer=protocol.peer,
                      what=f"guid {wanted.guid}" if wanted.guid else "all its calls",
                      app_id=app_id, guid=wanted.guid)
        if wanted.replay:
            d = self.storage.messages_for_guid(wanted.guid, limit=REPLAY_LIMIT)
        else:
            d = defer.succeed([])
        d.addCallbacks(lambda messages: self._replay(session, subscription, messages),
                       lambda f: self._replay_failed(protocol, f))
        d.addErrback(lambda f: self.log.failure("live: starting a connection failed", f))

    def _replay(self, session, subscription, messages):
        if session.closed:
            return
        now = int(round(self.reactor.seconds() * 1000))
        # Counted once the replay is decided, so it says what will come.
        wanted = [m for m in messages
                  if m.sequence is not None and m.sequence > session.positions.get(m.stream_id, 0)]
        hello = subscribed_event(subscription.guid, self.hub.calls_for(subscription),
                                 len(wanted), now)
        session.replayed(wanted, then=[hello])

    def _replay_failed(self, protocol, failure):
        if failure.check(StorageError):
            self.log.warn("live: cannot read the finals to replay: {error}",
                          error=failure.getErrorMessage())
        else:
            self.log.failure("live: reading the finals to replay failed", failure)
        protocol.cut(STORAGE_FAILED, "cannot read the stored finals now; reconnect later")

    def closed(self, protocol, app_id, code, reason):
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        left = self._per_app.get(app_id, 1) - 1
        if left:
            self._per_app[app_id] = left
        else:
            self._per_app.pop(app_id, None)
        if protocol.subscription is not None:
            self.hub.unsubscribe(protocol.subscription)
        if protocol.session is not None:
            protocol.session.lost()
        self.log.info("live: {peer} disconnected (code {code}{why})", peer=protocol.peer,
                      code=code, why=f": {reason}" if reason else "", app_id=app_id)

    # -- life cycle -----------------------------------------------------------------------

    def stopService(self):
        service.Service.stopService(self)
        for protocol in list(self.connections):
            protocol.cut(GOING_AWAY, "the node is stopping")


class _Factory(WebSocketServerFactory):
    def __init__(self, endpoint, reactor):
        super().__init__(reactor=reactor)
        self.endpoint = endpoint
        self.protocol = _LiveProtocol
        self.next_context = None

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.context = self.next_context
        return protocol


class _Upgrade(Resource):
    """autobahn's resource (which takes the connection over), handing the
    API's checked context to the one protocol it builds (synchronously,
    inside render). A Resource, as the API's routes answer with."""

    isLeaf = True

    def __init__(self, factory, context):
        super().__init__()
        self.factory = factory
        self.context = context

    def render(self, request):
        self.factory.next_context = self.context
        try:
            result = WebSocketResource(self.factory).render(request)
        finally:
            self.factory.next_context = None
        # The connection is the WebSocket's now (autobahn answered the
        # handshake): the HTTP request is over, for whoever waits on it
        # (metrics), and lets go of the channel. On the next turn: this
        # render runs inside the API's own chain for the request.
        if result == NOT_DONE_YET:
            request.setResponseCode(101)
            self.factory.endpoint.reactor.callLater(0, _request_over, request)
        return result


def _request_over(request):
    if not request._disconnected:
        request.connectionLost(Failure(ConnectionDone("the connection is a WebSocket now")))


@implementer(IPushProducer)
class _Pacing:
    """What the transport tells when its buffer fills and empties."""

    def __init__(self, protocol):
        self.protocol = protocol

    def pauseProducing(self):
        if self.protocol.session is not None:
            self.protocol.session.pause()

    def resumeProducing(self):
        if self.protocol.session is not None:
            self.protocol.session.resume()

    def stopProducing(self):
        pass


class _LiveProtocol(WebSocketServerProtocol):
    context = None
    session = None
    subscription = None
    peer = "?"
    _cut = False

    def onConnect(self, request):
        self.peer = request.peer
        return None

    def onOpen(self):
        app_id, wanted = self.context
        self.factory.endpoint.opened(self, app_id, wanted)

    def take_transport(self):
        """Pace writes by the transport: the HTTP channel that was its
        producer is gone."""
        try:
            self.transport.unregisterProducer()
        except Exception:  # noqa: BLE001 - none was registered
            pass
        self.transport.registerProducer(_Pacing(self), True)

    def onMessage(self, payload, isBinary):
        pass  # clients have nothing to say; control frames are autobahn's

    def send_text(self, payload):
        if self.state != self.STATE_OPEN:
            return
        # autobahn applies one payload limit both ways: the small one is
        # for what clients send; what we send is bounded by the session.
        limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            self.sendMessage(payload, isBinary=False)
        finally:
            self.maxMessagePayloadSize = limit

    def cut(self, code, reason):
        """Close with *code* and *reason*; the peer has closeHandshakeTimeout
        to answer before the connection is dropped."""
        if self._cut:
            return
        self._cut = True
        if self.subscription is not None:
            self.factory.endpoint.hub.unsubscribe(self.subscription)
        if self.session is not None:
            self.session.lost()
        if self.state == self.STATE_OPEN:
            self.sendClose(code, reason[:120])
        else:
            self.dropConnection(abort=True)

    def onClose(self, wasClean, code, reason):
        if self.context is not None and self.session is not None:
            self.factory.endpoint.closed(self, self.context[0], code, reason)
