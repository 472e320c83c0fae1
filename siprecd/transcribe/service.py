"""Calls -> the start/stop gate of each stream -> pipelines -> stored utterances.

:class:`TranscriptionService` is three things at once:

- the media plane's ``IStreamConsumer``: every stream's PCM and events come
  here, and go on to a recogniser only while the call is being transcribed;
- an ``ICallListener``: a call is stored when it is offered (the 200 OK
  waits for that), updated on re-INVITEs, finalised and ended on BYE;
- the control API's back end: :meth:`start` and :meth:`stop` as SPEC §3
  defines start-streaming and stop-streaming, with its error codes as
  :mod:`siprecd.transcribe.errors` exceptions.

Gate, windows and legs
    Audio reaches a recogniser only between a start and the next stop (a
    *window*); each window of each stream has its own recogniser and
    :class:`~siprecd.transcribe.pipeline.StreamPipeline`, so nothing from
    before a start or after a stop is ever fed, and a stop ends the open
    utterance. A start with another agentId than the last one starts a
    new leg; within a leg each participant's stream keeps its streamId
    (a uuid4) across windows.

Roles
    ``mediaLineOrder`` of the start decides: the first audio m-line
    (``audio_index`` 0) is the customer unless ``AGENT_FIRST``; a call
    recorded as one mixed stream has one role, ``media.mixed_role``.

Utterances
    Each finished utterance gets its numbers formatted (English and
    Spanish, ``asr.format_numbers``), goes through the ``redact`` hook, and
    is stored with its outbox rows in one transaction
    (``IStorage.add_message``), in order per stream (writes are serialised
    per stream and retried on failure, with the same message id, so a retry
    never stores it twice). Only then is it handed to ``on_utterance``.
"""

import uuid
from collections import deque

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from siprecd.interfaces import (
    ICallListener, IDrainable, IStreamConsumer, RecordNotFound, StorageError,
)
from siprecd.storage.records import Call, Message, Stream
from siprecd.transcribe.errors import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, Conflict, NoSuchCall,
    NotAllowed, RequestInProgress,
)
from siprecd.numbers import format_numbers as format_spoken_numbers
from siprecd.transcribe.pipeline import StreamPipeline
from siprecd.transcribe.segment import SAMPLE_RATE, Segmenter

__all__ = ["TranscriptionService", "StartParams", "no_redaction", "CUSTOMER", "AGENT"]

CUSTOMER, AGENT = "customer", "agent"
ROLES = (CUSTOMER, AGENT)
REDACTION_OUTPUTS = ("redacted", "unredacted", "redacted_and_unredacted")
MEDIA_LINE_ORDERS = ("CUSTOMER_FIRST", "AGENT_FIRST")
OK_STATUS = {"code": 1000, "description": "OK"}
# Delays between attempts to store an utterance the database refused; the
# last one repeats for as long as the node runs (a database that is down
# for minutes loses nothing), or STOPPING_ATTEMPTS more once it stops.
STORE_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
STOPPING_ATTEMPTS = 3
# Utterances of one stream waiting to be stored before new ones are dropped
# (memory stays bounded through a long database outage).
MAX_PENDING_WRITES = 5000


def no_redaction(text, tokens):
    """The default ``redact`` hook: nothing is redacted."""
    return text, tokens


def _language_tag(value):
    return str(value).strip().replace("_", "-").lower()


@attrs.frozen
class StartParams:
    """A start-streaming request's transcription settings, checked."""

    customer_id: str
    agent_id: str
    language: str = "en-us"                 # lower case
    detailed_token: bool = False
    audio_recording_allowed: bool = False
    redaction_output: str = "redacted"
    media_line_order: str = "CUSTOMER_FIRST"
    webhook_target: str | None = None
    app_id: str | None = None

    @classmethod
    def check(cls, customer_id, agent_id, language, detailed_token, audio_recording_allowed,
              redaction_output, media_line_order, webhook_target, languages, app_id=None):
        for name, value in (("customerId", customer_id), ("agentId", agent_id)):
            if not isinstance(value, str) or not value.strip():
                raise BadParameter(f"{name} is required (a non-empty string)")
        for name, value in (("detailedToken", detailed_token),
                            ("audioRecordingAllowed", audio_recording_allowed)):
            if not isinstance(value, bool):
                raise BadParameter(f"{name} must be true or false")
        if not isinstance(language, str) or not language.strip():
            raise BadParameter("language must be a language tag such as en-US")
        if not isinstance(redaction_output, str) or redaction_output not in REDACTION_OUTPUTS:
            raise NotAllowed(f"redactionOutput must be one of {', '.join(REDACTION_OUTPUTS)}")
        order = media_line_order.upper() if isinstance(media_line_order, str) else None
        if order not in MEDIA_LINE_ORDERS:
            raise BadParameter(f"mediaLineOrder must be one of {', '.join(MEDIA_LINE_ORDERS)}")
        tag = _language_tag(language)
        if tag not in languages:
            have = ", ".join(sorted(languages)) or "none"
            raise NotAllowed(f"language {language!r} is not available here (available: {have})")
        return cls(customer_id, agent_id, tag, detailed_token, audio_recording_allowed,
                   redaction_output, order, webhook_target or None, app_id)

    def as_dict(self):
        """As stored with the leg and the streams (the API's names)."""
        return {"language": self.language, "detailedToken": self.detailed_token,
                "audioRecordingAllowed": self.audio_recording_allowed,
                "redactionOutput": self.redaction_output,
                "mediaLineOrder": self.media_line_order, "appId": self.app_id}

    @property
    def keeps_unredacted(self):
        return self.redaction_output != "redacted"


class _SerialQueue:
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


@attrs.define(eq=False)
class _LegStream:
    """One participant's stream in one leg: the API's streamId."""

    id: str
    role: str
    leg_id: str
    external_id: str
    label: str | None
    created_ms: int
    writes: _SerialQueue = attrs.field(factory=_SerialQueue)
    samples: int = 0              # audio that passed the open gate
    fed: int = 0                  # given to the recogniser
    skipped: int = 0              # silence not given to it
    dropped: int = 0              # dropped while the recogniser was too far behind
    transcripts: int = 0          # utterances stored
    lost: int = 0                 # utterances that could not be stored
    windows: int = 0
    streaming_seconds: float = 0.0
    opened_at: float | None = None

    def summary(self):
        return {"totalAudioBytes": self.samples * 2,
                "audioDurationMs": self.samples * 1000 // SAMPLE_RATE,
                "streamingSeconds": int(round(self.streaming_seconds)),
                "transcripts": self.transcripts}

    def stats(self):
        return dict(self.summary(),
                    recognizedAudioMs=self.fed * 1000 // SAMPLE_RATE,
                    skippedSilenceMs=self.skipped * 1000 // SAMPLE_RATE,
                    droppedAudioMs=self.dropped * 1000 // SAMPLE_RATE,
                    lostTranscripts=self.lost, windows=self.windows)


@attrs.define(eq=False)
class _Window:
    """One stream between a start and a stop."""

    pipeline: StreamPipeline
    leg_stream: _LegStream
    params: StartParams
    key: tuple


@attrs.define(eq=False)
class _Call:
    session: object
    guid: str
    call_id: str
    phase: str = "offered"       # offered -> active -> ending -> ended
    stored: object = None        # _Outcome of the first upsert
    busy: bool = False
    streaming: bool = False
    leg: object = None           # storage Leg of the current leg
    params: StartParams | None = None
    roles: dict = attrs.field(factory=dict)      # role -> _LegStream (current leg)
    windows: dict = attrs.field(factory=dict)    # stream key -> _Window
    origins: dict = attrs.field(factory=dict)    # stream key -> UNIX ms of position 0
    redaction: object = None     # ReleaseTimer over the call's CallRedactor


def _key(label, audio_index):
    return (label, audio_index)


@implementer(IStreamConsumer, ICallListener, IDrainable)
class TranscriptionService(service.Service):
    """See the module docstring.

    *storage* is an IStorage, *backend* an IASRBackend (its ``ready`` says
    whether recognisers can be made), *clock* an IReactorTime. *redact* is
    ``redact(text, tokens) -> (text, tokens)`` (tokens: a list of
    ``siprecd.transcribe.numbers.Token``); *on_utterance(message)* gets
    every stored Message (with its sequence, guid, leg, role and
    externalId filled in).
    """

    log = Logger()
    name = "transcription"

    def __init__(self, storage, backend, clock, *, node="siprecd", endpoint_silence=0.5,
                 max_utterance=30.0, format_numbers=True, mixed_role=CUSTOMER, redact=None,
                 redaction=None, recordings=None,
                 on_utterance=None, skip_silence=True, vad_threshold=-45.0, chunk=0.2,
                 skip_after=1.0, preroll=0.5, warn_backlog=10.0, max_backlog=120.0):
        if mixed_role not in ROLES:
            raise ValueError(f"mixed_role must be one of {', '.join(ROLES)}")
        self.storage = storage
        self.backend = backend
        self.clock = clock
        self.node = node
        self.format_numbers = format_numbers
        self.mixed_role = mixed_role
        # Either a stateless hook, or a policy applied per call with
        # hold-back, look-back and the other party's context (the default).
        self.redact = redact
        if redact is None and redaction is None:
            from siprecd.redact import Policy

            redaction = Policy()
        self.redaction = redaction
        # A siprecd.recordings.RecordingStore, for windows that allow it.
        self.recordings = recordings
        self.on_utterance = on_utterance
        self.segmenter_options = dict(
            endpoint=endpoint_silence, max_utterance=max_utterance, threshold=vad_threshold,
            chunk=chunk, skip_after=skip_after, preroll=preroll, skip_silence=skip_silence)
        self.warn_backlog = int(warn_backlog * SAMPLE_RATE)
        self.max_backlog = int(max_backlog * SAMPLE_RATE)
        self.accepting = True
        # Metrics hooks (siprecd.metrics), None when not measured: each
        # window's StreamPipeline.on_asr_call, and on_stored(message, now
        # ms) after each utterance is stored.
        self.on_asr_call = None
        self.on_stored = None
        self._by_guid = {}
        self._by_call_id = {}
        self._in_flight = set()

    @classmethod
    def from_config(cls, config, storage, backend, clock, **options):
        """With the ``asr`` and ``media`` settings of *config*."""
        if "redact" not in options:
            from siprecd.redact import Policy

            options.setdefault("redaction", Policy.from_config(config.redaction))
        return cls(storage, backend, clock, node=config.node.name,
                   endpoint_silence=config.asr.endpoint_silence,
                   max_utterance=config.asr.max_utterance,
                   format_numbers=config.asr.format_numbers,
                   mixed_role=config.media.mixed_role, **options)

    # -- the control API ---------------------------------------------------------

    def start(self, guid, customer_id, agent_id, language="en-US", detailed_token=False,
              audio_recording_allowed=False, redaction_output="redacted",
              media_line_order="CUSTOMER_FIRST", webhook_target=None, app_id=None):
        """start-streaming: a Deferred firing with ``{role: {"streamId",
        "status"}}``, or failing with a TranscriptionError. *app_id* (the
        API app asking) is kept with the leg's settings."""
        try:
            params = StartParams.check(
                customer_id, agent_id, language, detailed_token, audio_recording_allowed,
                redaction_output, media_line_order, webhook_target,
                {_language_tag(t) for t in self.backend.languages()}, app_id)
            call = self._request(guid)
            if call.streaming:
                raise AlreadyInState(f"transcription of {guid} is already started")
            last = call.params
            if (last is not None and last.agent_id == params.agent_id
                    and last.media_line_order != params.media_line_order):
                raise Conflict(
                    f"mediaLineOrder is {last.media_line_order} for this leg; it can change "
                    "only with a new agentId (a new leg)")
            if not self.accepting:
                raise AsrUnavailable("this node is shutting down")
        except Exception:
            return defer.fail()
        return self._track(self._serialised(call, self._start(call, params)))

    def stop(self, guid):
        """stop-streaming: a Deferred firing with ``{role: {"streamId",
        "status", "summary"}}`` once the open utterances are stored."""
        try:
            call = self._request(guid)
            if not call.streaming:
                raise AlreadyInState(f"transcription of {guid} is not started")
        except Exception:
            return defer.fail()
        # The gate closes now: audio after this request is not transcribed.
        call.streaming = False
        return self._track(self._serialised(call, self._stop(call)))

    def current_app(self, guid):
        """The app id of the last accepted start of an active call, or None."""
        call = self._by_guid.get(guid)
        return None if call is None or call.params is None else call.params.app_id

    def is_active(self, guid):
        """True while *guid* is an active call on this node."""
        call = self._by_guid.get(guid)
        return call is not None and call.phase != "ended"

    def is_streaming(self, guid):
        call = self._by_guid.get(guid)
        return bool(call is not None and call.streaming)

    def _request(self, guid):
        if not isinstance(guid, str) or not guid:
            raise BadParameter("guid is required")
        call = self._by_guid.get(guid)
        if call is None or call.phase == "ended":
            raise NoSuchCall(f"no active SIPREC call with guid {guid}")
        if call.phase == "ending":
            raise CallEnding(f"the call {guid} is ending (BYE in progress)")
        if call.busy:
            raise RequestInProgress(f"another request for {guid} is still being processed")
        return call

    def _serialised(self, call, coroutine):
        call.busy = True

        def done(result):
            call.busy = False
            return result

        return defer.ensureDeferred(coroutine).addBoth(done)

    async def _start(self, call, params):
        await self._stored(call)
        if not getattr(self.backend, "ready", False):
            raise AsrUnavailable("speech recognition is not ready")
        roles = self._roles(call.session, params.media_line_order)
        recognizers = {}
        try:
            for key in roles:
                recognizers[key] = self.backend.new_recognizer(params.language, SAMPLE_RATE)
        except ValueError as e:
            self._close_all(recognizers)
            raise NotAllowed(str(e)) from None
        except Exception as e:
            self._close_all(recognizers)
            self.log.failure("making recognisers for guid {guid}", guid=call.guid)
            raise AsrUnavailable(f"speech recognition is unavailable: {e}") from None
        try:
            await self._leg_streams(call, params, roles)
        except Exception as e:
            self._close_all(recognizers)
            if isinstance(e, StorageError):
                self.log.error("cannot store the leg of guid {guid}: {error}", guid=call.guid,
                               error=str(e))
                raise AsrUnavailable(f"cannot store the transcription: {e}") from None
            raise
        if call.phase != "active":
            self._close_all(recognizers)
            raise CallEnding(f"the call {call.guid} is ending (BYE in progress)")
        now = self.clock.seconds()
        call.params = params
        call.streaming = True
        for key, role in roles.items():
            self._open_window(call, key, role, recognizers[key])
        for leg_stream in call.roles.values():
            leg_stream.opened_at = now
        self.log.info("transcription started for guid {guid} (leg {leg}, {language})",
                      guid=call.guid, call_id=call.call_id, leg=call.leg.number,
                      language=params.language)
        return {role: {"streamId": ls.id, "status": dict(OK_STATUS)}
                for role, ls in sorted(call.roles.items()) if role in roles.values()}

    async def _stop(self, call):
        now = self.clock.seconds()
        for leg_stream in call.roles.values():
            self._close_time(leg_stream, now)
        windows, call.windows = list(call.windows.values()), {}
        await self._close_windows(windows, call)
        await self._save_stats(call, call.roles.values())
        self.log.info("transcription stopped for guid {guid}", guid=call.guid,
                      call_id=call.call_id)
        return {role: {"streamId": ls.id, "status": dict(OK_STATUS), "summary": ls.summary()}
                for role, ls in sorted(call.roles.items())}

    def _roles(self, session, media_line_order):
        """{stream key: role} for the session's streams."""
        streams = list(session.streams)
        if len(streams) == 1:
            s = streams[0]
            return {_key(s.label, s.audio_index): self.mixed_role}
        order = ROLES if media_line_order == "CUSTOMER_FIRST" else ROLES[::-1]
        out = {}
        for s in streams:
            if s.audio_index < len(order):
                out[_key(s.label, s.audio_index)] = order[s.audio_index]
        return out

    async def _leg_streams(self, call, params, roles):
        """The current leg (a new one for a new agentId) and the streams of
        *roles* ({stream key: role}), stored with this start's settings."""
        if call.leg is None or call.params is None or call.params.agent_id != params.agent_id:
            if call.leg is not None and self.recordings is not None:
                self._track(self.recordings.close_leg(call.guid, call.leg.id))
            call.leg = await self.storage.start_leg(
                call.guid, params.customer_id, params.agent_id, params.as_dict())
            call.roles = {}
        labels = {role: key[0] for key, role in roles.items()}
        writes = []
        for role in sorted(set(roles.values())):
            leg_stream = call.roles.get(role)
            external = params.customer_id if role == CUSTOMER else params.agent_id
            if leg_stream is None:
                leg_stream = _LegStream(str(uuid.uuid4()), role, call.leg.id, external,
                                        labels.get(role), self._now_ms())
            leg_stream.external_id = external
            writes.append(self._store_stream(call, leg_stream, params))
        stored = await defer.gatherResults(writes, consumeErrors=True).addErrback(_first_error)
        for leg_stream in stored:
            call.roles[leg_stream.role] = leg_stream

    def _store_stream(self, call, leg_stream, params):
        record = Stream(leg_stream.id, call.guid, leg_stream.leg_id, leg_stream.role,
                        leg_stream.external_id, leg_stream.created_ms, label=leg_stream.label,
                        params=params.as_dict())
        return self.storage.upsert_stream(record).addCallback(lambda _: leg_stream)

    def _open_window(self, call, key, role, recognizer):
        leg_stream = call.roles[role]
        label, audio_index = key
        context = {"guid": call.guid, "call_id": call.call_id, "stream_id": leg_stream.id}
        window = _Window(None, leg_stream, call.params, key)
        window.pipeline = StreamPipeline(
            recognizer, Segmenter(**self.segmenter_options),
            lambda utterance: self._utterance(call, window, utterance),
            warn_backlog=self.warn_backlog, max_backlog=self.max_backlog, log_context=context)
        window.pipeline.on_asr_call = self.on_asr_call
        call.windows[key] = window
        leg_stream.windows += 1
        return window

    @staticmethod
    def _close_all(recognizers):
        for recognizer in recognizers.values():
            try:
                recognizer.close()
            except Exception:
                pass

    def _close_time(self, leg_stream, now):
        if leg_stream.opened_at is not None:
            leg_stream.streaming_seconds += max(0.0, now - leg_stream.opened_at)
            leg_stream.opened_at = None

    async def _close_windows(self, windows, call=None):
        await defer.gatherResults([w.pipeline.close() for w in windows])
        if call is not None and call.redaction is not None:
            # Utterances held back for a number that might continue are
            # released now: nothing more of these windows is coming.
            for w in windows:
                call.redaction.flush(w.key)
        for window in windows:
            ls, pipeline = window.leg_stream, window.pipeline
            ls.fed += pipeline.segmenter.stats["fed"]
            ls.skipped += pipeline.segmenter.stats["skipped"]
            ls.dropped += pipeline.dropped
        # Every utterance of these windows is stored before this returns.
        await defer.gatherResults([w.leg_stream.writes.idle() for w in windows])

    async def _save_stats(self, call, leg_streams):
        for leg_stream in list(leg_streams):
            try:
                await self.storage.update_stream_stats(leg_stream.id, leg_stream.stats())
            except StorageError as e:
                self.log.warn("cannot store the statistics of stream {stream_id}: {error}",
                              guid=call.guid, stream_id=leg_stream.id, error=str(e))

    # -- utterances ------------------------------------------------------------------

    def _utterance(self, call, window, raw):
        tokens = list(raw.tokens)
        if self.format_numbers:
            tokens = format_spoken_numbers(tokens, window.params.language)
        if self.redact is not None:
            text = " ".join(t.content for t in tokens)
            redacted_text, redacted_tokens = self.redact(text, list(tokens))
            self._store_utterance(call, window, raw, tokens, text, redacted_text,
                                  redacted_tokens)
            return
        self._redaction(call, window.params.language).feed(
            window.key, window.leg_stream.role, tokens, ref=(window, raw))

    def _redaction(self, call, language):
        from siprecd.redact import CallRedactor, ReleaseTimer

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
                and released.spans):
            ls = window.leg_stream
            for span in released.spans:
                self.recordings.silence(call.guid, ls.leg_id, ls.role, span.start, span.end)
        self._store_utterance(call, window, raw, list(released.tokens), released.text,
                              released.redacted_text, list(released.redacted_tokens))

    def _store_utterance(self, call, window, raw, tokens, text, redacted_text, redacted_tokens):
        params, leg_stream = window.params, window.leg_stream
        shown = tokens if params.redaction_output == "unredacted" else redacted_tokens
        origin = call.origins.get(window.key)
        message = Message(
            id=str(uuid.uuid4()), stream_id=leg_stream.id, text=redacted_text,
            start_ms=raw.start, end_ms=raw.end, created_ms=self._now_ms(),
            client_ms=None if origin is None else origin + raw.start,
            unredacted_text=text if params.keeps_unredacted else None,
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
        leg_stream.writes.run(self._write, call, leg_stream, message, targets)

    async def _write(self, call, leg_stream, message, targets):
        attempt, after_stop = 0, 0
        while True:
            try:
                sequence = await self.storage.add_message(message, targets)
                break
            except Exception as e:
                retry = isinstance(e, StorageError) and not isinstance(e, RecordNotFound)
                if not self.running:
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
                              external_id=leg_stream.external_id)
        if self.on_utterance is not None:
            d = defer.maybeDeferred(self.on_utterance, stored)
            d.addErrback(lambda f: self.log.failure(
                "on_utterance failed for message {message_id}", f, message_id=message.id,
                stream_id=leg_stream.id))
        if self.on_stored is not None:
            self.on_stored(stored, self._now_ms())

    # -- IStreamConsumer ---------------------------------------------------------------

    def pcm(self, stream, position, samples):
        call = self._by_call_id.get(stream.call_id)
        if call is None:
            return
        key = _key(stream.label, stream.audio_index)
        if key not in call.origins:
            # Where position 0 was on the wall clock, for clientTimestamp.
            call.origins[key] = self._now_ms() - (position + len(samples)) * 1000 // SAMPLE_RATE
        if not call.streaming:
            return
        window = call.windows.get(key)
        if window is None:
            window = self._late_window(call, stream, key)
            if window is None:
                return
        window.leg_stream.samples += len(samples)
        window.pipeline.pcm(position, samples)
        if self.recordings is not None and window.params.audio_recording_allowed:
            ls = window.leg_stream
            self.recordings.audio(call.guid, ls.leg_id, ls.role, position, samples)

    def event(self, stream, kind, position, detail):
        if kind != "end":
            return  # holds arrive as silence on the timeline; nothing to do
        call = self._by_call_id.get(stream.call_id)
        if call is None:
            return
        window = call.windows.pop(_key(stream.label, stream.audio_index), None)
        if window is not None:
            self._track(defer.ensureDeferred(self._close_windows([window], call)))

    def _late_window(self, call, stream, key):
        """A stream that appeared after the start (a re-INVITE added it)."""
        role = self._roles(call.session, call.params.media_line_order).get(key)
        if role is None or role not in call.roles:
            return None
        try:
            recognizer = self.backend.new_recognizer(call.params.language, SAMPLE_RATE)
        except Exception as e:
            self.log.error("cannot transcribe a new stream of guid {guid}: {error}",
                           guid=call.guid, error=str(e))
            return None
        return self._open_window(call, key, role, recognizer)

    # -- ICallListener -------------------------------------------------------------------

    def call_offered(self, session):
        call = _Call(session, session.guid.value, session.call_id)
        self._by_call_id[call.call_id] = call
        self._by_guid[call.guid] = call
        d = self.storage.upsert_call(self._call_record(session))

        def stored(_):
            if call.phase == "offered":
                call.phase = "active"
            return None

        def failed(failure):
            self._forget(call)
            self.log.error("cannot store call {guid}; refusing it: {error}", guid=call.guid,
                           call_id=call.call_id, error=failure.getErrorMessage())
            return failure

        d.addCallbacks(stored, failed)
        call.stored = _Outcome(d)
        return call.stored.wait()

    def call_updated(self, session):
        call = self._by_call_id.get(session.call_id)
        if call is None:
            return
        call.session = session
        call.stored.wait().addCallback(
            lambda _: self.storage.upsert_call(self._call_record(session))
        ).addErrback(lambda f: self.log.warn(
            "cannot store the update of call {guid}: {error}", guid=call.guid,
            error=f.getErrorMessage()))
        if call.streaming:
            wanted = self._roles(session, call.params.media_line_order)
            gone = [w for k, w in call.windows.items() if k not in wanted]
            for window in gone:
                del call.windows[window.key]
            if gone:
                self._track(defer.ensureDeferred(self._close_windows(gone, call)))

    def call_ended(self, session, reason):
        call = self._by_call_id.get(session.call_id)
        if call is None or call.phase in ("ending", "ended"):
            return
        if call.stored.failed:
            self._forget(call)
            return
        call.phase = "ending"
        call.streaming = False
        self._track(defer.ensureDeferred(self._end(call, reason)))

    async def _end(self, call, reason):
        try:
            try:
                await self._stored(call)
            except Exception:
                return
            now = self.clock.seconds()
            for leg_stream in call.roles.values():
                self._close_time(leg_stream, now)
            windows, call.windows = list(call.windows.values()), {}
            await self._close_windows(windows, call)
            if call.redaction is not None:
                call.redaction.stop()
            if self.recordings is not None:
                await self.recordings.close_call(call.guid)
            # Writes of windows closed earlier (stop, stream end) finish too.
            await defer.gatherResults([ls.writes.idle() for ls in call.roles.values()])
            await self._save_stats(call, call.roles.values())
            others = [c for c in self._by_call_id.values()
                      if c.guid == call.guid and c is not call]
            if not others:
                try:
                    await self.storage.end_call(call.guid, reason)
                except StorageError as e:
                    self.log.error("cannot mark call {guid} ended: {error}", guid=call.guid,
                                   error=str(e))
        finally:
            call.phase = "ended"
            self._forget(call)

    def _forget(self, call):
        if call.redaction is not None:
            call.redaction.stop()
            call.redaction = None
        if self._by_call_id.get(call.call_id) is call:
            del self._by_call_id[call.call_id]
        if self._by_guid.get(call.guid) is call:
            del self._by_guid[call.guid]
            # An older session with the same guid is the active one again.
            for other in self._by_call_id.values():
                if other.guid == call.guid:
                    self._by_guid[call.guid] = other

    def _call_record(self, session):
        identifiers = [{"source": i.source, "value": i.value, "raw": i.raw}
                       for i in session.identifiers]
        senders = {}
        metadata = session.metadata
        if metadata is not None:
            for label, participant in metadata.label_to_participant().items():
                senders.setdefault(participant.id, []).append(label)
        participants = [
            {"id": p.id, "aors": list(p.aors), "name": p.name, "sends": list(p.sends),
             "receives": list(p.receives), "labels": senders.get(p.id, [])}
            for p in session.participants()
        ]
        host, port = (tuple(session.remote) + (None, None))[:2]
        sip = {"callId": session.call_id, "transport": session.transport,
               "remote": f"{host}:{port}", "sessionId": session.session_id,
               "streams": [{"label": s.label, "audioIndex": s.audio_index,
                            "codec": getattr(s.codec, "name", None)} for s in session.streams]}
        return Call(session.guid.value, session.call_id, self.node,
                    int(round(session.started_at * 1000)), identifiers=identifiers, sip=sip,
                    participants=participants, mixed=bool(session.mixed))

    async def _stored(self, call):
        try:
            await call.stored.wait()
        except Exception:
            raise NoSuchCall(f"no active SIPREC call with guid {call.guid}") from None

    # -- life cycle -----------------------------------------------------------------------

    def stop_accepting(self):
        self.accepting = False

    def drain(self):
        """Fires when every stop, call end and stored utterance in flight is done."""
        return defer.DeferredList(list(self._in_flight), consumeErrors=True)

    def stopService(self):
        service.Service.stopService(self)
        self.stop_accepting()
        for call in list(self._by_call_id.values()):
            if call.phase in ("offered", "active"):
                call.phase = "ending"
                call.streaming = False
                self._track(defer.ensureDeferred(self._end(call, "shutdown")))
        return self.drain()

    def _track(self, d):
        self._in_flight.add(d)

        def done(result):
            self._in_flight.discard(d)
            return result

        d.addBoth(done)
        return d

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))


class _Outcome:
    """The result of a Deferred, for any number of later waiters."""

    _PENDING = object()

    def __init__(self, d):
        self.result = self._PENDING
        self._waiters = []
        d.addBoth(self._fired)

    @property
    def failed(self):
        return isinstance(self.result, Failure)

    def _fired(self, result):
        self.result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._tell(waiter)

    def _tell(self, waiter):
        if isinstance(self.result, Failure):
            waiter.errback(self.result)
        else:
            waiter.callback(self.result)

    def wait(self):
        d = defer.Deferred()
        if self.result is self._PENDING:
            self._waiters.append(d)
        else:
            self._tell(d)
        return d


def _first_error(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure
