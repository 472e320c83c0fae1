"""What happens to a call, as records for live output: :class:`CallEvent`.

The call control tells its ``on_call_event`` listeners, with a frozen
snapshot of the call (never the call itself, which goes on changing):

- ``call-started``: the recording session was accepted and stored;
- ``streaming-started``: start-streaming opened its streams (``streams``);
- ``streaming-stopped``: stop-streaming closed them, once every final of
  theirs is stored (so it comes after the last of them);
- ``call-ended``: the session is over and everything of it is stored
  (streaming ends with it).
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


@attrs.frozen
class CallEvent:
    kind: str                      # one of CALL_EVENTS
    guid: str
    call_id: str
    at_ms: int                     # UNIX ms
    app_id: str | None = None      # the app of the leg in force, if one started
    leg_id: str | None = None
    language: str | None = None
    streams: tuple = ()            # StreamInfo of the leg's streams
    reason: str | None = None      # why the call ended


def call_event(kind, call, at_ms, reason=None):
    """A CallEvent of *kind* for *call* (a transcribe.calls.ActiveCall) now."""
    params = call.params
    streams = tuple(StreamInfo(ls.id, ls.role, ls.external_id, ls.leg_id)
                    for _, ls in sorted(call.roles.items()))
    return CallEvent(kind, call.guid, call.call_id, int(at_ms),
                     app_id=params.app_id if params is not None else None,
                     leg_id=call.leg.id if call.leg is not None else None,
                     language=params.language if params is not None else None,
                     streams=streams, reason=reason)
