"""Twisted transports for SIP: UDP, TCP and TLS sockets that hand bytes to
the endpoint (:mod:`siprecd.sip.endpoint`), and send what it returns.

Stream connections are framed by :class:`StreamParser` and kept in a table
by peer address, so requests we send (BYE) reuse the connection the SBC
opened, as SBCs expect (RFC 5923-style reuse).
"""

import ipaddress

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
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
        try:
            self.transport.write(data, addr)
        except OSError as e:
            Transports.log.info("cannot send to {address}: {error}",
                                address=f"{addr[0]}:{addr[1]}", error=str(e))


class SipStreamProtocol(protocol.Protocol):
    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.parser = StreamParser(factory.max_message_size)
        self.connected = False
        self.source = None

    def connectionMade(self):
        self.connected = True
        peer, local = self.transport.getPeer(), self.transport.getHost()
        self.source = Source(self.factory.kind, peer.host, peer.port, self, local.host, local.port)
        self.factory.transports.add_connection(self.factory.kind, peer.host, peer.port, self)

    def dataReceived(self, data):
        items = self.parser.feed(data)
        if items:
            self.factory.endpoint.stream_items(items, self.source)
        if self.parser.broken:
            self.log.info(
                "closing SIP/{kind} connection from {address}: framing lost",
                kind=self.factory.kind, address=f"{self.source.host}:{self.source.port}",
            )
            self.transport.loseConnection()

    def send(self, data):
        if self.connected:
            self.transport.write(data)

    def connectionLost(self, reason=protocol.connectionDone):
        self.connected = False
        if self.source is not None:
            self.factory.transports.remove_connection(
                self.factory.kind, self.source.host, self.source.port, self
            )


class SipStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, endpoint, transports, kind="TCP", max_message_size=65536):
        self.endpoint = endpoint
        self.transports = transports
        self.kind = kind
        self.max_message_size = max_message_size

    def buildProtocol(self, addr):
        return SipStreamProtocol(self)


class Transports:
    """Sends bytes to (transport, host, port): over the UDP socket, or over
    an open stream connection to that peer, opening a TCP one if needed."""

    log = Logger()

    def __init__(self, reactor):
        self.reactor = reactor
        self.udp = None
        self.connections = {}
        self._connecting = {}
        self.stream_factories = {}

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
        if transport != "TCP" or factory is None:
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
            pending = ep.connect(factory)
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
