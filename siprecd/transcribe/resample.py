"""One stream's PCM brought to one sample rate, on the stream's timeline (sans-IO).

The media plane hands PCM at the codec's own rate (8 kHz narrowband,
16 kHz G.722, 48 kHz Opus), and a codec switch in a re-INVITE may change
it mid-stream; a recogniser, a segmenter and a recording each work at one
rate. :class:`RateConverter` takes ``(position, samples, rate)`` and gives
``(position, samples)`` at its own rate: unchanged when the rates are the
same (G.711 stays bit-exact), else through a streaming band-limited
resampler (libsoxr, by the ``soxr`` package; its output is aligned to its
input, so times stay true, and it keeps its filter state from one piece to
the next, so there is no click at a packet boundary).

A piece that does not continue the last one (another rate, or a jump in
position) starts a new run at the same time in output samples; a run is
never moved back before output already given, so positions only grow.
"""

import numpy as np
import soxr

__all__ = ["RateConverter"]

_EMPTY = np.zeros(0, dtype=np.int16)


class RateConverter:
    """See the module docstring. *rate* is the output rate in Hz."""

    def __init__(self, rate, quality="HQ"):
        self.rate = int(rate)
        self.quality = quality
        self._in_rate = None
        self._next_in = None      # input position that would continue the run
        self._out = 0             # output position of the next sample given
        self._started = False
        self._resampler = None

    def convert(self, position, samples, rate):
        """The output for one piece of input: a list of ``(position, samples)``."""
        out = []
        if rate != self._in_rate or position != self._next_in:
            out.extend(self.flush())
            start = int(round(position * self.rate / rate))
            self._out = max(start, self._out) if self._started else start
            self._started = True
            self._in_rate = rate
            self._resampler = None
            if rate != self.rate:
                self._resampler = soxr.ResampleStream(rate, self.rate, 1, dtype="int16",
                                                      quality=self.quality)
        self._next_in = position + len(samples)
        if self._resampler is None:
            piece = samples
        else:
            piece = self._resampler.resample_chunk(np.ascontiguousarray(samples, np.int16))
        self._give(piece, out)
        return out

    def flush(self):
        """What the resampler still holds (the end of a run), as output."""
        out = []
        if self._resampler is not None:
            self._give(self._resampler.resample_chunk(_EMPTY, last=True), out)
            self._resampler = None
            self._in_rate = None
            self._next_in = None
        return out

    def _give(self, piece, out):
        if len(piece):
            out.append((self._out, np.asarray(piece, dtype=np.int16)))
            self._out += len(piece)
