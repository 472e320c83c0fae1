"""Audio windows: the gate between a stream's PCM and a recogniser.

Audio reaches a recogniser only between a start and the next stop (a
*window*); each window of each stream has its own recogniser and
:class:`~siprecd.transcribe.pipeline.StreamPipeline`, so nothing from
before a start or after a stop is ever fed, and closing a window ends its
open utterance. :class:`Windows` is the media plane's ``IStreamConsumer``
for every call: it keeps where each stream's position 0 was on the wall
clock, passes PCM on while the call's gate is open, opens a window for a
stream that appears after the start, and closes one whose stream ends.

:class:`LegStream` is one participant's stream in one leg (the API's
streamId) with its counters; its windows add to them when they close.

Roles: ``mediaLineOrder`` decides. The first audio m-line (``audio_index``
0) is the customer unless ``AGENT_FIRST``; a call recorded as one mixed
stream has one role (``media.mixed_role``).
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import IStreamConsumer
from siprecd.transcribe.pipeline import StreamPipeline
from siprecd.transcribe.segment import SAMPLE_RATE, Segmenter
from siprecd.transcribe.utterances import SerialQueue

__all__ = ["CUSTOMER", "AGENT", "ROLES", "LegStream", "Window", "Windows", "stream_key",
           "roles_of"]

CUSTOMER, AGENT = "customer", "agent"
ROLES = (CUSTOMER, AGENT)


def stream_key(label, audio_index):
    """How a call's stream is known across re-INVITEs."""
    return (label, audio_index)


def roles_of(session, media_line_order, mixed_role):
    """{stream key: role} for the session's streams."""
    streams = list(session.streams)
    if len(streams) == 1:
        s = streams[0]
        return {stream_key(s.label, s.audio_index): mixed_role}
    order = ROLES if media_line_order == "CUSTOMER_FIRST" else ROLES[::-1]
    out = {}
    for s in streams:
        if s.audio_index < len(order):
            out[stream_key(s.label, s.audio_index)] = order[s.audio_index]
    return out


@attrs.define(eq=False)
class LegStream:
    """One participant's stream in one leg: the API's streamId."""

    id: str
    role: str
    leg_id: str
    external_id: str
    label: str | None
    created_ms: int
    writes: SerialQueue = attrs.field(factory=SerialQueue)
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

    def open_time(self, now):
        self.opened_at = now

    def close_time(self, now):
        if self.opened_at is not None:
            self.streaming_seconds += max(0.0, now - self.opened_at)
            self.opened_at = None


@attrs.define(eq=False)
class Window:
    """One stream between a start and a stop."""

    pipeline: StreamPipeline
    leg_stream: LegStream
    params: object               # the LegSettings in force
    key: tuple


@implementer(IStreamConsumer)
class Windows:
    """See the module docstring.

    *calls* is the :class:`~siprecd.transcribe.calls.CallTable` the windows
    belong to; *backend* the IASRBackend recognisers come from; *writer*
    the :class:`~siprecd.transcribe.utterances.UtteranceWriter` utterances
    go to; *on_asr_call* listeners of every recogniser call (metrics).
    """

    log = Logger()

    def __init__(self, calls, backend, writer, clock, *, segmenter_options, warn_backlog,
                 max_backlog, max_lag=1.0, mixed_role=CUSTOMER, on_asr_call=()):
        self.calls = calls
        self.backend = backend
        self.writer = writer
        self.clock = clock
        self.segmenter_options = dict(segmenter_options)
        self.max_lag = max_lag
        self.warn_backlog = warn_backlog
        self.max_backlog = max_backlog
        self.mixed_role = mixed_role
        self.on_asr_call = tuple(on_asr_call)

    def roles(self, session, media_line_order):
        return roles_of(session, media_line_order, self.mixed_role)

    # -- IStreamConsumer ---------------------------------------------------------------

    def pcm(self, stream, position, samples):
        call = self.calls.by_call_id.get(stream.call_id)
        if call is None:
            return
        key = stream_key(stream.label, stream.audio_index)
        if key not in call.origins:
            # Where position 0 was on the wall clock, for clientTimestamp.
            call.origins[key] = self._now_ms() - (position + len(samples)) * 1000 // SAMPLE_RATE
        if not call.streaming:
            return
        window = call.windows.get(key)
        if window is None:
            window = self._late_window(call, key)
            if window is None:
                return
        window.leg_stream.samples += len(samples)
        window.pipeline.pcm(position, samples)
        recordings = self.writer.recordings
        if recordings is not None and window.params.audio_recording_allowed:
            ls = window.leg_stream
            recordings.audio(call.guid, ls.leg_id, ls.role, position, samples)

    def event(self, stream, kind, position, detail):
        if kind != "end":
            return  # holds arrive as silence on the timeline; nothing to do
        call = self.calls.by_call_id.get(stream.call_id)
        if call is None:
            return
        window = call.windows.pop(stream_key(stream.label, stream.audio_index), None)
        if window is not None:
            self.calls.track(defer.ensureDeferred(self.close([window], call)))

    def _late_window(self, call, key):
        """A stream that appeared after the start (a re-INVITE added it)."""
        role = self.roles(call.session, call.params.media_line_order).get(key)
        if role is None or role not in call.roles:
            return None
        try:
            recognizer = self.backend.new_recognizer(call.params.language, SAMPLE_RATE)
        except Exception as e:
            self.log.error("cannot transcribe a new stream of guid {guid}: {error}",
                           guid=call.guid, error=str(e))
            return None
        return self.open(call, key, role, recognizer)

    # -- opening and closing -------------------------------------------------------------

    def open(self, call, key, role, recognizer):
        """A window on stream *key* of *call* for its leg stream of *role*."""
        leg_stream = call.roles[role]
        context = {"guid": call.guid, "call_id": call.call_id, "stream_id": leg_stream.id}
        window = Window(None, leg_stream, call.params, key)
        window.pipeline = StreamPipeline(
            recognizer, Segmenter(**self.segmenter_options),
            lambda utterance: self.writer.utterance(call, window, utterance), clock=self.clock,
            max_lag=self.max_lag, warn_backlog=self.warn_backlog, max_backlog=self.max_backlog,
            log_context=context, on_asr_call=self.on_asr_call)
        call.windows[key] = window
        leg_stream.windows += 1
        return window

    async def close(self, windows, call):
        """Close *windows* of *call*: every utterance of theirs is stored
        before this returns, and their counters added to their streams."""
        # consumeErrors: at shutdown these may be cancelled; the failure is
        # the caller's, not an unhandled one per pipeline.
        await defer.gatherResults([w.pipeline.close() for w in windows], consumeErrors=True)
        # Utterances held back for a number that might continue are
        # released now: nothing more of these windows is coming.
        for w in windows:
            self.writer.flush(call, w.key)
        for window in windows:
            ls, pipeline = window.leg_stream, window.pipeline
            ls.fed += pipeline.segmenter.stats["fed"]
            ls.skipped += pipeline.segmenter.stats["skipped"]
            ls.dropped += pipeline.dropped
        await defer.gatherResults([w.leg_stream.writes.idle() for w in windows],
                                  consumeErrors=True)

    def backlog(self):
        """(windows open, samples waiting for recognisers) over every call."""
        windows = self.open_windows()
        return len(windows), sum(w.pipeline.backlog for w in windows)

    def open_windows(self):
        """Every window open now, over every call."""
        return [w for call in self.calls for w in call.windows.values()]

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))
