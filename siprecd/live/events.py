"""The events of the live output, each encoded once for every client.

A :class:`LiveEvent` is one JSON text message (``payload``, UTF-8) with
what a subscription needs to route and filter it without parsing it
again: its kind, call, app, stream, and for a final its ``sequence`` in
the stream (for a client that reconnects) and for a partial the
``utteranceId`` the final will have.

Bodies (docs/api.rst, "Live transcripts"): ``final`` is the transcript
webhook's body (:func:`siprecd.messages.webhook_payload`) and ``partial``
the ``transcript-partial`` webhook's (:func:`siprecd.messages.partial_payload`),
each with ``"event"`` added; the call events carry the call's
``externalConversationId``, a ``timestamp`` and what they are about.
"""

import json

import attrs

from siprecd.messages import iso_ms, partial_payload, webhook_payload

__all__ = ["LiveEvent", "encode", "final_event", "partial_event", "call_event",
           "subscribed_event", "FINAL", "PARTIAL"]

FINAL, PARTIAL = "final", "partial"


@attrs.frozen
class LiveEvent:
    kind: str
    guid: str | None
    app_id: str | None
    payload: bytes
    stream_id: str | None = None
    sequence: int | None = None       # a final's place in its stream
    utterance_id: str | None = None   # a partial's, or a final's messageId
    streams: tuple = ()               # stream ids a call event is about


def encode(body):
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def final_event(message):
    """A stored Message (guid, role, sequence and stream_params set)."""
    body = {"event": FINAL, **webhook_payload(message)}
    params = message.stream_params or {}
    return LiveEvent(FINAL, message.guid, params.get("appId"), encode(body),
                     stream_id=message.stream_id, sequence=message.sequence,
                     utterance_id=message.id)


def partial_event(partial):
    """A siprecd.transcribe.partials.LivePartial."""
    body = {"event": PARTIAL, **partial_payload(partial)}
    return LiveEvent(PARTIAL, partial.guid, partial.app_id, encode(body),
                     stream_id=partial.stream_id, utterance_id=partial.utterance_id)


def _streams(event):
    return [{"streamId": s.stream_id, "role": s.role, "externalId": s.external_id,
             "callId": s.call_id, "primary": s.primary,
             **({"participant": dict(s.participant)} if s.participant else {})}
            for s in event.streams]


def call_event(event):
    """A siprecd.transcribe.events.CallEvent."""
    body = {"event": event.kind, "externalConversationId": event.guid,
            "timestamp": iso_ms(event.at_ms)}
    if event.kind in ("streaming-started", "streaming-stopped"):
        body.update(legId=event.leg_id, language=event.language, streams=_streams(event))
    elif event.kind == "call-ended":
        body["reason"] = event.reason
    return LiveEvent(event.kind, event.guid, event.app_id, encode(body),
                     streams=tuple(s.stream_id for s in event.streams))


def subscribed_event(guid, calls, replayed, now_ms):
    """The first event of a connection, once it is subscribed (and the
    finals it asked for are queued): *calls* are the CallEvents of the
    calls in progress it may see (the last ``call-started`` or
    ``streaming-started`` of each)."""
    body = {
        "event": "subscribed",
        "externalConversationId": guid,
        "timestamp": iso_ms(now_ms),
        "replayed": replayed,
        "calls": [
            {"externalConversationId": c.guid,
             "streaming": c.kind == "streaming-started",
             **({"legId": c.leg_id, "language": c.language, "streams": _streams(c)}
                if c.kind == "streaming-started" else {})}
            for c in calls],
    }
    return LiveEvent("subscribed", guid, None, encode(body))
