"""Partials on their way out: formatted and redacted like finals, never stored.

:class:`PartialWriter` takes each interim result of a window
(:class:`~siprecd.transcribe.interim.RawPartial`), writes its spoken
numbers as digits as finals are (``asr.format_numbers``), redacts it with
the call's redaction (:meth:`siprecd.redact.CallRedactor.preview`: the
same policy and context as the finals, and stricter, since the utterance
may still go on), and tells ``on_partial`` listeners with a
:class:`LivePartial`. Partials are for live output only: nothing here
touches storage, and the call's redaction state is left as it was.

Fail closed: if formatting or redaction raises on a partial, it goes out
with every word masked, and one error line (without the text) says so.
With ``redactionOutput: unredacted`` a partial shows what was heard, as
the finals of that call do; a partial masked because its redaction
failed never carries its unredacted text.
"""

import attrs
from twisted.logger import Logger

from siprecd.hooks import Hook
from siprecd.numbers import format_numbers as format_spoken_numbers
from siprecd.redact import fail_closed
from siprecd.transcribe.interim import InterimResults

__all__ = ["LivePartial", "PartialWriter"]


@attrs.frozen
class LivePartial:
    """An interim result as it may leave the node (for
    :func:`siprecd.messages.partial_payload`): the words so far of the
    utterance ``utterance_id`` (the messageId its final will have),
    ``revision`` 1, 2, ... of them; no words (``text`` empty) when the
    utterance was withdrawn. ``text`` is redacted; ``unredacted_text``
    is set only when the stream's settings keep it (as for messages)."""

    guid: str
    call_id: str
    leg_id: str
    stream_id: str
    role: str
    external_id: str
    utterance_id: str
    revision: int
    start_ms: int
    end_ms: int
    text: str
    created_ms: int
    unredacted_text: str | None = None
    tokens: list | None = None
    language: str | None = None
    app_id: str | None = None
    webhook_target: str | None = None
    stream_params: dict | None = None

    @property
    def withdrawn(self):
        return not self.text


class PartialWriter:
    """See the module docstring. *utterances* is the node's
    :class:`~siprecd.transcribe.utterances.UtteranceWriter`, whose
    per-call redaction (or stateless ``redact`` hook) partials share;
    *on_partial(LivePartial)* listeners are told of each partial, in
    order per stream, all before the final they lead to.

    *interval*: seconds of audio between two interim results of a stream
    at most (0: none are asked for); *wanted(guid, app_id,
    webhook_target)*: whether anyone wants the partials of a call now (no
    live client and no target asking for them: the recogniser is not
    asked).
    """

    log = Logger()

    def __init__(self, utterances, clock, *, format_numbers=True, interval=0.2, wanted=None,
                 on_partial=()):
        self.utterances = utterances
        self.clock = clock
        self.format_numbers = format_numbers
        self.interval = interval
        self.wanted = wanted
        self.on_partial = Hook("on_partial", *on_partial)
        self.failed = 0

    def interim(self, call, window):
        """The InterimResults for a new window's pipeline, or None when
        partials are off."""
        if not self.interval or not self.on_partial:
            return None
        params = window.params

        def wanted():
            return self.wanted is None or self.wanted(call.guid, params.app_id,
                                                      params.webhook_target)

        # In samples at the rate the window's recogniser is fed at.
        return InterimResults(lambda raw: self.partial(call, window, raw),
                              int(round(self.interval * window.rate)),
                              behind=3 * window.rate, wanted=wanted)

    def partial(self, call, window, raw):
        """An interim result (a RawPartial) of *window* of *call*."""
        if not self.on_partial:
            return
        params, leg_stream = window.params, window.leg_stream
        tokens = list(raw.tokens)
        masked_only = False
        try:
            if tokens and self.format_numbers:
                tokens = format_spoken_numbers(tokens, params.language)
            redacted_tokens = self._redact(call, window, tokens)
        except Exception as e:  # noqa: BLE001 - fail closed
            self.failed += 1
            self.log.error("formatting or redacting a partial of stream {stream_id} failed "
                           "({error_type}); it is sent with every word masked",
                           guid=call.guid, stream_id=leg_stream.id,
                           error_type=type(e).__name__)
            tokens = list(raw.tokens)
            redacted_tokens = list(fail_closed(tokens)[1])
            masked_only = True
        unredacted = params.redaction_output == "unredacted" and not masked_only
        shown = tokens if unredacted else redacted_tokens
        partial = LivePartial(
            guid=call.guid, call_id=call.call_id, leg_id=leg_stream.leg_id,
            stream_id=leg_stream.id, role=leg_stream.role, external_id=leg_stream.external_id,
            utterance_id=raw.utterance_id, revision=raw.revision,
            start_ms=shown[0].start if shown else raw.start,
            end_ms=shown[-1].end if shown else raw.end,
            text=" ".join(t.content for t in redacted_tokens),
            created_ms=int(round(self.clock.seconds() * 1000)),
            unredacted_text=(" ".join(t.content for t in tokens)
                             if params.keeps_unredacted and not masked_only else None),
            tokens=[t.as_dict() for t in shown] if params.detailed_token else None,
            language=params.language, app_id=params.app_id,
            webhook_target=params.webhook_target, stream_params=leg_stream.stored_params(params))
        self.on_partial(partial, guid=call.guid, stream_id=leg_stream.id)

    def _redact(self, call, window, tokens):
        if not tokens:
            return []
        redact = self.utterances.redact
        if redact is not None:
            text = " ".join(t.content for t in tokens)
            return list(redact(text, list(tokens))[1])
        redactor = self.utterances.call_redactor(call, window.params.language)
        return list(redactor.preview(window.key, window.leg_stream.role, tokens,
                                     self.clock.seconds()).tokens)
