"""Where utterances end, and what audio a recogniser is given (sans-IO).

A :class:`Segmenter` takes one stream's PCM as the media plane hands it out
(int16 at one rate, 8 kHz unless told otherwise, with its position on the
stream's timeline) and returns what
to do with the recogniser, in order: :class:`Feed` these samples, or
:class:`Finish` the open utterance. It never touches a recogniser itself;
``siprecd.transcribe.pipeline`` carries the actions out.

Energy voice activity
    Audio is looked at in 20 ms frames on a grid that starts where the
    segmenter's audio starts. A frame is speech when its RMS reaches
    ``threshold`` (dBFS). An utterance is open from its first speech frame
    until ``endpoint`` of continuous non-speech (then Finish "silence"), or
    until it has lasted ``max_utterance`` (Finish "max-length"). The
    recogniser may end utterances earlier by its own endpointing; a Finish
    that finds nothing open costs one call and gives nothing.

Fixed chunks
    Vosk's results depend on how its input is cut into calls (its decoder
    works per call), so the recogniser is fed in chunks of exactly
    ``chunk`` samples, counted from the last Finish, whatever sizes the
    network delivered; only the chunk before a Finish (or a gap) is
    shorter. The same audio thus gives the same words however its packets
    were batched.

Long silence, and not spending ASR on it
    After ``skip_after`` of non-speech with no utterance open, the stream is
    in a long silence; so is a new segmenter, before any speech. When speech comes back, the recogniser is reset
    (Finish "reset") and given the last ``preroll`` of the silence before
    the speech frame, then the speech. Because that reset happens whether or
    not anything is skipped, what the recogniser sees after it does not
    depend on how much silence came before: the silence in the middle of a
    long silence (beyond the preroll) can be left out (``skip_silence``,
    the default) without changing any word, time or confidence. (A Vosk
    recogniser starts afresh after ``FinalResult()``; the tests check the
    transcripts with and without skipping against the real model.) Actions
    carry their positions, so the recogniser's times map back onto the
    timeline exactly (``siprecd.transcribe.timeline``).

Gaps
    Audio that does not continue the last position (dropped because the
    recogniser fell too far behind) ends the open utterance and starts a
    long silence, so nothing spans a gap.
"""

from collections import deque

import attrs
import numpy as np

__all__ = ["Feed", "Finish", "Segmenter", "SAMPLE_RATE", "FRAME"]

SAMPLE_RATE = 8000
FRAME = 160  # 20 ms at SAMPLE_RATE


@attrs.frozen(eq=False)
class Feed:
    """Give the recogniser *samples* (int16), which start at *position*."""

    position: int
    samples: np.ndarray

    def __len__(self):
        return len(self.samples)


@attrs.frozen
class Finish:
    """End the recogniser's open utterance; everything fed so far ends at
    *position*. *reason*: "silence", "max-length", "reset", "gap", "stop"."""

    position: int
    reason: str


def _samples(seconds, rate=SAMPLE_RATE):
    return max(1, int(round(seconds * rate)))


class Segmenter:
    """One stream's segmentation state; see the module docstring.

    Times are in seconds; ``threshold`` in dBFS; *rate* is the audio's
    sample rate. ``stats`` counts samples seen, fed and skipped.
    """

    def __init__(self, *, endpoint=0.25, max_utterance=30.0, threshold=-45.0, chunk=0.2,
                 skip_after=1.0, preroll=0.5, skip_silence=True, rate=SAMPLE_RATE):
        self.rate = rate
        self.frame = rate // 50   # 20 ms
        self.endpoint = _samples(endpoint, rate)
        self.max_utterance = _samples(max_utterance, rate)
        self.chunk = _samples(chunk, rate)
        # A long silence only starts once any utterance has been ended.
        self.skip_after = max(_samples(skip_after, rate), self.endpoint)
        self.preroll = _samples(preroll, rate)
        self.skip_silence = skip_silence
        full_scale = 32768.0
        self._threshold_power = (full_scale * 10 ** (threshold / 20.0)) ** 2
        self.stats = {"samples": 0, "fed": 0, "skipped": 0}

        self._expected = None        # next position the stream should give
        self._frame_fill = 0         # samples of the current frame seen so far
        self._frame_power = 0.0      # sum of squares of those samples
        self._frame_start = None
        self._open = False           # an utterance is open (speech since last Finish)
        self._utterance_start = None
        # A window starts as in a long silence (as after a gap): silence
        # before the first speech costs no recognition beyond the preroll,
        # and a window that never hears speech never uses a recogniser.
        self._silence = self.skip_after  # non-speech samples since the last speech frame
        self._long_silence = True
        self._fed = False            # audio fed since the last Finish
        # Audio waiting to be fed as one fixed-size chunk.
        self._pending = []
        self._pending_len = 0
        self._pending_position = None
        # In a long silence: the last pieces of it, kept as the preroll.
        self._held = deque()
        self._held_len = 0

    # -- input ----------------------------------------------------------------

    def push(self, position, samples):
        """Audio from the media plane; returns the actions it calls for."""
        samples = np.asarray(samples, dtype=np.int16)
        out = []
        if self._expected is not None and position != self._expected:
            self._gap(out)
        if self._expected is None or position != self._expected:
            self._frame_fill, self._frame_power, self._frame_start = 0, 0.0, position
        self._expected = position + len(samples)
        self.stats["samples"] += len(samples)
        offset = 0
        total = len(samples)
        while offset < total:
            take = min(self.frame - self._frame_fill, total - offset)
            piece = samples[offset:offset + take]
            self._route(position + offset, piece, out)
            self._frame_fill += take
            self._frame_power += float(np.dot(piece, piece.astype(np.float64)))
            offset += take
            if self._frame_fill == self.frame:
                self._frame_done(self._frame_power / self.frame >= self._threshold_power, out)
        return out

    def close(self):
        """No more audio (stop-streaming, the stream ended): the audio not
        yet fed is fed, except a long silence's preroll (it is silence).
        The caller finishes the recogniser."""
        out = []
        self._flush(out)
        self._drop_held()
        self._open = False
        return out

    @property
    def position(self):
        """The position the next audio is expected at (None before any)."""
        return self._expected

    # -- inside -----------------------------------------------------------------

    def _route(self, position, piece, out):
        if self._long_silence:
            self._held.append((position, piece))
            self._held_len += len(piece)
        else:
            self._add(position, piece, out)

    def _add(self, position, piece, out):
        """Queue *piece* for the recogniser, in chunks of ``self.chunk``."""
        while len(piece):
            if self._pending_len == 0:
                self._pending_position = position
            take = min(self.chunk - self._pending_len, len(piece))
            self._pending.append(piece[:take])
            self._pending_len += take
            position += take
            piece = piece[take:]
            if self._pending_len == self.chunk:
                self._flush(out)

    def _flush(self, out):
        if not self._pending_len:
            return
        parts = self._pending
        samples = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out.append(Feed(self._pending_position, samples))
        self._fed = True
        self.stats["fed"] += len(samples)
        self._pending, self._pending_len = [], 0

    def _finish(self, out, reason, position):
        self._flush(out)
        out.append(Finish(position, reason))
        self._fed = False

    def _frame_done(self, speech, out):
        end = self._frame_start + self.frame
        if speech:
            if self._long_silence:
                self._leave_long_silence(out)
            self._silence = 0
            if not self._open:
                self._open = True
                self._utterance_start = self._frame_start
        else:
            self._silence += self.frame
            if self._open and self._silence >= self.endpoint:
                self._open = False
                self._finish(out, "silence", end)
            elif not self._open and not self._long_silence and self._silence >= self.skip_after:
                self._long_silence = True
            elif self._long_silence:
                self._trim_held(out)
        if self._open and end - self._utterance_start >= self.max_utterance:
            self._open = False
            self._finish(out, "max-length", end)
        self._frame_start = end
        self._frame_fill, self._frame_power = 0, 0.0

    def _trim_held(self, out):
        """Keep only the preroll of a long silence; the rest is fed, or
        skipped when ``skip_silence``."""
        while self._held and self._held_len - len(self._held[0][1]) >= self.preroll:
            position, piece = self._held.popleft()
            self._held_len -= len(piece)
            self._let_go(position, piece, out)
        excess = self._held_len - self.preroll
        if excess > 0:
            position, piece = self._held[0]
            self._held[0] = (position + excess, piece[excess:])
            self._held_len -= excess
            self._let_go(position, piece[:excess], out)

    def _let_go(self, position, piece, out):
        if self.skip_silence:
            self.stats["skipped"] += len(piece)
        else:
            self._add(position, piece, out)

    def _leave_long_silence(self, out):
        """Speech after a long silence: reset the recogniser, then give it
        the preroll and the speech frame (all of it held until now)."""
        self._long_silence = False
        held, self._held, self._held_len = self._held, deque(), 0
        start = held[0][0] if held else self._frame_start
        self._flush(out)
        if self._fed:
            # A recogniser that was given nothing has nothing to reset.
            self._finish(out, "reset", start)
        for position, piece in held:
            self._add(position, piece, out)

    def _drop_held(self):
        self.stats["skipped"] += self._held_len
        self._held.clear()
        self._held_len = 0

    def _gap(self, out):
        """The audio does not continue where it was: nothing spans a gap."""
        self._flush(out)
        self._drop_held()
        if self._open:
            self._open = False
            out.append(Finish(self._expected, "gap"))
            self._fed = False
        self._long_silence = True
        self._silence = self.skip_after
