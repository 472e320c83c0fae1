"""What happens to a call, as records for live output: :class:`CallEvent`.

The call control tells its ``on_call_event`` listeners, with a frozen
snapshot of the conversation (every SIPREC session of one guid; never the
objects themselves, which go on changing):

- ``call-started``: the first recording session of the guid was accepted
  and stored (a further session of the guid joins the conversation);
- ``streaming-started``: start-streaming opened the streams (``streams``:
  every stream of every session, further streams included); told again,
  with the whole list, when a stream joins while streaming (a re-INVITE's
  new m-line, a further session);
- ``streaming-stopped``: stop-streaming closed them, once every final of
  theirs is stored (so it comes after the last of them);
- ``call-ended``: the last session of the guid is over and everything of
  it is stored (streaming ends with it).
"""

import attrs

__all__ = ["CallEvent", "StreamInfo", "call_event", "CALL_EVENTS"]

CALL_EVENTS = ("call-started", "streaming-started", "streaming-stopped", "call-ended")


@attrs.frozen
class StreamInfo:
    stream_id: str
    role: str
    external_id: str
    leg_id: str
    call_id: str | None = None     # the SIPREC session it belongs to
    primary: bool = True           # the role's main stream (else a further one)
    participant: dict | None = None


@attrs.frozen
class CallEvent:
    kind: str                      # one of CALL_EVENTS
    guid: str
    call_id: str | None            # the session it came from, if one
    at_ms: int                     # UNIX ms
    app_id: str | None = None      # the app of the leg in force, if one started
    leg_id: str | None = None
    language: str | None = None
    streams: tuple = ()            # StreamInfo of the leg's streams
    reason: str | None = None      # why the call ended
    webhook_target: str | None = None  # where the leg's utterances go (not shown to clients)


def call_event(kind, conversation, at_ms, reason=None, call_id=None):
    """A CallEvent of *kind* for *conversation* (a transcribe.calls.Conversation)
    now; *call_id*: the session it came from, if one did."""
    params = conversation.params
    streams = tuple(
        StreamInfo(ls.id, ls.role, ls.external_id, ls.leg_id, call_id=ls.call_id,
                   primary=ls.primary,
                   participant=dict(ls.participant) if ls.participant else None)
        for call in conversation.sessions for ls in call.streams.values())
    leg = conversation.leg
    return CallEvent(kind, conversation.guid, call_id, int(at_ms),
                     app_id=params.app_id if params is not None else None,
                     leg_id=leg.id if leg is not None else None,
                     language=params.language if params is not None else None,
                     streams=streams, reason=reason,
                     webhook_target=params.webhook_target if params is not None else None)
