"""Audio windows: the gate between a stream's PCM and a recogniser.

Audio reaches a recogniser only between a start and the next stop (a
*window*); each window of each stream has its own recogniser and
:class:`~siprecd.transcribe.pipeline.StreamPipeline`, so nothing from
before a start or after a stop is ever fed, and closing a window ends its
open utterance. :class:`Windows` is the media plane's ``IStreamConsumer``
for every call: it keeps where each stream's position 0 was on the wall
clock, passes PCM on while the conversation's gate is open, opens a window
for a stream that appears after the start (a re-INVITE added it, or a
second session of the same guid came), and closes one whose stream ends.

:class:`LegStream` is one stream of one SIPREC session in one leg (the
API's streamId) with its counters; its windows add to them when they close.

Roles: ``mediaLineOrder`` decides the first two. The stream in seat 0
(the first audio m-line, or the stream that replaced it; see
``siprecd.siprec.session``) is the customer unless ``AGENT_FIRST``, seat 1
the other; a stream with no seat (a third party, a conference, a barge-in)
takes ``media.extra_stream_role`` (default agent); a call recorded as one
mixed stream has one role (``media.mixed_role``). Every stream is
transcribed, and which role each got is logged and answered to the start.

Rates: each window feeds its recogniser at one rate, fixed when it opens:
the stream's codec rate, at most ``asr.sample_rate`` (16 kHz by default;
wider audio, Opus at 48 kHz, is resampled down to it). PCM at any other
rate (after a codec switch) is resampled to the window's rate
(:mod:`siprecd.transcribe.resample`). Recordings are written at 8 kHz.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import IStreamConsumer
from siprecd.transcribe.pipeline import StreamPipeline
from siprecd.transcribe.resample import RateConverter
from siprecd.transcribe.segment import SAMPLE_RATE, Segmenter
from siprecd.transcribe.utterances import SerialQueue

__all__ = ["CUSTOMER", "AGENT", "ROLES", "LegStream", "Window", "Windows", "stream_key",
           "roles_of", "codec_rate", "RECORDING_RATE"]

CUSTOMER, AGENT = "customer", "agent"
ROLES = (CUSTOMER, AGENT)
RECORDING_RATE = 8000
# PCM rate of the codecs whose audio is wider than 8 kHz (media.codecs.RATES).
_WIDEBAND = {"G722": 16000, "OPUS": 48000}


def stream_key(label, audio_index):
    """How a call's stream is known across re-INVITEs."""
    return (label, audio_index)


def codec_rate(codec):
    """The PCM rate the media plane hands a codec's audio at."""
    name = getattr(codec, "name", codec)
    return _WIDEBAND.get(str(name).upper(), SAMPLE_RATE)


def roles_of(session, media_line_order, mixed_role, extra_role=AGENT):
    """{stream key: role} for every stream of the session (module docstring)."""
    streams = list(session.streams)
    if len(streams) == 1:
        s = streams[0]
        return {stream_key(s.label, s.audio_index): mixed_role}
    order = ROLES if media_line_order == "CUSTOMER_FIRST" else ROLES[::-1]
    return {stream_key(s.label, s.audio_index): order[s.seat] if s.seat in (0, 1) else extra_role
            for s in streams}


@attrs.define(eq=False)
class LegStream:
    """One stream of one session in one leg: the API's streamId.

    ``primary`` is the role's main stream (a seated stream: the first two
    parties or who replaced them), the one the API's ``customer``/``agent``
    answer and the recording's channel are about; ``participant`` is what
    the metadata says of its sender (``{"id", "aor", "name"}``), if known.
    """

    id: str
    role: str
    leg_id: str
    external_id: str
    label: str | None
    created_ms: int
    call_id: str | None = None
    key: tuple | None = None
    primary: bool = True
    participant: dict | None = None
    writes: SerialQueue = attrs.field(factory=SerialQueue)
    samples: int = 0              # audio samples that passed the open gate
    audio_ms: float = 0.0         # their length
    fed_ms: float = 0.0           # given to the recogniser
    skipped_ms: float = 0.0       # silence not given to it
    dropped_ms: float = 0.0       # dropped while the recogniser was too far behind
    transcripts: int = 0          # utterances stored
    lost: int = 0                 # utterances that could not be stored
    windows: int = 0
    streaming_seconds: float = 0.0
    opened_at: float | None = None

    def summary(self):
        return {"totalAudioBytes": self.samples * 2,
                "audioDurationMs": int(self.audio_ms),
                "streamingSeconds": int(round(self.streaming_seconds)),
                "transcripts": self.transcripts}

    def stats(self):
        return dict(self.summary(),
                    recognizedAudioMs=int(self.fed_ms), skippedSilenceMs=int(self.skipped_ms),
                    droppedAudioMs=int(self.dropped_ms), lostTranscripts=self.lost,
                    windows=self.windows)

    def describe(self):
        """What the API says of this stream beside the customer/agent objects."""
        out = {"streamId": self.id, "role": self.role, "label": self.label,
               "callId": self.call_id, "primary": self.primary}
        if self.participant:
            out["participant"] = dict(self.participant)
        return out

    def stored_params(self, params):
        """What is stored with the stream (and given with its messages as
        ``stream_params``): the LegSettings *params*, and where it is."""
        out = {**params.as_dict(), "callId": self.call_id,
               "audioIndex": self.key[1] if self.key is not None else None,
               "primary": self.primary}
        if self.participant:
            out["participant"] = dict(self.participant)
        return out

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
    rate: int = SAMPLE_RATE      # what the recogniser is fed at
    feed: RateConverter | None = None
    record: RateConverter | None = None


@implementer(IStreamConsumer)
class Windows:
    """See the module docstring.

    *calls* is the :class:`~siprecd.transcribe.calls.CallTable` the windows
    belong to; *backend* the IASRBackend recognisers come from; *writer*
    the :class:`~siprecd.transcribe.utterances.UtteranceWriter` utterances
    go to; *on_asr_call* listeners of every recogniser call (metrics);
    *partials* the :class:`~siprecd.transcribe.partials.PartialWriter`
    interim results go to (None: none are asked for).
    *warn_backlog* and *max_backlog* are in seconds of audio; *max_rate* is
    the highest rate a recogniser is fed at.
    """

    log = Logger()

    def __init__(self, calls, backend, writer, clock, *, segmenter_options, warn_backlog,
                 max_backlog, max_lag=1.0, mixed_role=CUSTOMER, extra_role=AGENT,
                 max_rate=16000, on_asr_call=(), partials=None):
        self.calls = calls
        self.partials = partials
        self.backend = backend
        self.writer = writer
        self.clock = clock
        self.segmenter_options = dict(segmenter_options)
        self.max_lag = max_lag
        self.warn_backlog = warn_backlog
        self.max_backlog = max_backlog
        self.mixed_role = mixed_role
        self.extra_role = extra_role
        self.max_rate = max_rate
        self.on_asr_call = tuple(on_asr_call)
        # Called with (call, key) for a stream seen while streaming that has
        # no window: CallControl opens one (set by it).
        self.late_window = None

    def roles(self, session, media_line_order):
        return roles_of(session, media_line_order, self.mixed_role, self.extra_role)

    def feed_rate(self, session, key):
        """The rate a window on stream *key* of *session* feeds its recogniser at."""
        stream = next((s for s in session.streams
                       if stream_key(s.label, s.audio_index) == key), None)
        rate = codec_rate(stream.codec) if stream is not None else SAMPLE_RATE
        return min(rate, self.max_rate)

    # -- IStreamConsumer ---------------------------------------------------------------

    def pcm(self, stream, position, samples, rate=SAMPLE_RATE):
        call = self.calls.by_call_id.get(stream.call_id)
        if call is None:
            return
        key = stream_key(stream.label, stream.audio_index)
        if key not in call.origins:
            # Where position 0 was on the wall clock, for clientTimestamp.
            call.origins[key] = self._now_ms() - (position + len(samples)) * 1000 // rate
        if not call.conversation.streaming:
            return
        window = call.windows.get(key)
        if window is None:
            window = self.late_window(call, key) if self.late_window is not None else None
            if window is None:
                return
        ls = window.leg_stream
        ls.samples += len(samples)
        ls.audio_ms += len(samples) * 1000 / rate
        for at, piece in window.feed.convert(position, samples, rate):
            window.pipeline.pcm(at, piece)
        self._record(call, window, position, samples, rate)

    def _record(self, call, window, position, samples, rate):
        recordings = self.writer.recordings
        ls = window.leg_stream
        if recordings is None or not window.params.audio_recording_allowed or not ls.primary:
            return
        for at, piece in window.record.convert(position, samples, rate):
            recordings.audio(call.guid, ls.leg_id, ls.role, at, piece)

    def event(self, stream, kind, position, detail):
        if kind != "end":
            return  # holds arrive as silence on the timeline; nothing to do
        call = self.calls.by_call_id.get(stream.call_id)
        if call is None:
            return
        window = call.windows.pop(stream_key(stream.label, stream.audio_index), None)
        if window is not None:
            self.calls.closing(call, defer.ensureDeferred(self.close([window], call)))

    # -- opening and closing -------------------------------------------------------------

    def new_recognizer(self, language, rate):
        return self.backend.new_recognizer(language, rate)

    def open(self, call, key, leg_stream, recognizer, rate=SAMPLE_RATE):
        """A window on stream *key* of *call* for *leg_stream*, whose
        recogniser was made for *rate*."""
        context = {"guid": call.guid, "call_id": call.call_id, "stream_id": leg_stream.id}
        params = call.conversation.params
        window = Window(None, leg_stream, params, key, rate, RateConverter(rate),
                        RateConverter(RECORDING_RATE))
        window.pipeline = StreamPipeline(
            recognizer, Segmenter(rate=rate, **self.segmenter_options),
            lambda utterance: self.writer.utterance(call, window, utterance), clock=self.clock,
            max_lag=self.max_lag, warn_backlog=int(self.warn_backlog * rate),
            max_backlog=int(self.max_backlog * rate), log_context=context,
            on_asr_call=self.on_asr_call, rate=rate,
            interim=self.partials.interim(call, window) if self.partials is not None else None)
        call.windows[key] = window
        leg_stream.windows += 1
        return window

    async def close(self, windows, call):
        """Close *windows* of *call*: every utterance of theirs is stored
        before this returns, and their counters added to their streams."""
        for w in windows:
            for at, piece in w.feed.flush():
                w.pipeline.pcm(at, piece)
            self._record_tail(call, w)
        # consumeErrors: at shutdown these may be cancelled; the failure is
        # the caller's, not an unhandled one per pipeline.
        await defer.gatherResults([w.pipeline.close() for w in windows], consumeErrors=True)
        # Utterances held back for a number that might continue are
        # released now: nothing more of these windows is coming.
        for w in windows:
            self.writer.flush(call, w.key)
        for window in windows:
            ls, pipeline = window.leg_stream, window.pipeline
            stats, rate = pipeline.segmenter.stats, window.rate
            ls.fed_ms += stats["fed"] * 1000 / rate
            ls.skipped_ms += stats["skipped"] * 1000 / rate
            ls.dropped_ms += pipeline.dropped * 1000 / rate
        await defer.gatherResults([w.leg_stream.writes.idle() for w in windows],
                                  consumeErrors=True)

    def _record_tail(self, call, window):
        recordings = self.writer.recordings
        ls = window.leg_stream
        tail = window.record.flush()
        if recordings is None or not window.params.audio_recording_allowed or not ls.primary:
            return
        for at, piece in tail:
            recordings.audio(call.guid, ls.leg_id, ls.role, at, piece)

    def backlog(self):
        """(windows open, seconds of audio waiting for recognisers) over every call."""
        windows = self.open_windows()
        return len(windows), sum(w.pipeline.backlog / w.rate for w in windows)

    def open_windows(self):
        """Every window open now, over every call."""
        return [w for call in self.calls for w in call.windows.values()]

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))
