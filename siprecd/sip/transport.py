"""Twisted transports for SIP: UDP, TCP and TLS sockets that hand bytes to
the endpoint (:mod:`siprecd.sip.endpoint`), and send what it returns.

Stream connections are framed by :class:`StreamParser` and kept in a table
by peer address, so requests we send (BYE) reuse the connection the SBC
opened, as SBCs expect (RFC 5923-style reuse). Where none is open, one is
opened (TCP, or TLS with the options ``Transports.tls_client_options``
makes for the peer).

A stream connection is held to account (``sip.connections``): it is
closed as soon as it is accepted when its source or the process is over
its cap (:class:`~siprecd.sip.limits.ConnectionLimits`); when part of a
message has waited ``message_timeout`` for the rest (a sender that
trickles or stalls: the deadline runs from the message's first byte and
is not pushed back by more bytes); and when it has been silent for
``idle_timeout`` while no dialog uses it (``in_use``), unless it comes
from a trusted source.
"""

import ipaddress

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.logger import Logger

from siprecd.sip.endpoint import Source
from siprecd.sip.message import StreamParser

__all__ = ["SipDatagramProtocol", "SipStreamFactory", "Transports"]


class SipDatagramProtocol(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, endpoint, transports):
        self.endpoint = endpoint
        self.transports = transports

    def startProtocol(self):
        self.transports.udp = self

    def datagramReceived(self, data, addr):
        local = self.transport.getHost()
        source = Source("UDP", addr[0], addr[1], None, local.host, local.port)
        self.endpoint.datagram_received(data, source)

    def send(self, data, addr):
        if self.transport is None:
            return      # the listener has stopped (a retransmission after shutdown)
        try:
            self.transport.write(data, addr)
        except OSError as e:
            Transports.log.info("cannot send to {address}: {error}",
                                address=f"{addr[0]}:{addr[1]}", error=str(e))


class SipStreamProtocol(protocol.Protocol):
    log = Logger()

    def __init__(self, factory, outgoing=False):
        self.factory = factory
        self.outgoing = outgoing
        self.parser = StreamParser(factory.max_message_size)
        self.connected = False
        self.source = None
        self.admitted = False
        self.trusted = False
        self._message_timer = None   # runs while part of a message is buffered
        self._idle_timer = None
        self._last_data = None

    def connectionMade(self):
        peer, local = self.transport.getPeer(), self.transport.getHost()
        limits = self.factory.limits
        if limits is not None and not self.outgoing:
            if not limits.admit(peer.host):
                self.transport.abortConnection()
                return
            self.admitted = True
            self.trusted = peer.host in limits.trusted
        self.connected = True
        self.source = Source(self.factory.kind, peer.host, peer.port, self, local.host, local.port)
        self.factory.transports.add_connection(self.factory.kind, peer.host, peer.port, self)
        self._last_data = self.factory.clock.seconds()
        self._arm_idle(self.factory.idle_timeout)

    def dataReceived(self, data):
        if not self.connected:
            return
        self._last_data = self.factory.clock.seconds()
        items = self.parser.feed(data)
        if items:
            self.factory.endpoint.stream_items(items, self.source)
        if self.parser.broken:
            self.log.info(
                "closing SIP/{kind} connection from {address}: framing lost",
                kind=self.factory.kind, address=f"{self.source.host}:{self.source.port}",
            )
            self.transport.loseConnection()
            return
        self._watch_message()

    def _watch_message(self):
        """Start the message deadline when part of a message is waiting;
        stop it when nothing is."""
        if self.parser.buffered:
            if self._message_timer is None and self.connected:
                self._message_timer = self.factory.clock.callLater(
                    self.factory.message_timeout, self._message_expired)
        elif self._message_timer is not None:
            self._message_timer.cancel()
            self._message_timer = None

    def _message_expired(self):
        self._message_timer = None
        if not self.connected:
            return
        if self.factory.limits is not None:
            self.factory.limits.counters["message_timeouts"] += 1
        self.log.info(
            "closing SIP/{kind} connection from {address}: {size} bytes of a message not "
            "completed within {timeout:g}s", kind=self.factory.kind,
            address=f"{self.source.host}:{self.source.port}", size=self.parser.buffered,
            timeout=self.factory.message_timeout)
        self.transport.abortConnection()

    def _arm_idle(self, delay):
        if self.factory.idle_timeout is None or self.trusted or not self.connected:
            return
        self._idle_timer = self.factory.clock.callLater(delay, self._idle_check)

    def _idle_check(self):
        self._idle_timer = None
        if not self.connected:
            return
        timeout = self.factory.idle_timeout
        silent = self.factory.clock.seconds() - self._last_data
        if silent < timeout or self.parser.buffered:
            self._arm_idle(max(timeout - silent, 0.1))
            return
        if self.factory.in_use(self):
            self._arm_idle(timeout)
            return
        if self.factory.limits is not None:
            self.factory.limits.counters["idle_timeouts"] += 1
        self.log.info("closing SIP/{kind} connection from {address}: idle for {timeout:g}s "
                      "with no dialog", kind=self.factory.kind,
                      address=f"{self.source.host}:{self.source.port}", timeout=timeout)
        self.transport.loseConnection()

    def send(self, data):
        if self.connected:
            self.transport.write(data)

    def connectionLost(self, reason=protocol.connectionDone):
        self.connected = False
        for timer in (self._message_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._message_timer = self._idle_timer = None
        if self.admitted:
            self.admitted = False
            self.factory.limits.closed(self.source.host)
        if self.source is not None:
            self.factory.transports.remove_connection(
                self.factory.kind, self.source.host, self.source.port, self
            )


class SipStreamFactory(protocol.Factory):
    """Connections of one kind ("TCP" or "TLS"), accepted or opened by us.

    *limits* (a ConnectionLimits) admits accepted connections; the
    timeouts are ``sip.connections``'; *in_use(protocol)* tells whether a
    dialog uses a connection (then it is never closed for being idle);
    *clock* is an IReactorTime."""

    noisy = False

    def __init__(self, endpoint, transports, kind="TCP", max_message_size=65536, *,
                 clock=None, limits=None, message_timeout=10.0, idle_timeout=None,
                 in_use=lambda connection: False):
        self.endpoint = endpoint
        self.transports = transports
        self.kind = kind
        self.max_message_size = max_message_size
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.limits = limits
        self.message_timeout = message_timeout
        self.idle_timeout = idle_timeout
        self.in_use = in_use

    def buildProtocol(self, addr):
        return SipStreamProtocol(self)

    def outgoing(self):
        """A factory for connections we open (not counted against the
        limits of accepted ones)."""
        return _OutgoingFactory(self)


class _OutgoingFactory(protocol.Factory):
    noisy = False

    def __init__(self, factory):
        self.factory = factory

    def buildProtocol(self, addr):
        return SipStreamProtocol(self.factory, outgoing=True)


class Transports:
    """Sends bytes to (transport, host, port): over the UDP socket, or over
    an open stream connection to that peer, opening a TCP one if needed."""

    log = Logger()

    def __init__(self, reactor, tls_client_options=None):
        self.reactor = reactor
        self.udp = None
        self.connections = {}
        self._connecting = {}
        self.stream_factories = {}
        # tls_client_options(host) -> IOpenSSLClientConnectionCreator for
        # connections we open over TLS; None: we open none.
        self.tls_client_options = tls_client_options

    def add_connection(self, kind, host, port, proto):
        self.connections[(kind, host, port)] = proto

    def remove_connection(self, kind, host, port, proto):
        if self.connections.get((kind, host, port)) is proto:
            del self.connections[(kind, host, port)]

    def send(self, transport, host, port, data, connection=None):
        transport = transport.upper()
        if transport == "UDP":
            if self.udp is None:
                self.log.warn("no UDP listener to send from; dropped")
                return
            self._resolve(host).addCallbacks(
                lambda ip: self.udp.send(data, (ip, port)),
                lambda f: self.log.info("cannot resolve {host}: {e}", host=host,
                                        e=f.getErrorMessage()),
            )
            return
        if connection is not None and getattr(connection, "connected", False):
            connection.send(data)
            return
        proto = self.connections.get((transport, host, port))
        if proto is not None and proto.connected:
            proto.send(data)
            return
        self._connect(transport, host, port).addCallback(lambda p: p.send(data))

    def _resolve(self, host):
        try:
            ipaddress.ip_address(host.strip("[]"))
            return defer.succeed(host.strip("[]"))
        except ValueError:
            return self.reactor.resolve(host)

    def _connect(self, transport, host, port):
        factory = self.stream_factories.get(transport)
        if factory is None or (transport == "TLS" and self.tls_client_options is None):
            self.log.info("no open SIP/{t} connection to {address}; message dropped",
                          t=transport, address=f"{host}:{port}")
            return defer.Deferred()
        key = (transport, host, port)
        pending = self._connecting.get(key)
        if pending is None:
            try:
                ipaddress.IPv6Address(host.strip("[]"))
                ep = TCP6ClientEndpoint(self.reactor, host.strip("[]"), port, timeout=10)
            except ValueError:
                ep = TCP4ClientEndpoint(self.reactor, host, port, timeout=10)
            if transport == "TLS":
                try:
                    ep = wrapClientTLS(self.tls_client_options(host.strip("[]")), ep)
                except Exception as e:
                    self.log.warn("cannot open SIP/TLS to {address}: {error}",
                                  address=f"{host}:{port}", error=str(e))
                    return defer.Deferred()
            pending = defer.maybeDeferred(ep.connect, factory.outgoing())
            pending.addBoth(self._connected, key)
            self._connecting[key] = pending = _Fanout(pending)
        return pending.wait()

    def _connected(self, result, key):
        self._connecting.pop(key, None)
        if not hasattr(result, "send"):
            self.log.info("cannot connect to {address}: {e}",
                          address=f"{key[1]}:{key[2]}", e=getattr(result, "getErrorMessage", str)())
            return None
        return result


class _Fanout:
    """One connection attempt, many waiters."""

    def __init__(self, d):
        self._waiters = []
        self._result = None
        self._done = False
        d.addCallback(self._fire)

    def _fire(self, result):
        self._done, self._result = True, result
        for w in self._waiters:
            if result is not None:
                w.callback(result)
        self._waiters = []

    def wait(self):
        if self._done:
            return defer.succeed(self._result) if self._result is not None else defer.Deferred()
        d = defer.Deferred()
        self._waiters.append(d)
        return d
