"""Test doubles for the SIP layer's neighbours, each implementing the real
interface (verified in the tests)."""

from twisted.internet import defer
from zope.interface import implementer

from siprecd.calls import CallRegistry
from siprecd.interfaces import ICallListener
from siprecd.sip.message import parse_message

__all__ = ["HeldCallListener", "SentMessages"]


@implementer(ICallListener)
class HeldCallListener(CallRegistry):
    """Test double: a call registry whose ``call_offered`` waits until the
    test fires the Deferred in ``held`` — the only way to hold an INVITE
    unanswered long enough to CANCEL it deterministically."""

    def __init__(self):
        super().__init__()
        self.held = []

    def call_offered(self, session):
        super().call_offered(session)
        d = defer.Deferred()
        self.held.append(d)
        return d


class SentMessages:
    """Test double for sip.transport.Transports: keeps what would be sent."""

    def __init__(self):
        self.sent = []

    def send(self, transport, host, port, data, connection=None):
        self.sent.append(((transport, host, port), parse_message(data)))

    def pop(self):
        out, self.sent = [m for _, m in self.sent], []
        return out
