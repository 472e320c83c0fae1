"""From a recogniser's clock to the stream's timeline (sans-IO).

A recogniser counts time in the samples it was given; the stream counts
time from its first RTP packet. They differ by where feeding began and by
every stretch of the stream that was not fed (silence left out, audio
dropped). :class:`Timeline` records each contiguous run fed as
(recogniser sample, stream position) and maps recogniser seconds back
exactly, in whole samples.
"""

from bisect import bisect_left, bisect_right

__all__ = ["Timeline"]


class Timeline:
    def __init__(self, sample_rate=8000):
        self.sample_rate = sample_rate
        self._fed = []         # recogniser sample where each run starts
        self._positions = []   # stream position of that sample
        self.fed = 0           # samples given to the recogniser so far
        self._next = None      # stream position right after the last run

    def fed_at(self, position, count):
        """*count* samples starting at stream *position* were given to the
        recogniser (after everything given before)."""
        if count <= 0:
            return
        if position != self._next:
            self._fed.append(self.fed)
            self._positions.append(position)
        self.fed += count
        self._next = position + count

    def position(self, seconds, end=False):
        """The stream position of recogniser time *seconds*.

        A time exactly at the boundary of two runs is the start of the
        later run, or (``end=True``, for the end of a word) the end of the
        earlier one.
        """
        if not self._fed:
            raise ValueError("nothing was fed yet")
        sample = int(round(seconds * self.sample_rate))
        sample = min(max(sample, 0), self.fed)
        find = bisect_left if end else bisect_right
        run = max(find(self._fed, sample) - 1, 0)
        return self._positions[run] + sample - self._fed[run]

    def ms(self, seconds, end=False):
        """:meth:`position` in whole milliseconds."""
        return int(round(self.position(seconds, end) * 1000 / self.sample_rate))
