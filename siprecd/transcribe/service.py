"""The transcription stage of a node: its parts put together as one service.

:class:`TranscriptionService` builds and holds the three parts, each with
one job:

- :class:`~siprecd.transcribe.calls.CallControl` (calls and legs): the
  ``ICallListener`` that keeps the node's calls and stores them, and the
  back end of start-streaming and stop-streaming;
- :class:`~siprecd.transcribe.windows.Windows` (audio windows): the media
  plane's ``IStreamConsumer``, the gate between each stream's PCM and its
  recogniser's :class:`~siprecd.transcribe.pipeline.StreamPipeline`;
- :class:`~siprecd.transcribe.utterances.UtteranceWriter` (utterances):
  formats, redacts, stores each finished utterance, then tells
  ``on_utterance`` and ``on_stored``;
- :class:`~siprecd.transcribe.partials.PartialWriter` (partials): formats
  and redacts each interim result for live output and tells
  ``on_partial``; never stores.

It is what the rest of the node sees: the call listener and stream
consumer the SIP and media layers report to, the ``start``/``stop`` the
API's call controller calls, and a drainable stage of the daemon.
"""

from twisted.application import service
from zope.interface import implementer

from siprecd.interfaces import ICallListener, IDrainable, IStreamConsumer
from siprecd.transcribe.admission import BURST_FACTOR, Admission
from siprecd.transcribe.autostart import AutoStart
from siprecd.transcribe.calls import CallControl, CallTable
from siprecd.transcribe.partials import PartialWriter
from siprecd.transcribe.utterances import UtteranceWriter
from siprecd.transcribe.windows import AGENT, CUSTOMER, ROLES, Windows

__all__ = ["TranscriptionService"]


@implementer(IStreamConsumer, ICallListener, IDrainable)
class TranscriptionService(service.Service):
    """See the module docstring.

    *storage* is an IStorage, *backend* an IASRBackend (its ``ready`` says
    whether recognisers can be made), *clock* an IReactorTime. *redact* is
    ``redact(text, tokens) -> (text, tokens)`` (tokens: a list of
    ``siprecd.asr.results.Token``), used instead of the per-call
    *redaction* policy when given. Listeners, each a sequence of callables:
    *on_utterance(message)* gets every stored Message (with its sequence,
    guid, leg, role and externalId filled in), *on_stored(message, now
    ms)* the same for metrics, *on_asr_call(audio s, busy s, ok)* every
    recogniser call, *on_partial(LivePartial)* every interim result (at
    most one per *partial_interval* seconds of audio per stream, while
    *partials_wanted(guid, app_id, webhook_target)* says someone wants
    them), *on_call_event(CallEvent)* what happens to calls. *auto_start*
    (an AutoStart, or None) starts transcription of each session when it
    is answered.
    """

    name = "transcription"

    def __init__(self, storage, backend, clock, *, node="siprecd", endpoint_silence=0.25,
                 max_utterance=30.0, format_numbers=True, mixed_role=CUSTOMER,
                 extra_role=AGENT, max_rate=16000, redact=None,
                 redaction=None, recordings=None, on_utterance=(), on_stored=(),
                 on_asr_call=(), skip_silence=True, vad_threshold=-45.0, chunk=0.2,
                 skip_after=1.0, preroll=0.5, warn_backlog=10.0, max_backlog=120.0,
                 on_partial=(), on_call_event=(), partial_interval=0.2, partials_wanted=None,
                 auto_start=None, stop_wait=5.0, max_lag=1.0, admission=True, processors=None,
                 target_load=0.85, burst_factor=BURST_FACTOR):
        if mixed_role not in ROLES:
            raise ValueError(f"mixed_role must be one of {', '.join(ROLES)}")
        if extra_role not in ROLES:
            raise ValueError(f"extra_role must be one of {', '.join(ROLES)}")
        if redact is None and redaction is None:
            from siprecd.redact import Policy

            redaction = Policy()
        self.storage = storage
        self.backend = backend
        self.clock = clock
        self.accepting = True
        self.calls = CallTable()
        self.utterances = UtteranceWriter(
            storage, clock, format_numbers=format_numbers, redaction=redaction, redact=redact,
            recordings=recordings, on_utterance=on_utterance, on_stored=on_stored,
            running=lambda: self.running)
        self.partials = PartialWriter(
            self.utterances, clock, format_numbers=format_numbers, interval=partial_interval,
            wanted=partials_wanted, on_partial=on_partial)
        self.windows = Windows(
            self.calls, backend, self.utterances, clock,
            segmenter_options=dict(
                endpoint=endpoint_silence, max_utterance=max_utterance,
                threshold=vad_threshold, chunk=chunk, skip_after=skip_after, preroll=preroll,
                skip_silence=skip_silence),
            warn_backlog=warn_backlog, max_backlog=max_backlog, max_lag=max_lag,
            mixed_role=mixed_role, extra_role=extra_role, max_rate=max_rate,
            on_asr_call=on_asr_call, partials=self.partials)
        self.admission = Admission(backend, self.windows, processors=processors,
                                   target_load=target_load, max_lag=max_lag, enabled=admission,
                                   clock=clock, burst_factor=burst_factor)
        self.control = CallControl(
            self.calls, storage, backend, clock, self.windows, self.utterances, node=node,
            recordings=recordings, accepting=lambda: self.accepting, auto_start=auto_start,
            stop_wait=stop_wait, admission=self.admission,
            on_call_event=on_call_event)

    @classmethod
    def from_config(cls, config, storage, backend, clock, **options):
        """With the ``asr``, ``media`` and ``redaction`` settings of *config*."""
        if "redact" not in options:
            from siprecd.redact import Policy

            options.setdefault("redaction", Policy.from_config(config.redaction))
        options.setdefault("partial_interval", config.live.partial_interval)
        capacity = config.asr.capacity
        options.setdefault("auto_start", AutoStart.from_config(config, storage))
        return cls(storage, backend, clock, node=config.node.name,
                   endpoint_silence=config.asr.endpoint_silence,
                   max_utterance=config.asr.max_utterance,
                   format_numbers=config.asr.format_numbers, stop_wait=config.asr.stop_wait,
                   mixed_role=config.media.mixed_role,
                   extra_role=config.media.extra_stream_role,
                   max_rate=config.asr.sample_rate, max_lag=capacity.max_lag,
                   admission=capacity.enabled, processors=capacity.cpus,
                   target_load=capacity.target_load,
                   burst_factor=capacity.burst_factor, **options)

    # -- listeners (for tests and tools that observe a running node) ------------------

    @property
    def on_utterance(self):
        return self.utterances.on_utterance

    @property
    def on_stored(self):
        return self.utterances.on_stored

    @property
    def on_partial(self):
        return self.partials.on_partial

    @property
    def on_call_event(self):
        return self.control.on_call_event

    # -- the control API -----------------------------------------------------------------

    def start(self, request, app_id=None, webhook_target=None):
        """start-streaming; see :meth:`CallControl.start`."""
        return self.control.start(request, app_id, webhook_target)

    def stop(self, guid):
        """stop-streaming; see :meth:`CallControl.stop`."""
        return self.control.stop(guid)

    def current_app(self, guid):
        return self.control.current_app(guid)

    def is_active(self, guid):
        return self.control.is_active(guid)

    def is_streaming(self, guid):
        return self.control.is_streaming(guid)

    def live(self, guid):
        """This node's sessions of *guid* now; see :meth:`CallControl.live`."""
        return self.control.live(guid)

    def backlog(self):
        """(windows open, seconds of audio waiting for recognisers), for metrics."""
        return self.windows.backlog()

    def lags(self):
        """How far behind real time each open window's recognition is (s)."""
        now = self.clock.seconds()
        return [w.pipeline.lag(now) for w in self.windows.open_windows()]

    def capacity(self):
        """For metrics: ``lag`` (the largest, s), ``behind`` (streams behind
        by more than max_lag), ``refused`` (starts refused, by reason) and
        per language ``{"cost", "capacity", "headroom"}`` (None: no limit
        or nothing known yet; see siprecd.transcribe.admission)."""
        lags = self.lags()
        admission = self.admission
        languages = {}
        for language in self.backend.languages():
            languages[language] = {"cost": admission.cost(language),
                                   "capacity": admission.capacity(language),
                                   "headroom": admission.headroom(language)}
        return {"lag": max(lags, default=0.0),
                "behind": sum(lag > admission.max_lag for lag in lags),
                "refused": dict(admission.refused), "languages": languages}

    # -- IStreamConsumer ---------------------------------------------------------------

    def pcm(self, stream, position, samples, rate=8000):
        self.windows.pcm(stream, position, samples, rate)

    def event(self, stream, kind, position, detail):
        self.windows.event(stream, kind, position, detail)

    # -- ICallListener -------------------------------------------------------------------

    def call_offered(self, session):
        return self.control.call_offered(session)

    def call_updated(self, session):
        self.control.call_updated(session)

    def call_ended(self, session, reason):
        self.control.call_ended(session, reason)

    # -- life cycle -----------------------------------------------------------------------

    def stop_accepting(self):
        self.accepting = False

    def drain(self):
        """Fires when every stop, call end and stored utterance in flight is done."""
        return self.calls.drain()

    def stopService(self):
        service.Service.stopService(self)
        self.stop_accepting()
        for call in self.calls:
            if call.phase in ("offered", "active"):
                self.control.end(call, "shutdown")
        return self.drain()
