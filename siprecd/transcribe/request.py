"""A start-streaming request, checked once: :class:`StartRequest`.

The API reads the JSON body into a ``StartRequest`` (every type, enum and
length checked here, with docs/api.rst's codes as
:mod:`siprecd.transcribe.errors` exceptions) and hands that one object
down unchanged: to the local transcription service, or, on another node,
as the body it was read from. :class:`LegSettings` is what is in force for
a leg once a start is accepted: the request's settings plus who asked
(the app) and where its transcripts go (the app's webhook target).
"""

import attrs

from siprecd.transcribe.errors import BadParameter, NotAllowed

__all__ = [
    "StartRequest", "LegSettings", "check_namespace", "stop_guid", "language_tag",
    "REDACTION_OUTPUTS", "MEDIA_LINE_ORDERS", "OTHER_NAMESPACES",
]

REDACTION_OUTPUTS = ("redacted", "unredacted", "redacted_and_unredacted")
MEDIA_LINE_ORDERS = ("CUSTOMER_FIRST", "AGENT_FIRST")
# Namespaces of the commercial API other than SIPREC: known, not served here.
OTHER_NAMESPACES = ("twilio", "amazonconnect", "genesysaudiohook")
MAX_ID_LENGTH = 256
# A leg's transcription settings by their API names, and the attribute of each.
SETTINGS = ("language", "detailedToken", "audioRecordingAllowed", "redactionOutput",
            "mediaLineOrder")
_ATTRIBUTES = dict(zip(SETTINGS, ("language", "detailed_token", "audio_recording_allowed",
                                  "redaction_output", "media_line_order")))


def language_tag(value):
    """A language tag as siprecd keys models by: "en_US" -> "en-us"."""
    return str(value).strip().replace("_", "-").lower()


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


def _setting(obj, name, default):
    value = obj.get(name)
    return default if value is None else value


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


def stop_guid(body):
    """The guid of a stop-streaming body, checked."""
    check_namespace(body)
    return _text(body, "guid")


@attrs.frozen
class StartRequest:
    """A start-streaming request whose every field has been checked.

    ``language`` is the normalised tag (lower case); whether a model
    serves it is the transcription service's question. ``body`` is the
    JSON object it was read from, for forwarding to another node.
    """

    guid: str
    customer_id: str
    agent_id: str
    language: str = "en-us"
    detailed_token: bool = False
    audio_recording_allowed: bool = False
    redaction_output: str = "redacted"
    media_line_order: str = "CUSTOMER_FIRST"
    body: dict = attrs.field(factory=dict, eq=False, repr=False)
    # The settings the body gave (API names); the others took their
    # defaults, and a resume within a leg keeps the leg's value for them.
    given: frozenset = attrs.field(default=frozenset(), eq=False)

    @classmethod
    def from_json(cls, body):
        """Read and check a start-streaming body (a dict)."""
        if not isinstance(body, dict):
            raise BadParameter("the request body must be a JSON object")
        check_namespace(body)
        guid = _text(body, "guid")
        customer_id = _text(body, "customerId")
        agent_id = _text(body, "agentId")
        params = _object(body, "autotranscribeParams")
        siprec = _object(body, "siprecParams")
        language = _setting(params, "language", "en-US")
        detailed_token = _setting(params, "detailedToken", False)
        audio_recording_allowed = _setting(params, "audioRecordingAllowed", False)
        redaction_output = _setting(params, "redactionOutput", "redacted")
        media_line_order = _setting(siprec, "mediaLineOrder", "CUSTOMER_FIRST")
        for name, value in (("detailedToken", detailed_token),
                            ("audioRecordingAllowed", audio_recording_allowed)):
            if not isinstance(value, bool):
                raise BadParameter(f"{name} must be true or false")
        if not isinstance(language, str) or not language.strip():
            raise BadParameter("language must be a language tag such as en-US")
        if not isinstance(redaction_output, str) or redaction_output not in REDACTION_OUTPUTS:
            raise NotAllowed(f"redactionOutput must be one of {', '.join(REDACTION_OUTPUTS)}")
        order = media_line_order.upper() if isinstance(media_line_order, str) else None
        if order not in MEDIA_LINE_ORDERS:
            raise BadParameter(f"mediaLineOrder must be one of {', '.join(MEDIA_LINE_ORDERS)}")
        given = frozenset(
            [name for name in SETTINGS[:4] if params.get(name) is not None]
            + (["mediaLineOrder"] if siprec.get("mediaLineOrder") is not None else []))
        return cls(guid, customer_id, agent_id, language_tag(language), detailed_token,
                   audio_recording_allowed, redaction_output, order, body, given)

    @classmethod
    def make(cls, guid, customer_id, agent_id, *, language="en-US", detailed_token=False,
             audio_recording_allowed=False, redaction_output="redacted",
             media_line_order="CUSTOMER_FIRST"):
        """The request a client would send with these values (for callers
        in Python: tools, benchmarks and tests), checked the same way."""
        return cls.from_json({
            "namespace": "siprec", "guid": guid, "customerId": customer_id,
            "agentId": agent_id,
            "autotranscribeParams": {
                "language": language, "detailedToken": detailed_token,
                "audioRecordingAllowed": audio_recording_allowed,
                "redactionOutput": redaction_output},
            "siprecParams": {"mediaLineOrder": media_line_order}})


@attrs.frozen
class LegSettings:
    """What is in force for a leg after an accepted start.

    A leg is one customer and one agent: a start with another customerId
    or agentId than the leg's starts a new leg. A start that continues the
    leg (a resume after a stop) keeps the leg's value of every setting the
    request leaves out (:meth:`resumed`), so leaving ``autotranscribeParams``
    out of a resume changes nothing; a new leg takes the defaults.
    """

    request: StartRequest
    app_id: str | None = None
    webhook_target: str | None = None

    def same_leg(self, request):
        """Whether *request* continues this leg (same customer and agent)."""
        return (request.customer_id == self.customer_id
                and request.agent_id == self.agent_id)

    def resumed(self, request, app_id=None, webhook_target=None):
        """The settings of *request* continuing this leg: what it leaves out
        is this leg's."""
        kept = {_ATTRIBUTES[name]: getattr(self, _ATTRIBUTES[name])
                for name in SETTINGS if name not in request.given}
        return LegSettings(attrs.evolve(request, **kept), app_id, webhook_target)

    @property
    def customer_id(self):
        return self.request.customer_id

    @property
    def agent_id(self):
        return self.request.agent_id

    @property
    def language(self):
        return self.request.language

    @property
    def detailed_token(self):
        return self.request.detailed_token

    @property
    def audio_recording_allowed(self):
        return self.request.audio_recording_allowed

    @property
    def redaction_output(self):
        return self.request.redaction_output

    @property
    def media_line_order(self):
        return self.request.media_line_order

    @property
    def keeps_unredacted(self):
        return self.redaction_output != "redacted"

    def in_force(self):
        """The settings by their API names (the start response shows them)."""
        return {name: getattr(self, _ATTRIBUTES[name]) for name in SETTINGS}

    def as_dict(self):
        """As stored with the leg and the streams (the API's names)."""
        return dict(self.in_force(), appId=self.app_id)
