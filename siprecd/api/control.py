"""Where a start-streaming or stop-streaming for a guid is carried out.

The API does not talk to the transcription service directly but to a
*call controller* (:class:`ICallController`: ``start(app, request)`` with
a checked :class:`~siprecd.transcribe.request.StartRequest`, ``stop(app,
guid)``, ``has_call(guid)``). :class:`LocalCalls` carries them out on this
node. Scale-out wraps it (:class:`siprecd.api.forward.ForwardingCalls`):
a controller that finds the node owning the guid (the ``node`` of its
stored Call) and forwards the request there when it is not this one,
answering 400-203 only when no live node has the call. Nothing in the API
changes for that.

App isolation (``api.app_isolation``, on by default): a conversation
belongs to the apps that started its legs; another app gets 403-01 for
it (start, stop and reads alike). A call no app has started yet is open
to any app.
"""

from twisted.logger import Logger
from zope.interface import Interface, implementer

from siprecd.api.errors import Forbidden
from siprecd.interfaces import StorageError
from siprecd.transcribe.errors import AsrUnavailable
from siprecd.transcribe.request import StartRequest, stop_guid

__all__ = ["ICallController", "StartRequest", "LocalCalls", "check_owner", "owners_of",
           "stop_guid"]


class ICallController(Interface):
    """Where the API's start-streaming and stop-streaming are carried out."""

    def start(app, request):
        """Start transcription for *app* (a storage App) with a checked
        StartRequest: the answer's body less ``isOk``
        (``autotranscribeResponse`` with ``{role: {"streamId", "status"}}``,
        ``settings`` in force, ``legId``), or a TranscriptionError /
        ApiError."""

    def stop(app, guid):
        """Stop transcription of *guid* for *app*; ``{role: {"streamId",
        "status", "summary"}}``."""

    def has_call(guid):
        """True when this node has *guid* as an active call (then nothing
        needs forwarding)."""

    def live(guid):
        """This node's view of the sessions of *guid* (empty when it has none)."""


def owners_of(legs):
    return {leg.params.get("appId") for leg in legs if leg.params} - {None}


def check_owner(app, legs, guid, isolation):
    """Forbidden unless *app* may act on the conversation with *legs*."""
    owners = owners_of(legs)
    if isolation and owners and app.api_id not in owners:
        raise Forbidden(f"the conversation {guid} belongs to another app")


@implementer(ICallController)
class LocalCalls:
    """Start and stop on this node's transcription service."""

    log = Logger()

    def __init__(self, transcription, storage, webhook_targets, isolation=True):
        self.transcription = transcription
        self.storage = storage
        self.webhook_targets = webhook_targets
        self.isolation = isolation

    async def _check_owner(self, app, guid):
        if not self.isolation:
            return
        current = self.transcription.current_app(guid)
        if current is not None and current != app.api_id:
            raise Forbidden(f"the conversation {guid} belongs to another app")
        if not self.transcription.is_active(guid):
            return      # the transcription service answers 400-203
        try:
            legs = await self.storage.legs_for_guid(guid)
        except StorageError:
            raise AsrUnavailable("cannot read the conversation now; try again") from None
        check_owner(app, legs, guid, True)

    async def start(self, app, request):
        target = app.webhook_target
        if target is not None and target not in self.webhook_targets:
            raise AsrUnavailable(
                f"this app's webhook target {target!r} is not configured on this node")
        await self._check_owner(app, request.guid)
        return await self.transcription.start(request, app_id=app.api_id,
                                              webhook_target=target)

    async def stop(self, app, guid):
        await self._check_owner(app, guid)
        return await self.transcription.stop(guid)

    def has_call(self, guid):
        return self.transcription.is_active(guid)

    def live(self, guid):
        """This node's live view of *guid*'s sessions (empty if it has none)."""
        return self.transcription.live(guid)
