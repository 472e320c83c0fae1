"""Interim results of one window's open utterance (sans-IO).

:class:`InterimResults` is the part of a
:class:`~siprecd.transcribe.pipeline.StreamPipeline` that deals with
partials, for live output only (they are never stored):

When to ask
    The pipeline asks the recogniser for an interim result
    (``IPartialResults.accept_partial``) at most once per ``every``
    samples of audio fed, and only while the recogniser keeps up (at most
    ``behind`` samples waiting): a partial of audio that is seconds old
    is worth nothing to a live screen and would cost the recogniser time
    it needs to catch up. Nothing is asked while ``wanted()`` is false
    (no live client and no webhook target wants them).
Which utterance a partial belongs to
    The first partial with words opens an utterance and gives it an id:
    the ``messageId`` its final will be stored with, so a client replaces
    the partials of that id with the final. Each change of its words is
    one more ``revision`` (a partial that says the same as the last one
    is not handed on). A final result closes the id; an utterance whose
    words vanish (the recogniser's endpoint found nothing after all), or
    that a Finish ends without a final, is withdrawn: one last partial
    with no words.
Order
    The pipeline hands partials and finals on in the order the recogniser
    gave them, so every partial of an utterance comes before its final.
"""

import uuid

import attrs

from siprecd.asr.results import Token
from siprecd.transcribe.segment import SAMPLE_RATE

__all__ = ["RawPartial", "InterimResults"]


@attrs.frozen
class RawPartial:
    """An interim result on the stream's timeline, before formatting.
    ``tokens`` empty: the utterance was withdrawn."""

    utterance_id: str
    revision: int
    text: str
    tokens: tuple        # Token, times in ms on the stream's timeline
    start: int           # ms
    end: int             # ms


@attrs.define
class _Open:
    utterance_id: str
    revision: int = 0
    text: str = ""
    start: int = 0
    end: int = 0


def _new_id():
    return str(uuid.uuid4())


class InterimResults:
    """See the module docstring. *on_partial(RawPartial)* is told of each
    partial; *every* and *behind* are in samples."""

    def __init__(self, on_partial, every, *, behind=3 * SAMPLE_RATE, wanted=lambda: True,
                 new_id=_new_id):
        self.on_partial = on_partial
        self.every = max(1, int(every))
        self.behind = behind
        self.wanted = wanted
        self.new_id = new_id
        self.asked = 0            # interim results asked for
        self.handed_on = 0        # partials handed on (withdrawals included)
        self._since = self.every  # the first chunk may ask
        self._open = None

    @property
    def open_id(self):
        """The id of the utterance partials are being shown for, or None."""
        return None if self._open is None else self._open.utterance_id

    def ask(self, samples, backlog):
        """Whether to ask for an interim result with the next *samples*
        fed, *backlog* samples still waiting behind them."""
        self._since += samples
        if self._since < self.every or backlog > self.behind:
            return False
        try:
            if not self.wanted():
                return False
        except Exception:  # noqa: BLE001 - a broken predicate costs partials, not audio
            return False
        self._since = 0
        self.asked += 1
        return True

    def partial(self, result, timeline):
        """An interim AsrResult (recogniser times) of the open utterance."""
        tokens = _tokens(result, timeline)
        if not tokens:
            self.withdraw()
            return
        text = " ".join(t.content for t in tokens)
        opened = self._open
        if opened is None:
            opened = self._open = _Open(self.new_id())
        elif text == opened.text:
            return
        opened.revision += 1
        opened.text, opened.start, opened.end = text, tokens[0].start, tokens[-1].end
        self._hand_on(RawPartial(opened.utterance_id, opened.revision, text, tokens,
                                 opened.start, opened.end))

    def close(self):
        """A final with words ended the open utterance: its id (for the
        final), or None when no partial of it was shown."""
        opened, self._open = self._open, None
        return None if opened is None else opened.utterance_id

    def withdraw(self):
        """The open utterance ended without words: one last, empty partial."""
        opened, self._open = self._open, None
        if opened is not None:
            self._hand_on(RawPartial(opened.utterance_id, opened.revision + 1, "", (),
                                     opened.start, opened.end))

    def _hand_on(self, partial):
        self.handed_on += 1
        self.on_partial(partial)


def _tokens(result, timeline):
    if result.words:
        out = []
        for w in result.words:
            start = timeline.ms(w.start)
            out.append(Token(w.word, start, max(start, timeline.ms(w.end, end=True)),
                             float(w.conf)))
        return tuple(out)
    words = (result.text or "").split()
    if not words or not timeline.fed:
        return ()
    # No word times (a server without partial words): placed at the end of
    # what was fed, which is where they were heard at the latest.
    at = timeline.ms(timeline.fed / timeline.sample_rate, end=True)
    return tuple(Token(word, at, at, 1.0) for word in words)
