"""One stream's audio through one recogniser, in order, off the reactor.

A :class:`StreamPipeline` lives for one start/stop window of one stream. It
runs the :class:`~siprecd.transcribe.segment.Segmenter`'s actions against
an IRecognizer with exactly one call in flight (the recogniser works on the
backend's threads; the reactor only queues and waits), maps the words of
every finished result onto the stream's timeline and hands the utterance
to its owner.

If the recogniser falls behind, audio waits in the queue; past
``warn_backlog`` samples that is logged, and past ``max_backlog`` new audio
is dropped (logged, counted, and marked as a gap so no utterance spans it)
rather than let memory grow without end. Order is never changed.
"""

import time
from collections import deque

import attrs
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from siprecd.asr.results import Token
from siprecd.hooks import Hook
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


class StreamPipeline:
    log = Logger()

    def __init__(self, recognizer, segmenter, on_utterance, *, warn_backlog=10 * SAMPLE_RATE,
                 max_backlog=120 * SAMPLE_RATE, log_context=None, on_asr_call=(),
                 rate=SAMPLE_RATE):
        """*rate*: the sample rate of the audio (and of the recogniser);
        the backlog limits are in samples at that rate."""
        self.recognizer = recognizer
        self.segmenter = segmenter
        self.on_utterance = on_utterance
        self.warn_backlog = warn_backlog
        self.max_backlog = max_backlog
        self.rate = rate
        self.timeline = Timeline(rate)
        self.context = dict(log_context or {})
        self.dropped = 0           # samples dropped because the recogniser was too far behind
        self.errors = 0
        self.results = 0
        self._ops = deque()
        self._backlog = 0          # samples queued for the recogniser
        self._busy = False
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
        for action in actions:
            self._ops.append(action)
            if isinstance(action, Feed):
                self._backlog += len(action)
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
                op = self._ops.popleft()
                # Real time, not the reactor's: what the recogniser costs.
                started = time.perf_counter()
                if isinstance(op, Feed):
                    self._busy = True
                    self._unfinished = True
                    self._backlog -= len(op)
                    self.timeline.fed_at(op.position, len(op))
                    d = defer.maybeDeferred(self.recognizer.accept, op.samples.tobytes())
                elif self._unfinished:
                    self._busy = True
                    self._unfinished = False
                    d = defer.maybeDeferred(self.recognizer.finish)
                else:
                    continue
                d.addBoth(self._done, op, started)
        finally:
            self._pumping = False
        if not self._busy and not self._ops and self._closing and not self.closed:
            self._release()

    def _done(self, results, op, started=None):
        self._busy = False
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
        self._pump()

    def _result(self, result, reason):
        if not getattr(result, "final", True) or not result.words:
            return
        tl = self.timeline
        tokens = []
        for w in result.words:
            start = tl.ms(w.start)
            tokens.append(Token(w.word, start, max(start, tl.ms(w.end, end=True)), float(w.conf)))
        tokens = tuple(tokens)
        self.results += 1
        utterance = RawUtterance(result.text, tokens, tokens[0].start, tokens[-1].end, reason)
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
