"""A recognised utterance on its way to storage: formatted, redacted,
stored with its outbox rows, then handed to the listeners.

:class:`UtteranceWriter` takes each finished utterance of a window
(:mod:`siprecd.transcribe.windows`), writes its spoken numbers as digits
(``asr.format_numbers``), redacts it (per call, with hold-back, look-back
and the other party's context: :class:`siprecd.redact.CallRedactor`; or a
stateless ``redact(text, tokens)`` hook), and stores it
(``IStorage.add_message``, the message and its outbox rows in one
transaction), in order per stream: writes are serialised per stream and
retried on failure with the same message id, so a retry never stores it
twice. Only then are ``on_utterance`` and ``on_stored`` told.

Fail closed: if formatting or redaction raises on an utterance, it is
still stored and delivered, with every word masked, and one error line
(without the text) says so. Nothing between the recogniser and storage
can lose an utterance or let unredacted text through.
"""

import uuid
from collections import deque

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from siprecd.hooks import Hook
from siprecd.interfaces import RecordNotFound, StorageError
from siprecd.numbers import format_numbers as format_spoken_numbers
from siprecd.redact import CallRedactor, ReleaseTimer, fail_closed
from siprecd.storage.records import Message

__all__ = ["UtteranceWriter", "SerialQueue", "no_redaction"]

# Delays between attempts to store an utterance the database refused; the
# last one repeats for as long as the node runs (a database that is down
# for minutes loses nothing), or STOPPING_ATTEMPTS more once it stops.
STORE_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
STOPPING_ATTEMPTS = 3
# Utterances of one stream waiting to be stored before new ones are dropped
# (memory stays bounded through a long database outage).
MAX_PENDING_WRITES = 5000


def no_redaction(text, tokens):
    """A ``redact`` hook that redacts nothing (for tests and tools)."""
    return text, tokens


class SerialQueue:
    """Runs async jobs one after the other; ``idle()`` fires when none is left."""

    def __init__(self):
        self._jobs = deque()
        self._running = False
        self._idle = []

    @property
    def pending(self):
        """Jobs waiting, and the one running."""
        return len(self._jobs) + (1 if self._running else 0)

    def run(self, job, *args):
        self._jobs.append((job, args))
        if not self._running:
            self._next()

    def _next(self):
        if not self._jobs:
            self._running = False
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
            return
        self._running = True
        job, args = self._jobs.popleft()
        d = defer.maybeDeferred(job, *args)
        d.addErrback(lambda f: None)  # jobs report their own failures
        d.addBoth(lambda _: self._next())

    def idle(self):
        if not self._running:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d


class UtteranceWriter:
    """See the module docstring.

    *redaction* is a :class:`siprecd.redact.Policy` applied per call;
    *redact*, when given instead, a stateless ``redact(text, tokens) ->
    (text, tokens)``. *on_utterance(message)* and *on_stored(message, now
    ms)* are told of every stored Message (with its sequence, guid, leg,
    role and externalId filled in). *running()* says whether the daemon
    still runs (after it stops, a failing write is tried only a few more
    times).
    """

    log = Logger()

    def __init__(self, storage, clock, *, format_numbers=True, redaction=None, redact=None,
                 recordings=None, on_utterance=(), on_stored=(), running=lambda: True):
        self.storage = storage
        self.clock = clock
        self.format_numbers = format_numbers
        self.redaction = redaction
        self.redact = redact
        self.recordings = recordings
        self.on_utterance = Hook("on_utterance", *on_utterance)
        self.on_stored = Hook("on_stored", *on_stored)
        self.running = running

    # -- in --------------------------------------------------------------------------

    def utterance(self, call, window, raw):
        """A finished utterance of *window* (a RawUtterance)."""
        try:
            tokens = list(raw.tokens)
            if self.format_numbers:
                tokens = format_spoken_numbers(tokens, window.params.language)
            if self.redact is not None:
                text = " ".join(t.content for t in tokens)
                redacted_text, redacted_tokens = self.redact(text, list(tokens))
                self._store(call, window, raw, tokens, text, redacted_text, redacted_tokens)
                return
            self._redaction(call, window.params.language).feed(
                window.key, window.leg_stream.role, tokens, ref=(window, raw))
        except Exception as e:
            self._fail_closed(call, window, raw, e)

    def _fail_closed(self, call, window, raw, error):
        # One line, the exception's type only: its message might hold words.
        self.log.error("formatting or redacting an utterance of stream {stream_id} failed "
                       "({error_type}); it is stored and delivered with every word masked",
                       guid=call.guid, stream_id=window.leg_stream.id,
                       error_type=type(error).__name__)
        tokens = list(raw.tokens)
        text = " ".join(t.content for t in tokens)
        masked_text, masked_tokens = fail_closed(tokens)
        self._store(call, window, raw, tokens, text, masked_text, list(masked_tokens),
                    masked_only=True)

    def flush(self, call, key):
        """Release what is held back for a number that might continue on
        stream *key*: nothing more of it is coming."""
        if call.redaction is not None:
            call.redaction.flush(key)

    def close_call(self, call):
        if call.redaction is not None:
            call.redaction.stop()
            call.redaction = None

    # -- redaction ------------------------------------------------------------------------

    def call_redactor(self, call, language):
        """The CallRedactor of *call* for *language* (partials preview with it)."""
        return self._redaction(call, language).redactor

    def _redaction(self, call, language):
        timer = call.redaction
        if timer is not None and timer.redactor.language != language:
            timer.stop()
            timer = None
        if timer is None:
            redactor = CallRedactor(self.redaction, language,
                                    log_context={"guid": call.guid, "call_id": call.call_id})
            timer = call.redaction = ReleaseTimer(
                redactor, self.clock, lambda released: self._released(call, released))
        return timer

    def _released(self, call, released):
        window, raw = released.ref
        if (self.recordings is not None and window.params.audio_recording_allowed
                and window.leg_stream.primary and released.spans):
            ls = window.leg_stream
            for span in released.spans:
                self.recordings.silence(call.guid, ls.leg_id, ls.role, span.start, span.end)
        self._store(call, window, raw, list(released.tokens), released.text,
                    released.redacted_text, list(released.redacted_tokens))

    # -- storage ---------------------------------------------------------------------------

    def _store(self, call, window, raw, tokens, text, redacted_text, redacted_tokens,
               masked_only=False):
        params, leg_stream = window.params, window.leg_stream
        # An utterance that could not be redacted is shown masked whatever
        # the call asked for, and its unredacted text is not kept.
        unredacted = params.redaction_output == "unredacted" and not masked_only
        shown = tokens if unredacted else redacted_tokens
        origin = call.origins.get(window.key)
        message = Message(
            # The id its partials were shown under, if any (the final replaces them).
            id=raw.id or str(uuid.uuid4()), stream_id=leg_stream.id,
            text=redacted_text,
            start_ms=raw.start, end_ms=raw.end, created_ms=self._now_ms(),
            client_ms=None if origin is None else origin + raw.start,
            unredacted_text=text if params.keeps_unredacted and not masked_only else None,
            tokens=[t.as_dict() for t in shown] if params.detailed_token else None,
            language=params.language,
        )
        targets = [params.webhook_target] if params.webhook_target else []
        if leg_stream.writes.pending >= MAX_PENDING_WRITES:
            leg_stream.lost += 1
            self.log.error("utterance {message_id} of stream {stream_id} dropped: "
                           "{pending} utterances are already waiting for the database",
                           guid=call.guid, stream_id=leg_stream.id, message_id=message.id,
                           pending=leg_stream.writes.pending)
            return
        leg_stream.writes.run(self._write, call, leg_stream, message, targets, params)

    async def _write(self, call, leg_stream, message, targets, params):
        attempt, after_stop = 0, 0
        while True:
            try:
                sequence = await self.storage.add_message(message, targets)
                break
            except Exception as e:
                retry = isinstance(e, StorageError) and not isinstance(e, RecordNotFound)
                if not self.running():
                    after_stop += 1
                if not retry or after_stop > STOPPING_ATTEMPTS:
                    leg_stream.lost += 1
                    self.log.error(
                        "utterance {message_id} of stream {stream_id} could not be stored: "
                        "{error}", guid=call.guid, stream_id=leg_stream.id,
                        message_id=message.id, error=str(e))
                    return
                delay = STORE_RETRIES[min(attempt, len(STORE_RETRIES) - 1)]
                attempt += 1
                # Every attempt at first, then about once a minute.
                if attempt <= len(STORE_RETRIES) or attempt % 6 == 0:
                    self.log.warn("storing an utterance of stream {stream_id} failed "
                                  "({error}); trying again in {delay} s (attempt {attempt})",
                                  guid=call.guid, stream_id=leg_stream.id, error=str(e),
                                  delay=delay, attempt=attempt)
                await task.deferLater(self.clock, delay, lambda: None)
        leg_stream.transcripts += 1
        self.log.debug("utterance {sequence} of stream {stream_id} stored "
                       "({start_ms}-{end_ms} ms)", guid=call.guid, stream_id=leg_stream.id,
                       sequence=sequence, start_ms=message.start_ms, end_ms=message.end_ms)
        stored = attrs.evolve(message, sequence=sequence, guid=call.guid,
                              leg_id=leg_stream.leg_id, role=leg_stream.role,
                              external_id=leg_stream.external_id,
                              stream_params=leg_stream.stored_params(params))
        context = {"message_id": message.id, "stream_id": leg_stream.id}
        self.on_utterance(stored, **context)
        self.on_stored(stored, self._now_ms(), **context)

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))
