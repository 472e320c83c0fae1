"""Calls and legs: which calls are up, start and stop on them, and what
of them is stored.

:class:`CallTable` holds this node's calls by guid and Call-ID (and the
work in flight on them, for a clean drain). :class:`CallControl` is
the ``ICallListener`` that keeps it (a call is stored when it is offered,
and the 200 OK waits for that; updated on re-INVITEs; finalised and ended
on BYE) and carries out start-streaming and stop-streaming as docs/api.rst
defines them, with its error codes as :mod:`siprecd.transcribe.errors`
exceptions.

Legs: a start with another agentId than the last one starts a new leg;
within a leg each participant's stream keeps its streamId (a uuid4)
across windows (:mod:`siprecd.transcribe.windows`).
"""

import uuid

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from siprecd.asr.common import AsrNotReady
from siprecd.interfaces import ICallListener, StorageError
from siprecd.storage.records import Call, Stream
from siprecd.transcribe.errors import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, Conflict, NoSuchCall,
    NotAllowed, RequestInProgress,
)
from siprecd.transcribe.request import LegSettings, language_tag
from siprecd.transcribe.segment import SAMPLE_RATE
from siprecd.transcribe.windows import CUSTOMER, LegStream

__all__ = ["ActiveCall", "CallTable", "CallControl", "OK_STATUS"]

OK_STATUS = {"code": 1000, "description": "OK"}


@attrs.define(eq=False)
class ActiveCall:
    session: object
    guid: str
    call_id: str
    phase: str = "offered"       # offered -> active -> ending -> ended
    stored: object = None        # _Outcome of the first upsert
    busy: bool = False
    streaming: bool = False
    leg: object = None           # storage Leg of the current leg
    params: LegSettings | None = None
    roles: dict = attrs.field(factory=dict)      # role -> LegStream (current leg)
    windows: dict = attrs.field(factory=dict)    # stream key -> Window
    origins: dict = attrs.field(factory=dict)    # stream key -> UNIX ms of position 0
    redaction: object = None     # ReleaseTimer over the call's CallRedactor


class CallTable:
    """This node's calls, and the work in flight on them."""

    def __init__(self):
        self.by_guid = {}
        self.by_call_id = {}
        self.in_flight = set()

    def __iter__(self):
        return iter(list(self.by_call_id.values()))

    def add(self, call):
        self.by_call_id[call.call_id] = call
        self.by_guid[call.guid] = call

    def forget(self, call):
        if self.by_call_id.get(call.call_id) is call:
            del self.by_call_id[call.call_id]
        if self.by_guid.get(call.guid) is call:
            del self.by_guid[call.guid]
            # An older session with the same guid is the active one again.
            for other in self.by_call_id.values():
                if other.guid == call.guid:
                    self.by_guid[call.guid] = other

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
    ended with the call); *accepting()* is false once the node stops."""

    log = Logger()

    def __init__(self, calls, storage, backend, clock, windows, writer, *, node="siprecd",
                 recordings=None, accepting=lambda: True, admission=None):
        self.calls = calls
        self.admission = admission
        self.storage = storage
        self.backend = backend
        self.clock = clock
        self.windows = windows
        self.writer = writer
        self.node = node
        self.recordings = recordings
        self.accepting = accepting

    # -- start and stop -------------------------------------------------------------

    def start(self, request, app_id=None, webhook_target=None):
        """start-streaming for a checked StartRequest: a Deferred firing
        with ``{role: {"streamId", "status"}}``, or failing with a
        TranscriptionError. *app_id* (the API app asking) and
        *webhook_target* (its target) are kept with the leg's settings."""
        try:
            languages = {language_tag(t) for t in self.backend.languages()}
            if request.language not in languages:
                have = ", ".join(sorted(languages)) or "none"
                raise NotAllowed(f"language {request.language!r} is not available here "
                                 f"(available: {have})")
            params = LegSettings(request, app_id, webhook_target or None)
            call = self._request(request.guid)
            if call.streaming:
                raise AlreadyInState(f"transcription of {request.guid} is already started")
            last = call.params
            if (last is not None and last.agent_id == params.agent_id
                    and last.media_line_order != params.media_line_order):
                raise Conflict(
                    f"mediaLineOrder is {last.media_line_order} for this leg; it can change "
                    "only with a new agentId (a new leg)")
            if not self.accepting():
                raise AsrUnavailable("this node is shutting down")
        except Exception:
            return defer.fail()
        return self.calls.track(self._serialised(call, self._admitted(call, params)))

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
        return self.calls.track(self._serialised(call, self._stop(call)))

    def current_app(self, guid):
        """The app id of the last accepted start of an active call, or None."""
        call = self.calls.by_guid.get(guid)
        return None if call is None or call.params is None else call.params.app_id

    def is_active(self, guid):
        """True while *guid* is an active call on this node."""
        call = self.calls.by_guid.get(guid)
        return call is not None and call.phase != "ended"

    def is_streaming(self, guid):
        call = self.calls.by_guid.get(guid)
        return bool(call is not None and call.streaming)

    def _request(self, guid):
        if not isinstance(guid, str) or not guid:
            raise BadParameter("guid is required")
        call = self.calls.by_guid.get(guid)
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

    async def _admitted(self, call, params):
        """_start if the recognisers can keep the streams in real time
        (siprecd.transcribe.admission); refused with 500-201 if not."""
        if self.admission is None:
            return await self._start(call, params)
        streams = len(self.windows.roles(call.session, params.media_line_order))
        with self.admission.reserve(params.language, streams, call.guid):
            return await self._start(call, params)

    async def _start(self, call, params):
        await self._stored(call)
        if not self.backend.ready:
            raise AsrUnavailable("speech recognition is not ready")
        roles = self.windows.roles(call.session, params.media_line_order)
        recognizers = {}
        try:
            for key in roles:
                recognizers[key] = self.backend.new_recognizer(params.language, SAMPLE_RATE)
        except ValueError as e:
            _close_all(recognizers)
            raise NotAllowed(str(e)) from None
        except AsrNotReady as e:
            # A configured language whose model is missing or still loading.
            _close_all(recognizers)
            raise AsrUnavailable(str(e)) from None
        except Exception:
            _close_all(recognizers)
            self.log.failure("making recognisers for guid {guid}", guid=call.guid)
            raise AsrUnavailable("speech recognition is unavailable; try again") from None
        try:
            await self._leg_streams(call, params, roles)
        except Exception as e:
            _close_all(recognizers)
            if isinstance(e, StorageError):
                self.log.error("cannot store the leg of guid {guid}: {error}", guid=call.guid,
                               error=str(e))
                raise AsrUnavailable("cannot store the transcription now; try again") from None
            raise
        if call.phase != "active":
            _close_all(recognizers)
            raise CallEnding(f"the call {call.guid} is ending (BYE in progress)")
        now = self.clock.seconds()
        call.params = params
        call.streaming = True
        for key, role in roles.items():
            self.windows.open(call, key, role, recognizers[key])
        for leg_stream in call.roles.values():
            leg_stream.open_time(now)
        self.log.info("transcription started for guid {guid} (leg {leg}, {language})",
                      guid=call.guid, call_id=call.call_id, leg=call.leg.number,
                      language=params.language)
        return {role: {"streamId": ls.id, "status": dict(OK_STATUS)}
                for role, ls in sorted(call.roles.items()) if role in roles.values()}

    async def _stop(self, call):
        now = self.clock.seconds()
        for leg_stream in call.roles.values():
            leg_stream.close_time(now)
        windows, call.windows = list(call.windows.values()), {}
        await self.windows.close(windows, call)
        await self._save_stats(call, call.roles.values())
        self.log.info("transcription stopped for guid {guid}", guid=call.guid,
                      call_id=call.call_id)
        return {role: {"streamId": ls.id, "status": dict(OK_STATUS), "summary": ls.summary()}
                for role, ls in sorted(call.roles.items())}

    async def _leg_streams(self, call, params, roles):
        """The current leg (a new one for a new agentId) and the streams of
        *roles* ({stream key: role}), stored with this start's settings."""
        if call.leg is None or call.params is None or call.params.agent_id != params.agent_id:
            if call.leg is not None and self.recordings is not None:
                self.calls.track(self.recordings.close_leg(call.guid, call.leg.id))
            call.leg = await self.storage.start_leg(
                call.guid, params.customer_id, params.agent_id, params.as_dict())
            call.roles = {}
        labels = {role: key[0] for key, role in roles.items()}
        writes = []
        for role in sorted(set(roles.values())):
            leg_stream = call.roles.get(role)
            external = params.customer_id if role == CUSTOMER else params.agent_id
            if leg_stream is None:
                leg_stream = LegStream(str(uuid.uuid4()), role, call.leg.id, external,
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
        d = self.storage.upsert_call(self._call_record(session))

        def stored(_):
            if call.phase == "offered":
                call.phase = "active"
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

    def call_updated(self, session):
        call = self.calls.by_call_id.get(session.call_id)
        if call is None:
            return
        call.session = session
        call.stored.wait().addCallback(
            lambda _: self.storage.upsert_call(self._call_record(session))
        ).addErrback(lambda f: self.log.warn(
            "cannot store the update of call {guid}: {error}", guid=call.guid,
            error=f.getErrorMessage()))
        if call.streaming:
            wanted = self.windows.roles(session, call.params.media_line_order)
            gone = [w for k, w in call.windows.items() if k not in wanted]
            for window in gone:
                del call.windows[window.key]
            if gone:
                self.calls.track(defer.ensureDeferred(self.windows.close(gone, call)))

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
        store what is in flight, mark it ended in storage."""
        call.phase = "ending"
        call.streaming = False
        self.calls.track(defer.ensureDeferred(self._end(call, reason)))

    async def _end(self, call, reason):
        try:
            try:
                await self._stored(call)
            except Exception:
                return
            now = self.clock.seconds()
            for leg_stream in call.roles.values():
                leg_stream.close_time(now)
            windows, call.windows = list(call.windows.values()), {}
            await self.windows.close(windows, call)
            self.writer.close_call(call)
            if self.recordings is not None:
                await self.recordings.close_call(call.guid)
            # Writes of windows closed earlier (stop, stream end) finish too.
            await defer.gatherResults([ls.writes.idle() for ls in call.roles.values()],
                                      consumeErrors=True)
            await self._save_stats(call, call.roles.values())
            others = [c for c in self.calls if c.guid == call.guid and c is not call]
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
        self.writer.close_call(call)
        self.calls.forget(call)

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
                            "codec": s.codec.name if s.codec is not None else None}
                           for s in session.streams]}
        return Call(session.guid.value, session.call_id, self.node,
                    int(round(session.started_at * 1000)), identifiers=identifiers, sip=sip,
                    participants=participants, mixed=bool(session.mixed))

    async def _stored(self, call):
        try:
            await call.stored.wait()
        except Exception:
            raise NoSuchCall(f"no active SIPREC call with guid {call.guid}") from None

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))


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
