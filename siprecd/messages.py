"""How a stored utterance is shown outside siprecd.

One place decides what a client sees of a :class:`~siprecd.storage.records.Message`
(the webhook body, GET messages, the export feed, the live output's
``final`` event), and of a partial (``transcript-partial`` webhooks and
the live output's ``partial`` event), from the settings its
stream was started with (``stream_params``: ``redactionOutput``,
``detailedToken``):

- ``redacted`` (the default): ``text`` is the redacted text;
- ``unredacted``: ``text`` is the text as recognised;
- ``redacted_and_unredacted``: ``text`` redacted, plus ``unredactedText``;
- ``tokens`` only when ``detailedToken`` was on (already redacted as the
  output asks when they were stored).

A message stored without its unredacted text (the call asked for
``redacted`` when it was spoken) is always shown redacted, whatever a later
start-streaming asked for: nothing unredacted is made up after the fact.
"""

import datetime

__all__ = ["utterance_item", "webhook_payload", "partial_payload", "api_message", "iso_ms"]


def iso_ms(epoch_ms):
    """Epoch milliseconds as an RFC 3339 UTC timestamp with milliseconds."""
    if epoch_ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch_ms) % 1000:03d}Z"


def _output(message):
    return (message.stream_params or {}).get("redactionOutput", "redacted")


def utterance_item(message):
    """``{"text", "unredactedText"?, "tokens"?}`` for *message*."""
    output = _output(message)
    if output == "unredacted" and message.unredacted_text is not None:
        item = {"text": message.unredacted_text}
    else:
        item = {"text": message.text}
        if output == "redacted_and_unredacted" and message.unredacted_text is not None:
            item["unredactedText"] = message.unredacted_text
    if message.tokens is not None:
        item["tokens"] = list(message.tokens)
    return item


def webhook_payload(message):
    """The body of the real-time webhook (docs/api.rst) for one stored message
    (read back from storage, so guid, role, externalId and sequence are set)."""
    return _transcript_body("transcript", message, messageId=message.id,
                            legId=message.leg_id, sequence=message.sequence)


def partial_payload(partial):
    """The body of a ``transcript-partial`` webhook and of the live output's
    ``partial`` event, for a siprecd.transcribe.partials.LivePartial: the
    shape of the transcript webhook, with ``utteranceId`` (the messageId
    the final will have) and ``revision`` (1, 2, ... within it) instead of
    messageId and sequence. An empty ``text`` withdraws the utterance."""
    return _transcript_body("transcript-partial", partial, utteranceId=partial.utterance_id,
                            revision=partial.revision, legId=partial.leg_id)


def _transcript_body(kind, item, **ids):
    """What a transcript and a partial share: who said it, when, the
    utterance; then *ids* and the participant, in that order."""
    return {
        "type": kind,
        "externalConversationId": item.guid,
        "streamId": item.stream_id,
        "sender": {"externalId": item.external_id, "role": item.role},
        "autotranscribeResponse": {
            "message": kind,
            "start": item.start_ms,
            "end": item.end_ms,
            "utterance": [utterance_item(item)],
        },
        **ids,
        **_participant(item),
    }


def _participant(message):
    """``{"participant": {"id", "aor", "name"}}`` when the metadata named the
    stream's sender (additive: every stream of a 3-way call or conference
    says who is speaking), else nothing."""
    participant = (message.stream_params or {}).get("participant")
    return {"participant": dict(participant)} if participant else {}


def api_message(message):
    """One item of GET .../messages."""
    item = utterance_item(message)
    out = {
        "text": item.pop("text"),
        "sender": {"role": message.role, "externalId": message.external_id},
        "messageId": message.id,
        "createdTimestamp": iso_ms(message.created_ms),
        "clientTimestamp": iso_ms(message.client_ms if message.client_ms is not None
                                  else message.created_ms),
        "streamId": message.stream_id,
        "legId": message.leg_id,
        "start": message.start_ms,
        "end": message.end_ms,
        "sequence": message.sequence,
    }
    if message.language:
        out["language"] = message.language
    out.update(_participant(message))
    out.update(item)
    return out
