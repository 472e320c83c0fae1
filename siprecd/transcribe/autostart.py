"""Transcription started by the node itself when a session is answered.

For sites without a start/stop integration (trials, small sites): with
``auto_start.enabled`` every SIPREC session is transcribed from the moment
it is answered, as if the app named in ``auto_start.app_id`` had called
start-streaming with the parameters of the ``auto_start`` section: the
transcripts go to that app's webhook target, and under app isolation the
conversation is that app's. The API's start and stop work as usual on such
a call (a stop pauses it, a start resumes it). Off by default: the API is
the normal way, and the reason IVR menus and hold music are never
transcribed.

:class:`AutoStart` prepares the request for a session; the call controller
(:mod:`siprecd.transcribe.calls`) carries it out once the call is stored.
"""

import attrs
from twisted.logger import Logger

from siprecd.transcribe.request import StartRequest
from siprecd.transcribe.windows import AGENT, CUSTOMER

__all__ = ["AutoStart", "AutoStartRequest"]


@attrs.frozen
class AutoStartRequest:
    request: StartRequest
    app_id: str
    webhook_target: str | None


class AutoStart:
    """Makes the start request for each answered session from *settings*
    (``config.auto_start``); *storage* gives the app's webhook target."""

    log = Logger()

    def __init__(self, settings, storage):
        self.settings = settings
        self.storage = storage

    @classmethod
    def from_config(cls, config, storage):
        """None unless ``auto_start.enabled``."""
        return cls(config.auto_start, storage) if config.auto_start.enabled else None

    async def request_for(self, session, roles):
        """The AutoStartRequest for *session*, or None (logged) when its app
        is not there or revoked. *roles* maps a session and a
        mediaLineOrder to ``{stream key: role}``."""
        s = self.settings
        app = await self.storage.get_app(s.app_id)
        if app is None or not app.active:
            self.log.error("auto_start: app {app_id} does not exist or is revoked; guid {guid} "
                           "is not transcribed", app_id=s.app_id, guid=session.guid.value)
            return None
        aors = self._aors(session, roles(session, s.media_line_order))
        values = {"guid": session.guid.value, "customer_aor": aors.get(CUSTOMER) or CUSTOMER,
                  "agent_aor": aors.get(AGENT) or AGENT}
        request = StartRequest.make(
            session.guid.value, s.customer_id.format(**values)[:256],
            s.agent_id.format(**values)[:256], language=s.language,
            detailed_token=s.detailed_token, audio_recording_allowed=s.audio_recording_allowed,
            redaction_output=s.redaction_output, media_line_order=s.media_line_order)
        return AutoStartRequest(request, app.api_id, app.webhook_target)

    @staticmethod
    def _aors(session, roles):
        """{role: the AOR of the participant sending that role's stream}."""
        out = {}
        for stream in session.streams:
            role = roles.get((stream.label, stream.audio_index))
            participant = session.participant_for(stream)
            if role is not None and role not in out and participant is not None \
                    and participant.aors:
                out[role] = participant.aors[0]
        return out
