"""The registry of active recording sessions on this node.

It is the ICallListener the SIP layer reports to, and the place the API
looks calls up by guid. (Storage of calls and the media and transcription
pipelines plug in here as they arrive.)
"""

from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import ICallListener

__all__ = ["CallRegistry"]


@implementer(ICallListener)
class CallRegistry:
    log = Logger()

    def __init__(self):
        self.by_guid = {}
        self.by_call_id = {}
        self.ended = 0

    def call_offered(self, session):
        self.by_guid[session.guid.value] = session
        self.by_call_id[session.call_id] = session

    def call_updated(self, session):
        pass

    def call_ended(self, session, reason):
        if self.by_guid.get(session.guid.value) is session:
            del self.by_guid[session.guid.value]
        if self.by_call_id.get(session.call_id) is session:
            del self.by_call_id[session.call_id]
        self.ended += 1

    def get(self, guid):
        return self.by_guid.get(guid)

    def __len__(self):
        # Sessions, not guids: several sessions may share one guid.
        return len(self.by_call_id)


@implementer(ICallListener)
class CallListeners:
    """Several ICallListeners as one, told in order.

    ``call_offered`` waits for every listener's Deferred (the 200 OK goes
    out only when all of them are ready to keep the call); the others are
    notifications, and one listener's error does not stop the next.
    """

    log = Logger()

    def __init__(self, *listeners):
        self.listeners = list(listeners)

    def call_offered(self, session):
        from twisted.internet import defer

        return defer.gatherResults(
            [defer.maybeDeferred(lst.call_offered, session) for lst in self.listeners],
            consumeErrors=True,
        ).addErrback(lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f)

    def call_updated(self, session):
        self._tell("call_updated", session)

    def call_ended(self, session, reason):
        self._tell("call_ended", session, reason)

    def _tell(self, name, *args):
        for listener in self.listeners:
            try:
                getattr(listener, name)(*args)
            except Exception:
                self.log.failure("{listener} failed in {name}", listener=type(listener).__name__,
                                 name=name)
