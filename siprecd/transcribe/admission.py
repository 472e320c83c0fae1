"""How many streams this node keeps in real time, and refusing a start beyond that.

Recognition is the part of a node whose cost grows with every stream it
transcribes, and a recogniser that falls behind delivers every result of
every stream late. So a start-streaming that would take the recognisers
past what they keep in real time is refused (500-201, saying why), and
the client can start the call on another node or later; recording, which
needs no recogniser, goes on (SIP INVITEs are answered as before).

The figures (:class:`Admission`):

- what a stream costs: the backend's processor seconds per second of
  audio for its language (``IRecognitionCosts``: learnt from every call,
  seeded by ``asr.capacity.cost`` or a start-up probe), counted as if the
  stream spoke all the time: real time is promised to every stream, and
  two parties may talk at once;
- what there is: ``processors`` (the fewer of ``asr.threads`` and
  ``asr.capacity.cpus``, by default the processors this process may run
  on) times ``target_load``, the share streams may use; the rest absorbs
  the bursts of recognition (a decoder works in steps; the end of an
  utterance costs more than its middle);
- what is used: every open window's stream, plus the streams of starts in
  progress (reserved from the check until their windows are open);
- a stream's first ``STARTUP_SECONDS`` count ``STARTUP_FACTOR`` (2) times
  its cost: its recogniser meets new speech and builds its part of the
  graph (``siprecd.asr.vosk``; Korean model, speech it has not heard: 0.26
  of a processor during the first five seconds on a warm spare, 0.62 on a
  new recogniser, 0.15-0.19 afterwards). So a start is weighed at that
  factor, and a node that admitted streams a moment ago has less room
  until they have settled;
- a start while another stream is in its first seconds (or another start
  is in progress) counts ``burst_factor`` times its cost
  (``asr.capacity.burst_factor``, 3 by default): the first utterances of
  calls that start together end together, and their last decodes queue
  behind each other. Measured through the whole daemon on two cores
  (``bench/latency_bench``, a call placed every 2 s): weighed at 2, a
  second call was admitted 2 s after the first whenever the learnt cost
  was 0.21 or less, and the first utterances of the two then came
  0.6-0.9 s after their speech (p95 0.65-0.77 s); at 3 it waits until the
  first call has settled unless the cost is 0.14 or less. A start on a
  node whose streams have all settled is weighed at 2, as before: the
  bursts weight does not lower how many streams a node reaches.

A node with no stream open admits a start whatever the figures say
(refusing would make nothing faster, and what streams cost is learnt from
streams), with a warning when they say it may not keep up.

A start is also refused while any stream is behind real time by more than
``max_lag`` (the figures are off, or other work took the processors):
taking more would only make every stream later. A backend without costs
(the remote one: its servers are another machine's concern) is not
limited here.
"""

import math
import os

from twisted.logger import Logger

from siprecd.interfaces import IRecognitionCosts
from siprecd.transcribe.errors import AsrUnavailable

__all__ = ["Admission", "AtCapacity", "available_processors", "STARTUP_SECONDS",
           "STARTUP_FACTOR", "BURST_FACTOR"]

# A stream's first seconds, what they count for, and what a start counts
# for while another stream is in them, by default (asr.capacity.burst_factor;
# see the module doc).
STARTUP_SECONDS = 10.0
STARTUP_FACTOR = 2.0
BURST_FACTOR = 3.0


class AtCapacity(AsrUnavailable):
    """Refused: the recognisers cannot keep more streams in real time (500-201)."""


def available_processors():
    """Processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Reservation:
    """Streams of a start in progress, counted until released."""

    def __init__(self, admission, language, streams):
        self.admission = admission
        self.language = language
        self.streams = streams

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self):
        self.admission._reserved.discard(self)


class Admission:
    """See the module docstring. *backend* is the IASRBackend (limited only
    when it provides IRecognitionCosts); *windows* the open windows
    (``open_windows()``); *processors* what recognition may use at most
    (None: the processors this process may run on)."""

    log = Logger()

    def __init__(self, backend, windows, *, processors=None, target_load=0.85, max_lag=1.0,
                 enabled=True, clock=None, burst_factor=BURST_FACTOR):
        self.costs = backend if IRecognitionCosts.providedBy(backend) else None
        self.windows = windows
        threads = math.inf if self.costs is None else self.costs.threads
        self.processors = min(float(processors or available_processors()), float(threads))
        self.target_load = target_load
        self.max_lag = max_lag
        self.enabled = enabled and self.costs is not None
        self.refused = {"capacity": 0, "behind": 0}
        self._reserved = set()
        # When windows opened is on this clock (None: no start-up weight).
        self.clock = clock
        self.burst_factor = max(float(burst_factor), STARTUP_FACTOR)

    @property
    def budget(self):
        """Processor seconds per second that admitted streams may use."""
        return self.processors * self.target_load

    def cost(self, language):
        """Processor seconds per second of audio in *language* (None: unknown)."""
        return None if self.costs is None else self.costs.cost(language)

    def demand(self):
        """Processor seconds per second the open windows and the starts in
        progress may use, when every stream speaks."""
        total = 0.0
        now = None if self.clock is None else self.clock.seconds()
        for window in self.windows.open_windows():
            total += (self.cost(window.params.language) or 0.0) * self._weight(window, now)
        for reservation in self._reserved:
            total += reservation.streams * (self.cost(reservation.language) or 0.0) * (
                1.0 if now is None else STARTUP_FACTOR)
        return total

    @property
    def _startup(self):
        """What the streams of a new start count for (1 without a clock):
        ``burst_factor`` while another stream is in its first seconds or
        another start is in progress, else ``STARTUP_FACTOR``."""
        if self.clock is None:
            return 1.0
        now = self.clock.seconds()
        if self._reserved or any(self._weight(w, now) > 1.0 for w in self.windows.open_windows()):
            return self.burst_factor
        return STARTUP_FACTOR

    def _weight(self, window, now):
        if now is None:
            return 1.0
        opened = getattr(window.leg_stream, "opened_at", None)
        if opened is not None and now - opened < STARTUP_SECONDS:
            return STARTUP_FACTOR
        return 1.0

    def capacity(self, language):
        """Streams of *language* kept in real time in all (None: no limit)."""
        cost = self.cost(language)
        if not self.enabled or not cost:
            return None
        return int(self.budget / cost)

    def headroom(self, language):
        """Streams of *language* that would be admitted now (None: no limit)."""
        cost = self.cost(language)
        if not self.enabled or not cost:
            return None
        return max(0, int((self.budget - self.demand()) / (cost * self._startup) + 1e-9))

    def behind(self, now=None):
        """The open windows whose recognition is behind by more than max_lag."""
        return [w for w in self.windows.open_windows() if w.pipeline.lag(now) > self.max_lag]

    def reserve(self, language, streams, guid=None):
        """Room for *streams* more streams in *language*, held until the
        returned reservation is released (a context manager); raises
        AtCapacity (500-201) when there is none."""
        reservation = _Reservation(self, language, streams)
        if not self.enabled or streams <= 0:
            return reservation
        cost = self.cost(language)
        late = self.behind()
        if late:
            self.refused["behind"] += 1
            worst = max(w.pipeline.lag() for w in late)
            message = (f"speech recognition on this node is behind real time on {len(late)} "
                       f"stream(s) (up to {worst:.1f} s); no new streams until it has caught "
                       "up: try another node or later")
            self._refuse(message, guid)
        if cost:
            weight = self._startup
            used, wanted = self.demand(), streams * cost * weight
            idle = not self._reserved and not self.windows.open_windows()
            if used + wanted > self.budget + 1e-9 and idle:
                # Nothing else runs here: refusing would not make anything
                # faster, and the figure is learnt only from streams.
                self.log.warn(
                    "start-streaming for guid {guid} admitted on an idle node although "
                    "{streams} stream(s) in {language} at about {cost:.2f} of a processor "
                    "each may not be transcribed in real time ({budget:.2f} processors "
                    "usable)", guid=guid, streams=streams, language=language, cost=cost,
                    budget=self.budget)
            elif used + wanted > self.budget + 1e-9:
                self.refused["capacity"] += 1
                room = max(0, int((self.budget - used) / (cost * weight) + 1e-9))
                message = (
                    f"speech recognition on this node is at capacity: {streams} more "
                    f"stream(s) in {language} would not be transcribed in real time (room for "
                    f"{room}; {len(self.windows.open_windows())} streams open, each costing "
                    f"about {cost:.2f} of a processor{self._startup_note(weight)}, "
                    f"{self.budget:.2f} of {self.processors:g} processors usable); try another "
                    "node or later")
                self._refuse(message, guid)
        self._reserved.add(reservation)
        return reservation

    def _startup_note(self, weight):
        if self.clock is None:
            return ""
        note = f" and {STARTUP_FACTOR:g} times that during its first {STARTUP_SECONDS:g} s"
        if weight > STARTUP_FACTOR:
            note += (f", a start {weight:g} times while another stream is in its first "
                     "seconds")
        return note

    def _refuse(self, message, guid):
        self.log.info("start-streaming for guid {guid} refused: {reason}", guid=guid,
                      reason=message)
        raise AtCapacity(message)
