"""One stream's audio through one recogniser, in order, off the reactor.

A :class:`StreamPipeline` lives for one start/stop window of one stream. It
runs the :class:`~siprecd.transcribe.segment.Segmenter`'s actions against
an IRecognizer with exactly one call in flight (the recogniser works on the
backend's threads; the reactor only queues and waits), maps the words of
every finished result onto the stream's timeline and hands the utterance
to its owner.

Deadlines. Each action is stamped with the time it was queued (on the
injected clock: when its audio had arrived). A recogniser whose backend
shares threads between streams (``IDeadlineRecognizer``) is told by when
each answer is wanted: a chunk of audio ``max_lag`` after it arrived, a
finish (someone waits for the utterance it ends) and the chunks before it
as soon as possible; the backend runs the most urgent first
(``siprecd.asr.scheduling``).

Lag is how long the oldest action not yet answered has been waiting
(:meth:`StreamPipeline.lag`): past ``max_lag`` the stream is behind real
time, which is logged once (naming the stream) until it has caught up.
If the recogniser falls further behind, audio waits in the queue; past
``warn_backlog`` samples that is logged, and past ``max_backlog`` new audio
is dropped (logged, counted, and marked as a gap so no utterance spans it)
rather than let memory grow without end. Order is never changed.

Interim results (optional, for live output): with an
:class:`~siprecd.transcribe.interim.InterimResults` and a recogniser that
offers ``IPartialResults``, some chunks are fed with ``accept_partial``
instead of ``accept``; partials are handed to it in the order the
recogniser gives them, and a final takes the id of the partials it closes.
"""

import time
from collections import deque

import attrs
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from siprecd.asr.results import Token
from siprecd.hooks import Hook
from siprecd.interfaces import IDeadlineRecognizer, IPartialResults
from siprecd.transcribe.segment import SAMPLE_RATE, Feed, Finish
from siprecd.transcribe.timeline import Timeline

__all__ = ["RawUtterance", "StreamPipeline"]


@attrs.frozen
class RawUtterance:
    """A finished result on the stream's timeline, before formatting."""

    text: str
    tokens: tuple        # Token, times in ms on the stream's timeline
    start: int           # ms
    end: int             # ms
    reason: str          # what ended it: "endpoint" (the recogniser), or a Finish reason
    # The id of the partials it closes (its messageId), when some were shown.
    id: str | None = None


class StreamPipeline:
    log = Logger()

    def __init__(self, recognizer, segmenter, on_utterance, *, clock, max_lag=1.0,
                 warn_backlog=10 * SAMPLE_RATE, max_backlog=120 * SAMPLE_RATE, log_context=None,
                 on_asr_call=(), rate=SAMPLE_RATE, interim=None):
        """*rate*: the sample rate of the audio (and of the recogniser);
        the backlog limits are in samples at that rate. *clock* stamps
        each action with when it was queued; *max_lag*: see the module doc."""
        self.recognizer = recognizer
        # siprecd.transcribe.interim.InterimResults, when partials are wanted.
        self.interim = interim if IPartialResults.providedBy(recognizer) else None
        self.segmenter = segmenter
        self.on_utterance = on_utterance
        self.clock = clock
        self.max_lag = max_lag
        self.warn_backlog = warn_backlog
        self.max_backlog = max_backlog
        self._deadlines = IDeadlineRecognizer.providedBy(recognizer)
        self.rate = rate
        self.timeline = Timeline(rate)
        self.context = dict(log_context or {})
        self.dropped = 0           # samples dropped because the recogniser was too far behind
        self.errors = 0
        self.results = 0
        self._ops = deque()        # (action, when it was queued)
        self._backlog = 0          # samples queued for the recogniser
        self._busy = False
        self._asked_at = None      # when the action in flight was queued
        self._finishes = 0         # Finish actions in the queue
        self._late = False         # behind by more than max_lag (and said so)
        self._pumping = False
        # Audio given to the recogniser since the last Finish: without it a
        # Finish has nothing to finish and costs a recogniser call (and,
        # for a stream that was silent all along, making a recogniser).
        self._unfinished = False
        self._closing = False
        self.closed = False
        self._close_waiters = []
        self._behind = False
        self._dropping = False
        # on_asr_call(audio seconds, busy seconds, ok) after each recogniser
        # call, for metrics.
        self.on_asr_call = Hook("on_asr_call", *on_asr_call)

    @property
    def backlog(self):
        """Samples waiting for the recogniser."""
        return self._backlog

    def lag(self, now=None):
        """Seconds the oldest action not yet answered has waited (0 when
        the recogniser has nothing to do)."""
        if self._asked_at is not None:
            oldest = self._asked_at
        elif self._ops:
            oldest = self._ops[0][1]
        else:
            return 0.0
        return max(0.0, (self.clock.seconds() if now is None else now) - oldest)

    # -- input ----------------------------------------------------------------

    def pcm(self, position, samples):
        if self._closing:
            return
        # Once dropping, wait until half the queue is worked off, so the
        # stream is not cut into many small pieces.
        limit = self.max_backlog // 2 if self._dropping else self.max_backlog
        if self._backlog + len(samples) > limit:
            self.dropped += len(samples)
            if not self._dropping:
                self._dropping = True
                self.log.warn(
                    "asr is {seconds:.0f} s behind on stream {stream_id}; dropping audio "
                    "until it catches up", seconds=self._backlog / self.rate, **self.context)
            return
        if self._dropping:
            self._dropping = False
            self.log.warn("asr caught up on stream {stream_id}; {dropped:.1f} s of audio dropped "
                          "so far", dropped=self.dropped / self.rate, **self.context)
        self._queue(self.segmenter.push(position, samples))

    def close(self):
        """End the window: feed what is left, finish the open utterance,
        free the recogniser. Fires once its utterances were handed on."""
        if self.closed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._close_waiters.append(d)
        if not self._closing:
            self._closing = True
            actions = self.segmenter.close()
            actions.append(Finish(self.segmenter.position or 0, "stop"))
            self._queue(actions)
        return d

    # -- the queue ------------------------------------------------------------------

    def _queue(self, actions):
        now = self.clock.seconds()
        for action in actions:
            self._ops.append((action, now))
            if isinstance(action, Feed):
                self._backlog += len(action)
            else:
                self._finishes += 1
        self._check_lag(now)
        if self._backlog > self.warn_backlog and not self._behind:
            self._behind = True
            self.log.warn("asr is falling behind on stream {stream_id}: {seconds:.1f} s queued",
                          seconds=self._backlog / self.rate, **self.context)
        elif self._behind and self._backlog <= self.warn_backlog // 2:
            self._behind = False
        self._pump()

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and self._ops:
                op, queued = self._ops.popleft()
                if isinstance(op, Finish):
                    self._finishes -= 1
                # Real time, not the reactor's: what the recogniser costs.
                started = time.perf_counter()
                if isinstance(op, Feed):
                    self._busy = True
                    self._unfinished = True
                    self._backlog -= len(op)
                    self.timeline.fed_at(op.position, len(op))
                    accept = self.recognizer.accept
                    if self.interim is not None and self.interim.ask(len(op), self._backlog):
                        accept = self.recognizer.accept_partial
                    d = self._ask(accept, queued, op.samples.tobytes())
                elif self._unfinished:
                    self._busy = True
                    self._unfinished = False
                    d = self._ask(self.recognizer.finish, queued)
                else:
                    continue
                d.addBoth(self._done, op, started)
        finally:
            self._pumping = False
        if not self._busy and not self._ops and self._closing and not self.closed:
            self._release()

    def _ask(self, call, queued, *args):
        """One recogniser call for an action queued at *queued*."""
        self._asked_at = queued
        if not self._deadlines:
            return defer.maybeDeferred(call, *args)
        # An utterance's end (and what it still waits on) is wanted at
        # once; other audio may wait up to max_lag.
        urgent = not args or self._finishes > 0
        deadline = queued if urgent else queued + self.max_lag
        return defer.maybeDeferred(call, *args, deadline=deadline)

    def _check_lag(self, now):
        lag = self.lag(now)
        if lag > self.max_lag and not self._late:
            self._late = True
            self.log.warn("speech recognition is {lag:.1f} s behind real time on stream "
                          "{stream_id}", lag=lag, **self.context)
        elif self._late and lag <= self.max_lag / 2:
            self._late = False
            self.log.info("speech recognition caught up on stream {stream_id}", **self.context)

    @property
    def late(self):
        """True while this stream is behind real time by more than max_lag."""
        return self._late

    def _done(self, results, op, started=None):
        self._busy = False
        self._asked_at = None
        if self.on_asr_call and started is not None:
            self.on_asr_call(len(op) / self.rate if isinstance(op, Feed) else 0.0,
                             time.perf_counter() - started, not isinstance(results, Failure),
                             **self.context)
        if isinstance(results, Failure):
            self.errors += 1
            # Once per window, as one line: a broken recogniser fails every
            # call after the first, and each would otherwise log again.
            if self.errors == 1:
                self.log.error("asr failed on stream {stream_id}: {error}; further failures "
                               "of this window are counted, not logged",
                               error=_describe(results), **self.context)
                self.log.failure("asr failure on stream {stream_id}", results,
                                 level=LogLevel.debug, **self.context)
        else:
            reason = op.reason if isinstance(op, Finish) else "endpoint"
            for result in results or ():
                self._result(result, reason)
        if self.interim is not None and isinstance(op, Finish):
            self.interim.withdraw()  # finished, and no final came for it
        self._pump()
        self._check_lag(self.clock.seconds())

    def _result(self, result, reason):
        if not getattr(result, "final", True):
            if self.interim is not None:
                try:
                    self.interim.partial(result, self.timeline)
                except Exception:
                    self.log.failure("handling a partial of stream {stream_id}", **self.context)
            return
        if not result.words:
            return
        tl = self.timeline
        tokens = []
        for w in result.words:
            start = tl.ms(w.start)
            tokens.append(Token(w.word, start, max(start, tl.ms(w.end, end=True)), float(w.conf)))
        tokens = tuple(tokens)
        self.results += 1
        utterance = RawUtterance(result.text, tokens, tokens[0].start, tokens[-1].end, reason,
                                 self.interim.close() if self.interim is not None else None)
        try:
            self.on_utterance(utterance)
        except Exception:
            self.log.failure("handling an utterance of stream {stream_id}", **self.context)

    def _release(self):
        self.closed = True
        try:
            self.recognizer.close()
        except Exception:
            self.log.failure("closing the recogniser of stream {stream_id}", **self.context)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)


def _describe(failure):
    text = " ".join(str(failure.value).split())[:300]
    name = type(failure.value).__name__
    return f"{name}: {text}" if text else name
