"""Calls and legs: which calls are up, start and stop on them, and what
of them is stored.

:class:`CallTable` holds this node's SIPREC sessions by Call-ID and their
conversations by guid (and the work in flight on them, for a clean
drain). Several sessions may carry one guid at once (Avaya keeps the UCID
across transfer and conference; Cisco's built-in bridge sends two sessions
with one Cisco-Guid): they are one :class:`Conversation`, start and stop on
the guid apply to every active session of it, each session keeps its own
streams (streamIds) and timelines, and a session that ends does not end the
others; the conversation ends with its last session.

:class:`CallControl` is the ``ICallListener`` that keeps the table (a call
is stored when it is offered, and the 200 OK waits for that; updated on
re-INVITEs; finalised and ended on BYE) and carries out start-streaming and
stop-streaming as docs/api.rst defines them, with its error codes as
:mod:`siprecd.transcribe.errors` exceptions.

Legs: a start with another customerId or agentId than the last one
starts a new leg, so what was said before keeps the sender it had; within
a leg each stream keeps its streamId (a uuid4) across windows
(:mod:`siprecd.transcribe.windows`), and a resume keeps the leg's
settings for what it leaves out (:class:`LegSettings`).

A stop closes the gate at once; what it let through is recognised and
stored however far behind the recognisers are (the answer waits for it up
to ``stop_wait``), and a session's end waits for it before the call is
marked ended.
"""

import uuid

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from siprecd.asr.common import AsrNotReady
from siprecd.hooks import Hook
from siprecd.interfaces import ICallListener, StorageError
from siprecd.storage.records import Call, Stream
from siprecd.transcribe.events import call_event
from siprecd.transcribe.errors import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, Conflict, NoSuchCall,
    NotAllowed, RequestInProgress,
)
from siprecd.transcribe.request import LegSettings, language_tag
from siprecd.transcribe.windows import CUSTOMER, ROLES, LegStream, stream_key

__all__ = ["ActiveCall", "Conversation", "CallTable", "CallControl", "OK_STATUS"]

OK_STATUS = {"code": 1000, "description": "OK"}


@attrs.define(eq=False)
class Conversation:
    """Every SIPREC session of one guid on this node (usually one)."""

    guid: str
    sessions: list = attrs.field(factory=list)   # ActiveCall, in arrival order
    busy: bool = False
    streaming: bool = False
    leg: object = None           # storage Leg of the current leg
    params: LegSettings | None = None
    # call_id -> (sip dict, participants list) of every session seen, for
    # the stored Call (which is one per guid).
    records: dict = attrs.field(factory=dict)

    def active(self):
        return [c for c in self.sessions if c.phase in ("offered", "active")]


@attrs.define(eq=False)
class ActiveCall:
    """One SIPREC session (one Call-ID)."""

    session: object
    guid: str
    call_id: str
    conversation: Conversation = None
    phase: str = "offered"       # offered -> active -> ending -> ended
    stored: object = None        # _Outcome of the first upsert
    streams: dict = attrs.field(factory=dict)    # stream key -> LegStream (current leg)
    windows: dict = attrs.field(factory=dict)    # stream key -> Window
    origins: dict = attrs.field(factory=dict)    # stream key -> UNIX ms of position 0
    redaction: object = None     # ReleaseTimer over the call's CallRedactor
    # Windows closed (a stop, a stream gone) whose audio is still being
    # recognised and stored: the session's end waits for them.
    closing: set = attrs.field(factory=set)

    @property
    def streaming(self):
        return self.conversation is not None and self.conversation.streaming

    @property
    def params(self):
        return None if self.conversation is None else self.conversation.params


class CallTable:
    """This node's sessions and conversations, and the work in flight on them."""

    def __init__(self):
        self.conversations = {}   # guid -> Conversation
        self.by_call_id = {}
        self.in_flight = set()

    def __iter__(self):
        return iter(list(self.by_call_id.values()))

    def conversation(self, guid):
        return self.conversations.get(guid)

    def add(self, call):
        conversation = self.conversations.get(call.guid)
        if conversation is None:
            conversation = self.conversations[call.guid] = Conversation(call.guid)
        call.conversation = conversation
        conversation.sessions.append(call)
        self.by_call_id[call.call_id] = call

    def forget(self, call):
        if self.by_call_id.get(call.call_id) is call:
            del self.by_call_id[call.call_id]
        conversation = call.conversation
        if conversation is not None and call in conversation.sessions:
            conversation.sessions.remove(call)
            if not conversation.sessions and self.conversations.get(call.guid) is conversation:
                del self.conversations[call.guid]

    def closing(self, call, d):
        """Track *d*, the closing of some of *call*'s windows, also as
        the call's: its end waits for it."""
        call.closing.add(d)

        def done(result):
            call.closing.discard(d)
            return result

        return self.track(d.addBoth(done))

    def track(self, d):
        """Keep *d* (work on a call) until it fires; see :meth:`drain`."""
        self.in_flight.add(d)

        def done(result):
            self.in_flight.discard(d)
            return result

        d.addBoth(done)
        return d

    def drain(self):
        return defer.DeferredList(list(self.in_flight), consumeErrors=True)


@implementer(ICallListener)
class CallControl:
    """See the module docstring. *windows* opens and closes the audio
    windows, *writer* is the UtteranceWriter (its per-call redaction is
    ended with the call); *accepting()* is false once the node stops;
    *on_call_event(CallEvent)* listeners are told what happens to calls
    (siprecd.transcribe.events)."""

    log = Logger()

    def __init__(self, calls, storage, backend, clock, windows, writer, *, node="siprecd",
                 recordings=None, accepting=lambda: True, auto_start=None, stop_wait=5.0,
                 admission=None, on_call_event=()):
        self.calls = calls
        self.admission = admission
        self.on_call_event = Hook("on_call_event", *on_call_event)
        self.storage = storage
        self.backend = backend
        self.clock = clock
        self.windows = windows
        self.writer = writer
        self.node = node
        self.recordings = recordings
        self.accepting = accepting
        # A siprecd.transcribe.autostart.AutoStart, or None (the API starts).
        self.auto_start = auto_start
        # How long a stop waits for the speech before it to be stored.
        self.stop_wait = stop_wait
        windows.late_window = self._late_window

    # -- start and stop -------------------------------------------------------------

    def start(self, request, app_id=None, webhook_target=None):
        """start-streaming for a checked StartRequest: a Deferred firing
        with ``{role: {"streamId", "status"}, "streams": [...], "settings":
        {...}, "legId": ...}`` (the role's main stream, every stream of
        every session of the guid, the settings in force for the leg), or
        failing with a TranscriptionError. *app_id* (the API app asking) and
        *webhook_target* (its target) are kept with the leg's settings."""
        try:
            if "language" in request.given:
                self._check_language(request.language)
            conversation = self._request(request.guid)
            if conversation.streaming:
                raise AlreadyInState(f"transcription of {request.guid} is already started")
            last = conversation.params
            if last is not None and last.same_leg(request):
                if ("mediaLineOrder" in request.given
                        and last.media_line_order != request.media_line_order):
                    raise Conflict(
                        f"mediaLineOrder is {last.media_line_order} for this leg; it can "
                        "change only with a new customerId or agentId (a new leg)")
                params = last.resumed(request, app_id, webhook_target or None)
            else:
                params = LegSettings(request, app_id, webhook_target or None)
            self._check_language(params.language)
            if not self.accepting():
                raise AsrUnavailable("this node is shutting down")
        except Exception:
            return defer.fail()
        return self.calls.track(self._serialised(conversation,
                                                 self._admitted(conversation, params)))

    def _check_language(self, language):
        languages = {language_tag(t) for t in self.backend.languages()}
        if language not in languages:
            have = ", ".join(sorted(languages)) or "none"
            raise NotAllowed(f"language {language!r} is not available here "
                             f"(available: {have})")

    def stop(self, guid):
        """stop-streaming: a Deferred firing with ``{role: {"streamId",
        "status", "summary"}, "streams": [...]}`` once what it let through
        is stored, or after ``stop_wait`` (each summary then says
        ``pending``)."""
        try:
            conversation = self._request(guid)
            if not conversation.streaming:
                raise AlreadyInState(f"transcription of {guid} is not started")
        except Exception:
            return defer.fail()
        # The gate closes now: audio after this request is not transcribed.
        conversation.streaming = False
        return self.calls.track(self._serialised(conversation, self._stop(conversation)))

    def current_app(self, guid):
        """The app id of the last accepted start of an active call, or None."""
        conversation = self.calls.conversation(guid)
        if conversation is None or conversation.params is None:
            return None
        return conversation.params.app_id

    def is_active(self, guid):
        """True while *guid* has an active session on this node."""
        conversation = self.calls.conversation(guid)
        return conversation is not None and any(c.phase != "ended"
                                                for c in conversation.sessions)

    def live(self, guid):
        """What this node knows of *guid* now: one entry per SIPREC session
        of it that is not over, each with its streams, their roles and
        transcription state. Empty when this node has no such call."""
        conversation = self.calls.conversation(guid)
        if conversation is None:
            return []
        return [self._session_view(call) for call in conversation.sessions
                if call.phase in ("offered", "active", "ending")]

    def _session_view(self, call):
        session, params = call.session, call.params
        roles = self.windows.roles(session, params.media_line_order) if params else {}
        streams = []
        for s in session.streams:
            key = stream_key(s.label, s.audio_index)
            leg_stream = call.streams.get(key)
            streams.append({
                "label": s.label, "audioIndex": s.audio_index,
                "codec": s.codec.name if s.codec is not None else None, "onHold": s.on_hold,
                "role": roles.get(key),
                "streamId": leg_stream.id if leg_stream is not None else None,
                "transcription": ("started" if key in call.windows else
                                  "stopped" if leg_stream is not None else "not started"),
                "participant": _participant_of(session, s.label),
            })
        conversation = call.conversation
        state = "started" if call.streaming else "stopped" if params else "not started"
        return {
            "callId": session.call_id, "transport": session.transport, "phase": call.phase,
            "startTimestampMs": int(round(session.started_at * 1000)), "streams": streams,
            "transcription": {
                "state": state,
                "legId": conversation.leg.id if conversation.leg is not None else None,
                "customerId": params.customer_id if params else None,
                "agentId": params.agent_id if params else None,
                "appId": params.app_id if params else None,
                "settings": params.in_force() if params else None},
        }

    def is_streaming(self, guid):
        conversation = self.calls.conversation(guid)
        return bool(conversation is not None and conversation.streaming)

    def _request(self, guid):
        if not isinstance(guid, str) or not guid:
            raise BadParameter("guid is required")
        conversation = self.calls.conversation(guid)
        sessions = [] if conversation is None else [c for c in conversation.sessions
                                                     if c.phase != "ended"]
        if not sessions:
            raise NoSuchCall(f"no active SIPREC call with guid {guid}")
        if all(c.phase == "ending" for c in sessions):
            raise CallEnding(f"the call {guid} is ending (BYE in progress)")
        if conversation.busy:
            raise RequestInProgress(f"another request for {guid} is still being processed")
        return conversation

    def _serialised(self, conversation, coroutine):
        conversation.busy = True

        def done(result):
            conversation.busy = False
            return result

        return defer.ensureDeferred(coroutine).addBoth(done)

    async def _admitted(self, conversation, params):
        """_start if the recognisers can keep the streams in real time
        (siprecd.transcribe.admission); refused with 500-201 if not."""
        if self.admission is None:
            return await self._start(conversation, params)
        streams = sum(len(self.windows.roles(call.session, params.media_line_order))
                      for call in conversation.active())
        with self.admission.reserve(params.language, streams, conversation.guid):
            return await self._start(conversation, params)

    async def _start(self, conversation, params):
        sessions = conversation.active()
        for call in sessions:
            await self._stored(call)
        sessions = conversation.active()
        if not sessions:
            raise CallEnding(f"the call {conversation.guid} is ending (BYE in progress)")
        if not self.backend.ready:
            raise AsrUnavailable("speech recognition is not ready")
        plan = [(call, key, role, self.windows.feed_rate(call.session, key))
                for call in sessions
                for key, role in self.windows.roles(call.session,
                                                    params.media_line_order).items()]
        recognizers = {}
        try:
            for call, key, _, rate in plan:
                recognizers[(call.call_id, key)] = self.windows.new_recognizer(params.language,
                                                                               rate)
        except ValueError as e:
            _close_all(recognizers)
            raise NotAllowed(str(e)) from None
        except AsrNotReady as e:
            # A configured language whose model is missing or still loading.
            _close_all(recognizers)
            raise AsrUnavailable(str(e)) from None
        except Exception:
            _close_all(recognizers)
            self.log.failure("making recognisers for guid {guid}", guid=conversation.guid)
            raise AsrUnavailable("speech recognition is unavailable; try again") from None
        try:
            await self._leg_streams(conversation, params, [(c, k, r) for c, k, r, _ in plan])
        except Exception as e:
            _close_all(recognizers)
            if isinstance(e, StorageError):
                self.log.error("cannot store the leg of guid {guid}: {error}",
                               guid=conversation.guid, error=str(e))
                raise AsrUnavailable("cannot store the transcription now; try again") from None
            raise
        if not conversation.active():
            _close_all(recognizers)
            raise CallEnding(f"the call {conversation.guid} is ending (BYE in progress)")
        now = self.clock.seconds()
        conversation.params = params
        conversation.streaming = True
        for call, key, role, rate in plan:
            recognizer = recognizers.pop((call.call_id, key))
            if call.phase not in ("offered", "active"):
                recognizer.close()
                continue
            self.windows.open(call, key, call.streams[key], recognizer, rate)
        for call in sessions:
            for leg_stream in call.streams.values():
                leg_stream.open_time(now)
        self._tell("streaming-started", conversation)
        self.log.info("transcription started for guid {guid} (leg {leg}, {language})",
                      guid=conversation.guid, leg=conversation.leg.number,
                      language=params.language)
        self._log_roles(conversation)
        return dict(self._answer(conversation, sessions=sessions), settings=params.in_force(),
                    legId=conversation.leg.id)

    def _log_roles(self, conversation):
        for call in conversation.active():
            for key, ls in call.streams.items():
                self.log.info(
                    "guid {guid} stream {label} (m-line {audio_index}) of call {call_id}: "
                    "{role}{extra} as stream {stream_id}{who}", guid=conversation.guid,
                    call_id=call.call_id, label=key[0], audio_index=key[1], role=ls.role,
                    extra="" if ls.primary else " (further stream)", stream_id=ls.id,
                    who=f" from {ls.participant.get('aor') or ls.participant.get('name')}"
                    if ls.participant else "")

    def _answer(self, conversation, summary=False, sessions=None, pending=False):
        """The API's answer: each role's main stream (as the vendor API has
        it), then every stream of every session (of *sessions*: those the
        request began with, though one may have ended meanwhile)."""
        out, streams = {}, []
        for call in conversation.sessions if sessions is None else sessions:
            for ls in call.streams.values():
                item = ls.describe()
                item["status"] = dict(OK_STATUS)
                if summary:
                    item["summary"] = dict(ls.summary(), pending=pending)
                streams.append(item)
                if ls.role not in out and ls.primary:
                    main = {"streamId": ls.id, "status": dict(OK_STATUS)}
                    if summary:
                        main["summary"] = dict(ls.summary(), pending=pending)
                    out[ls.role] = main
        for item in streams:   # a role with no seated stream: its first stream
            if item["role"] not in out:
                out[item["role"]] = {k: item[k] for k in ("streamId", "status", "summary")
                                     if k in item}
        result = {role: out[role] for role in ROLES if role in out}
        result["streams"] = streams
        return result

    async def _stop(self, conversation):
        now = self.clock.seconds()
        sessions = list(conversation.sessions)
        for call in sessions:
            for leg_stream in call.streams.values():
                leg_stream.close_time(now)
        # Everything the gate let through is recognised and stored, however
        # far behind the recognisers are; the answer waits for it up to
        # stop_wait, and says so when some is still on its way.
        closing = []
        for call in sessions:
            windows, call.windows = list(call.windows.values()), {}
            closing.append(self.calls.closing(
                call, defer.ensureDeferred(self._close_and_save(call, windows))))
        finished = defer.Deferred()
        closed = defer.DeferredList(closing, consumeErrors=True)
        closed.addBoth(lambda _: finished.called or finished.callback(True))
        # Live clients: after the last final of these windows, whenever that
        # is (the answer may come first); not if a start came meanwhile.
        closed.addBoth(lambda _: conversation.streaming
                       or self._tell("streaming-stopped", conversation))
        timer = self.clock.callLater(self.stop_wait,
                                     lambda: finished.called or finished.callback(False))
        complete = await finished
        if timer.active():
            timer.cancel()
        if complete:
            self.log.info("transcription stopped for guid {guid}", guid=conversation.guid)
        else:
            self.log.warn("transcription stopped for guid {guid}; speech received before the "
                          "stop is still being recognised (the recognisers are behind)",
                          guid=conversation.guid)
        return self._answer(conversation, summary=True, sessions=sessions,
                            pending=not complete)

    async def _close_and_save(self, call, windows):
        await self.windows.close(windows, call)
        await self._save_stats(call, call.streams.values())

    async def _leg_streams(self, conversation, params, plan):
        """The current leg (a new one for a new customerId or agentId) and
        the streams of *plan* ([(call, stream key, role)]), stored with this
        start's settings."""
        if (conversation.leg is None or conversation.params is None
                or not conversation.params.same_leg(params.request)):
            if conversation.leg is not None and self.recordings is not None:
                self.calls.track(self.recordings.close_leg(conversation.guid,
                                                           conversation.leg.id))
            conversation.leg = await self.storage.start_leg(
                conversation.guid, params.customer_id, params.agent_id, params.as_dict())
            for call in conversation.sessions:
                call.streams = {}
        writes = []
        for call, key, role in plan:
            leg_stream = call.streams.get(key)
            if leg_stream is None or leg_stream.role != role:
                leg_stream = self._leg_stream(call, key, role, conversation.leg, params)
                call.streams[key] = leg_stream   # seen by the next ones' main-stream check
            leg_stream.external_id = params.customer_id if role == CUSTOMER else params.agent_id
            writes.append(self._store_stream(call, leg_stream, params))
        stored = await defer.gatherResults(writes, consumeErrors=True).addErrback(_first_error)
        for call, leg_stream in stored:
            call.streams[leg_stream.key] = leg_stream

    def _leg_stream(self, call, key, role, leg, params):
        stream = next((s for s in call.session.streams
                       if stream_key(s.label, s.audio_index) == key), None)
        seated = stream is not None and (stream.seat in (0, 1) or call.session.mixed)
        # One main stream per role in a conversation: another session's
        # seated stream in the same role (Cisco's built-in bridge sends one
        # session per party) stays a further stream, out of the recording.
        taken = any(ls.primary and ls.role == role for other in call.conversation.sessions
                    if other is not call for ls in other.streams.values())
        external = params.customer_id if role == CUSTOMER else params.agent_id
        return LegStream(str(uuid.uuid4()), role, leg.id, external, key[0], self._now_ms(),
                         call_id=call.call_id, key=key, primary=seated and not taken,
                         participant=_participant_of(call.session, key[0]))

    def _store_stream(self, call, leg_stream, params):
        record = Stream(leg_stream.id, call.guid, leg_stream.leg_id, leg_stream.role,
                        leg_stream.external_id, leg_stream.created_ms, label=leg_stream.label,
                        params=leg_stream.stored_params(params))
        return self.storage.upsert_stream(record).addCallback(lambda _: (call, leg_stream))

    def _late_window(self, call, key):
        """A stream seen while the conversation is streaming that has no
        window: one a re-INVITE added, or one of a session that came after
        the start. It is transcribed too, in the role the rule gives it."""
        conversation = call.conversation
        params = conversation.params
        if params is None or conversation.leg is None or call.phase not in ("offered",
                                                                            "active"):
            return None
        role = self.windows.roles(call.session, params.media_line_order).get(key)
        if role is None:
            return None
        rate = self.windows.feed_rate(call.session, key)
        try:
            recognizer = self.windows.new_recognizer(params.language, rate)
        except Exception as e:
            self.log.error("cannot transcribe stream {label} of guid {guid}: {error}",
                           guid=call.guid, call_id=call.call_id, label=key[0], error=str(e))
            return None
        leg_stream = call.streams.get(key)
        if leg_stream is None or leg_stream.role != role:
            leg_stream = self._leg_stream(call, key, role, conversation.leg, params)
            call.streams[key] = leg_stream
            # Stored before any of its utterances (they queue behind it).
            leg_stream.writes.run(self._store_late, call, leg_stream, params)
        leg_stream.open_time(self.clock.seconds())
        window = self.windows.open(call, key, leg_stream, recognizer, rate)
        # Live clients learn of the stream before its first partial.
        self._tell("streaming-started", conversation, call=call)
        self.log.info(
            "guid {guid} stream {label} (m-line {audio_index}) of call {call_id}: {role} as "
            "stream {stream_id} (joined while transcribing)", guid=call.guid,
            call_id=call.call_id, label=key[0], audio_index=key[1], role=role,
            stream_id=leg_stream.id)
        return window

    def _store_late(self, call, leg_stream, params):
        return self._store_stream(call, leg_stream, params).addErrback(
            lambda f: self.log.error("cannot store stream {stream_id} of guid {guid}: {error}",
                                     guid=call.guid, stream_id=leg_stream.id,
                                     error=f.getErrorMessage()))

    async def _save_stats(self, call, leg_streams):
        for leg_stream in list(leg_streams):
            try:
                await self.storage.update_stream_stats(leg_stream.id, leg_stream.stats())
            except StorageError as e:
                self.log.warn("cannot store the statistics of stream {stream_id}: {error}",
                              guid=call.guid, stream_id=leg_stream.id, error=str(e))

    # -- ICallListener -------------------------------------------------------------------

    def call_offered(self, session):
        call = ActiveCall(session, session.guid.value, session.call_id)
        self.calls.add(call)
        others = [c for c in call.conversation.sessions if c is not call]
        if others:
            self.log.info("guid {guid} has another SIPREC session ({count} now): kept apart, "
                          "one conversation", guid=call.guid, call_id=call.call_id,
                          count=len(others) + 1)
        d = self.storage.upsert_call(self._call_record(call))

        def stored(_):
            if call.phase == "offered":
                call.phase = "active"
                # Live output is about the conversation: it starts with its
                # first session (a further session of the guid joins it).
                if not any(c.phase in ("active", "ending")
                           for c in call.conversation.sessions if c is not call):
                    self._tell("call-started", call.conversation, call=call)
                if self.auto_start is not None:
                    self.calls.track(defer.ensureDeferred(self._auto_start(call)))
            return None

        def failed(failure):
            self._forget(call)
            # An outage is logged by storage, and the refusal by the SIP
            # layer; an error of any other kind is worth its own line.
            level = self.log.info if failure.check(StorageError) else self.log.error
            level("cannot store call {guid}; refusing it: {error}", guid=call.guid,
                  call_id=call.call_id, error=failure.getErrorMessage())
            return failure

        d.addCallbacks(stored, failed)
        call.stored = _Outcome(d)
        return call.stored.wait()

    async def _auto_start(self, call):
        """Start transcribing *call*'s conversation as ``auto_start`` says
        (after the call is stored; the 200 OK never waits for it, and a
        failure only means the call is recorded without transcription). A
        further session of a conversation already transcribed joins it."""
        conversation = call.conversation
        if conversation.streaming or conversation.params is not None:
            return
        try:
            prepared = await self.auto_start.request_for(call.session, self.windows.roles)
        except Exception as e:
            self.log.error("auto_start: cannot prepare the start of guid {guid}: {error}",
                           guid=call.guid, error=str(e))
            return
        if (prepared is None or call.phase != "active" or conversation.streaming
                or conversation.busy):
            return
        try:
            await self.start(prepared.request, prepared.app_id, prepared.webhook_target)
        except Exception as e:
            self.log.warn("auto_start: transcription of guid {guid} did not start: {error}",
                          guid=call.guid, error=str(e))
            return
        self.log.info("auto_start: transcribing guid {guid} for app {app_id}", guid=call.guid,
                      app_id=prepared.app_id)

    def call_updated(self, session):
        call = self.calls.by_call_id.get(session.call_id)
        if call is None:
            return
        call.session = session
        call.stored.wait().addCallback(
            lambda _: self.storage.upsert_call(self._call_record(call))
        ).addErrback(lambda f: self.log.warn(
            "cannot store the update of call {guid}: {error}", guid=call.guid,
            error=f.getErrorMessage()))
        if call.streaming:
            wanted = self.windows.roles(session, call.params.media_line_order)
            gone = [w for k, w in call.windows.items() if k not in wanted]
            for window in gone:
                del call.windows[window.key]
            if gone:
                self.calls.closing(call, defer.ensureDeferred(self.windows.close(gone, call)))

    def call_ended(self, session, reason):
        call = self.calls.by_call_id.get(session.call_id)
        if call is None or call.phase in ("ending", "ended"):
            return
        if call.stored.failed:
            self._forget(call)
            return
        self.end(call, reason)

    def end(self, call, reason):
        """End *call* (its BYE, or the node stopping): close its windows,
        store what is in flight, mark it ended in storage once it is the
        conversation's last session."""
        call.phase = "ending"
        conversation = call.conversation
        if conversation is not None and not conversation.active():
            conversation.streaming = False
        self.calls.track(defer.ensureDeferred(self._end(call, reason)))

    async def _end(self, call, reason):
        try:
            try:
                await self._stored(call)
            except Exception:
                return
            now = self.clock.seconds()
            for leg_stream in call.streams.values():
                leg_stream.close_time(now)
            windows, call.windows = list(call.windows.values()), {}
            await self.windows.close(windows, call)
            # Windows closed before (a stop while the recognisers were
            # behind) finish too: everything said before is stored before
            # the call is marked ended.
            await defer.DeferredList(list(call.closing), consumeErrors=True)
            self.writer.close_call(call)
            # Writes of windows closed earlier (stop, stream end) finish too.
            await defer.gatherResults([ls.writes.idle() for ls in call.streams.values()],
                                      consumeErrors=True)
            await self._save_stats(call, call.streams.values())
            others = [c for c in self.calls if c.guid == call.guid and c is not call
                      and c.phase != "ended"]
            if not others:
                if self.recordings is not None:
                    await self.recordings.close_call(call.guid)
                try:
                    await self.storage.end_call(call.guid, reason)
                except StorageError as e:
                    self.log.error("cannot mark call {guid} ended: {error}", guid=call.guid,
                                   error=str(e))
                self._tell("call-ended", call.conversation, reason, call=call)
            else:
                self.log.info("session {call_id} of guid {guid} ended ({reason}); {count} "
                              "other session(s) go on", guid=call.guid, call_id=call.call_id,
                              reason=reason, count=len(others))
        finally:
            call.phase = "ended"
            self._forget(call)

    def _tell(self, kind, conversation, reason=None, call=None):
        """Tell the ``on_call_event`` listeners of *conversation* (*call*:
        the session the event came from, when one did)."""
        if self.on_call_event:
            self.on_call_event(call_event(kind, conversation, self._now_ms(), reason,
                                          call_id=call.call_id if call is not None else None),
                               guid=conversation.guid)

    def _forget(self, call):
        self.writer.close_call(call)
        self.calls.forget(call)

    def _call_record(self, call):
        """The stored Call of *call*'s conversation: what every session of
        it said (each session's SIP details and participants, every
        identifier), the first session's in the wire-compatible fields."""
        session = call.session
        conversation = call.conversation
        conversation.records[call.call_id] = (_sip_of(session), _participants_of(session))
        records = list(conversation.records.items())
        first_sip = records[0][1][0]
        sip = {k: v for k, v in first_sip.items()}
        sip["sessions"] = [dict(r[0]) for _, r in records]
        participants = [p for _, r in records for p in r[1]]
        identifiers = []
        seen = set()
        for c in conversation.sessions:
            for i in c.session.identifiers:
                if (i.source, i.value) not in seen:
                    seen.add((i.source, i.value))
                    identifiers.append({"source": i.source, "value": i.value, "raw": i.raw})
        first = conversation.sessions[0].session
        return Call(session.guid.value, first.call_id, self.node,
                    int(round(first.started_at * 1000)), identifiers=identifiers, sip=sip,
                    participants=participants,
                    mixed=any(bool(c.session.mixed) for c in conversation.sessions))

    async def _stored(self, call):
        try:
            await call.stored.wait()
        except Exception:
            raise NoSuchCall(f"no active SIPREC call with guid {call.guid}") from None

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))


def _participant_of(session, label):
    metadata = session.metadata
    if metadata is None or label is None:
        return None
    p = metadata.participant_for_label(label)
    if p is None:
        return None
    return {"id": p.id, "aor": p.aors[0] if p.aors else None, "name": p.name}


def _sip_of(session):
    host, port = (tuple(session.remote) + (None, None))[:2]
    metadata = session.metadata
    return {"callId": session.call_id, "transport": session.transport,
            "remote": f"{host}:{port}", "sessionId": session.session_id,
            "delayedOffer": bool(getattr(session, "delayed_offer", False)),
            "metadataDialect": metadata.dialect if metadata is not None else None,
            "mixed": bool(session.mixed),
            "streams": [{"label": s.label, "audioIndex": s.audio_index,
                         "codec": s.codec.name if s.codec is not None else None,
                         "seat": getattr(s, "seat", None),
                         "participant": _participant_of(session, s.label)}
                        for s in session.streams]}


def _participants_of(session):
    senders = {}
    metadata = session.metadata
    if metadata is not None:
        for label, participant in metadata.label_to_participant().items():
            senders.setdefault(participant.id, []).append(label)
    return [
        {"id": p.id, "aors": list(p.aors), "name": p.name, "sends": list(p.sends),
         "receives": list(p.receives), "labels": senders.get(p.id, []),
         "callId": session.call_id, "left": bool(getattr(p, "disassociated", False))}
        for p in session.participants()
    ]


def _close_all(recognizers):
    for recognizer in recognizers.values():
        try:
            recognizer.close()
        except Exception:
            pass


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
