"""Where a start-streaming or stop-streaming for a guid is carried out.

The API does not talk to the transcription service directly but to a
*call controller* with two methods, ``start(app, guid, request)`` and
``stop(app, guid)``. :class:`LocalCalls` carries them out on this node.
Scale-out wraps it: a controller that finds the node owning the guid (the
``node`` of its stored Call) and forwards the request there when it is not
this one, answering 400-203 only when no live node has the call. Nothing
in the API changes for that.

App isolation (``api.app_isolation``, on by default): a conversation
belongs to the apps that started its legs; another app gets 403-01 for
it (start, stop and reads alike). A call no app has started yet is open
to any app.
"""

import attrs
from twisted.logger import Logger

from siprecd.api.errors import Forbidden
from siprecd.interfaces import StorageError
from siprecd.transcribe.errors import AsrUnavailable, BadParameter, NotAllowed

__all__ = ["StartRequest", "LocalCalls", "check_owner", "owners_of"]

# Namespaces of the commercial API other than SIPREC: known, not served here.
OTHER_NAMESPACES = ("twilio", "amazonconnect", "genesysaudiohook")
MAX_ID_LENGTH = 256


def _text(body, name, required=True):
    value = body.get(name)
    if value is None:
        if required:
            raise BadParameter(f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadParameter(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise BadParameter(f"{name} is longer than {MAX_ID_LENGTH} characters")
    return value


def _object(body, name):
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(f"{name} must be a JSON object")
    return value


def check_namespace(body):
    namespace = body.get("namespace")
    if namespace is None:
        raise BadParameter("namespace is required")
    if not isinstance(namespace, str):
        raise BadParameter("namespace must be a string")
    if namespace.lower() in OTHER_NAMESPACES:
        raise NotAllowed(f"namespace {namespace!r} is not supported here; use \"siprec\"")
    if namespace.lower() != "siprec":
        raise BadParameter(f"unknown namespace {namespace!r}")


@attrs.frozen
class StartRequest:
    """A start-streaming body, read (types of the nested settings are
    checked by the transcription service, with its codes)."""

    guid: str
    customer_id: object
    agent_id: object
    language: object = "en-US"
    detailed_token: object = False
    audio_recording_allowed: object = False
    redaction_output: object = "redacted"
    media_line_order: object = "CUSTOMER_FIRST"
    # The request as received, for forwarding it to the node with the call.
    body: dict = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, body):
        check_namespace(body)
        guid = _text(body, "guid")
        customer_id = _text(body, "customerId")
        agent_id = _text(body, "agentId")
        params = _object(body, "autotranscribeParams")
        siprec = _object(body, "siprecParams")

        def get(obj, name, default):
            value = obj.get(name)
            return default if value is None else value

        return cls(guid, customer_id, agent_id,
                   get(params, "language", "en-US"),
                   get(params, "detailedToken", False),
                   get(params, "audioRecordingAllowed", False),
                   get(params, "redactionOutput", "redacted"),
                   get(siprec, "mediaLineOrder", "CUSTOMER_FIRST"), body)


def stop_guid(body):
    check_namespace(body)
    return _text(body, "guid")


def owners_of(legs):
    return {leg.params.get("appId") for leg in legs if leg.params} - {None}


def check_owner(app, legs, guid, isolation):
    """Forbidden unless *app* may act on the conversation with *legs*."""
    owners = owners_of(legs)
    if isolation and owners and app.api_id not in owners:
        raise Forbidden(f"the conversation {guid} belongs to another app")


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
        except StorageError as e:
            raise AsrUnavailable(f"cannot read the conversation: {e}") from None
        check_owner(app, legs, guid, True)

    async def start(self, app, request):
        target = app.webhook_target
        if target is not None and target not in self.webhook_targets:
            raise AsrUnavailable(
                f"this app's webhook target {target!r} is not configured on this node")
        await self._check_owner(app, request.guid)
        return await self.transcription.start(
            request.guid, request.customer_id, request.agent_id, request.language,
            request.detailed_token, request.audio_recording_allowed, request.redaction_output,
            request.media_line_order, webhook_target=target, app_id=app.api_id)

    async def stop(self, app, guid):
        await self._check_owner(app, guid)
        return await self.transcription.stop(guid)
