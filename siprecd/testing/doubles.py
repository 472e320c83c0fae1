"""Test doubles for the neighbours of the SIP layer and of the API.

Each stands in for a real part and offers that part's interface: the ones
with a zope interface (``ICallListener``, ``IStorage``) are checked with
``zope.interface.verify.verifyObject`` in the tests, :class:`SentMessages`
against the signature of ``Transports.send``."""

from twisted.internet import defer
from zope.interface import implementer

from siprecd.calls import CallRegistry
from siprecd.interfaces import ICallListener
from siprecd.sip.message import parse_message

__all__ = ["HeldCallListener", "SentMessages", "GatedStorage"]


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
    """Test double for sip.transport.Transports: keeps what would be sent,
    parsed, instead of sending it. ``send`` takes the same arguments as
    ``Transports.send``; ``pop()`` returns the messages kept so far and
    forgets them."""

    def __init__(self):
        self.sent = []

    def send(self, transport, host, port, data, connection=None):
        self.sent.append(((transport, host, port), parse_message(data)))

    def pop(self):
        out, self.sent = [m for _, m in self.sent], []
        return out


class GatedStorage:
    """Test double around a real IStorage: every method is the real one,
    except those named in :meth:`hold`, whose calls wait until the test
    releases them. The only deterministic way to keep an API request "in
    progress" (409-202) or a BYE "being processed" (409-203) while a second
    request arrives. Attribute look-ups go to the wrapped storage, so the
    double provides every interface it does (``IStorage`` for a real
    backend)."""

    def __init__(self, storage):
        self._storage = storage
        self._held = {}
        self.waiting = {}

    def hold(self, name):
        """From now on calls of *name* wait; returns a Deferred that fires
        (with the number of held calls) when the first one arrives."""
        self._held[name] = []
        arrived = defer.Deferred()
        self.waiting[name] = arrived
        return arrived

    def release(self, name):
        """Let the held calls of *name* through, and stop holding."""
        for go in self._held.pop(name, []):
            go.callback(None)

    def __getattr__(self, name):
        real = getattr(self._storage, name)
        if name not in self._held or not callable(real):
            return real

        def held(*args, **kwargs):
            go = defer.Deferred()
            self._held[name].append(go)
            arrived = self.waiting.get(name)
            if arrived is not None and not arrived.called:
                arrived.callback(len(self._held[name]))
            return go.addCallback(lambda _: real(*args, **kwargs))

        return held
