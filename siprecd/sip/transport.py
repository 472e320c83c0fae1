"""Twisted transports for SIP: UDP, TCP and TLS sockets that hand bytes to
the sans-IO SIP core and send what it returns."""

from twisted.internet import protocol
from twisted.logger import Logger

__all__ = ["SipDatagramProtocol", "SipStreamFactory"]


class SipDatagramProtocol(protocol.DatagramProtocol):
    log = Logger()
    noisy = False

    def __init__(self, core):
        self.core = core

    def datagramReceived(self, data, addr):
        self.core.datagram_received(data, addr, self)


class SipStreamProtocol(protocol.Protocol):
    def __init__(self, core):
        self.core = core

    def dataReceived(self, data):
        self.core.stream_received(data, self)


class SipStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, core):
        self.core = core

    def buildProtocol(self, addr):
        p = SipStreamProtocol(self.core)
        p.factory = self
        return p
