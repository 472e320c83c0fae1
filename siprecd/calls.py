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
        return len(self.by_guid)
