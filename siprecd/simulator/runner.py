"""The simulator's Python API: describe calls, place them, get a summary.

::

    from siprecd.simulator import CallSpec, Impairments, Target, place_calls

    summary = yield place_calls(reactor, Target("10.0.0.5", 5070, "tcp"),
                                [CallSpec("customer.wav", "agent.wav", codec="PCMA")] * 10,
                                concurrency=5, speed=1.0, seed=7)
    print(summary.format()); assert summary.ok

Times in a :class:`CallSpec` (hold, DTMF) are seconds of *call time*:
from the first RTP packet, holds included, whatever the ``speed``.
"""

import secrets
from pathlib import Path

import attrs
import numpy as np
import soxr
from twisted.internet import defer

from siprecd.media.codecs import make_encoder
from siprecd.media.srtp import PREFERENCE as SRTP_SUITES
from siprecd.simulator import invite as invitemod
from siprecd.simulator import rtp
from siprecd.simulator.results import CallResult, StreamResult, Summary
from siprecd.simulator.uac import ConnectError, SipClient, SiprecCall
from siprecd.simulator.wav import SAMPLE_RATE, read_wav, tone
from siprecd.siprec.guid import SOURCES

__all__ = ["Target", "CallSpec", "Prepared", "prepare", "place_calls", "TRANSPORTS", "CODECS",
           "SRTP_SUITES"]

TRANSPORTS = ("udp", "tcp", "tls")
CODECS = ("PCMU", "PCMA", "G729", "G722", "OPUS")
# PCM rate each codec encodes (the call's audio, 8 kHz, is resampled up to it).
CODEC_RATES = {"G722": 16000, "OPUS": 48000}
DEFAULT_SECONDS = 10.0  # length of the generated audio when no WAV is given


def _one_of(choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")
    return check


@attrs.frozen
class Target:
    """Where the SRS listens. *port* defaults to siprecd's (5070, TLS 5071).
    For TLS the certificate is checked against *ca_file* (default: the
    system's trust store) for *server_name* (default: *host*), unless
    *insecure*."""

    host: str
    port: int | None = None
    transport: str = attrs.field(default="udp", converter=str.lower, validator=_one_of(TRANSPORTS))
    ca_file: str | None = None
    insecure: bool = False
    server_name: str | None = None


@attrs.frozen(eq=False)
class CallSpec:
    """One call to place.

    *customer* and *agent* are WAV paths, int16 arrays at 8 kHz, or None
    for a generated tone; the customer is sent on the first m-line (label
    1, the caller in the metadata), the agent on the second (label 2). The
    shorter is padded with silence; *duration* loops or cuts both.
    *hold* is ``(at, seconds)``; *dtmf* is ``[(at, digits), ...]`` sent on
    *dtmf_stream*, each digit *dtmf_duration* long, *dtmf_gap* apart.
    With *srtp*, the m-lines are RTP/SAVP with an SDES key of the call's
    own (``a=crypto``, suite *srtp_suite*), and RTP and RTCP go out as
    SRTP and SRTCP under that key.
    """

    customer: object = None
    agent: object = None
    codec: str = attrs.field(default="PCMU", converter=str.upper, validator=_one_of(CODECS))
    flavour: str = attrs.field(default="rfc7865", validator=_one_of(invitemod.FLAVOURS))
    guid_style: str = attrs.field(default="vendor", validator=_one_of(invitemod.GUID_STYLES))
    hold: tuple | None = None
    dtmf: tuple = ()
    dtmf_stream: str = attrs.field(default="customer", validator=_one_of(invitemod.ROLES))
    dtmf_duration: float = 0.1
    dtmf_gap: float = 0.1
    impairments: rtp.Impairments = rtp.Impairments()
    rtcp: bool = False
    duration: float | None = None
    srtp: bool = False
    srtp_suite: str = attrs.field(default=SRTP_SUITES[0], converter=str.upper,
                                  validator=_one_of(SRTP_SUITES))


@attrs.frozen(eq=False)
class Prepared:
    """A spec turned into what the calls send: encoded frames per stream,
    and hold and DTMF on the 20 ms slot grid."""

    frames: tuple              # (customer frames, agent frames): bytes per 20 ms
    slots: int                 # slots of call time (audio plus hold)
    hold: tuple | None         # (first slot, slots)
    dtmf: tuple                # rtp.Dtmf, in order
    dtmf_stream: int


def _audio(source, fallback_frequencies, seconds):
    if source is None:
        return tone(seconds or DEFAULT_SECONDS, fallback_frequencies)
    if isinstance(source, (str, Path)):
        return read_wav(source)
    samples = np.asarray(source)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError("audio arrays must be one-dimensional int16 at 8 kHz")
    return samples


def _fit(samples, count):
    if len(samples) == 0:
        return np.zeros(count, dtype=np.int16)
    if len(samples) < count:
        samples = np.tile(samples, -(-count // len(samples)))
    return samples[:count]


def _encode(samples, codec):
    rate = CODEC_RATES.get(codec)
    if rate is not None:
        return _encode_wideband(samples, codec, rate)
    encoder = make_encoder(codec)
    try:
        data = encoder.encode(samples)
    finally:
        encoder.close()
    frames = len(samples) // rtp.FRAME_SAMPLES
    size = len(data) // frames if frames else 0
    return tuple(data[i * size:(i + 1) * size] for i in range(frames))


def _encode_wideband(samples, codec, rate):
    """One payload per 20 ms: the 8 kHz audio resampled to *rate* (soxr),
    then encoded frame by frame (Opus packets vary in size)."""
    pcm = soxr.resample(np.asarray(samples, dtype=np.int16), 8000, rate, quality="HQ")
    per_frame = rate // 50
    frames = len(samples) // rtp.FRAME_SAMPLES
    pcm = np.concatenate([pcm, np.zeros(max(0, frames * per_frame - len(pcm)), np.int16)])
    encoder = make_encoder(codec)
    try:
        return tuple(encoder.encode(pcm[i * per_frame:(i + 1) * per_frame])
                     for i in range(frames))
    finally:
        encoder.close()


def _slot(seconds, what):
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, got {seconds}")
    return int(round(seconds / rtp.FRAME_SECONDS))


def prepare(spec, cache=None):
    """Load, fit and encode the audio of *spec*, and place its hold and
    DTMF on the slot grid. Raises ValueError (WavError) with a message
    fit for the user. *cache* (a dict) shares the encoding between specs
    with the same audio and codec."""
    cache = {} if cache is None else cache
    key = (_cache_key(spec.customer), _cache_key(spec.agent), spec.codec, spec.duration)
    frames = cache.get(key)
    if frames is None:
        customer = _audio(spec.customer, (440.0, 554.0), spec.duration)
        agent = _audio(spec.agent, (330.0, 392.0, 494.0), spec.duration)
        if spec.duration is not None:
            if spec.duration <= 0:
                raise ValueError(f"duration must be above 0, got {spec.duration}")
            count = int(round(spec.duration * SAMPLE_RATE))
        else:
            count = max(len(customer), len(agent))
        count += -count % rtp.FRAME_SAMPLES
        if count == 0:
            raise ValueError("both audio files are empty")
        padded = []
        for samples in (customer, agent):
            fitted = _fit(samples, count) if spec.duration is not None else samples
            padded.append(np.concatenate(
                [fitted, np.zeros(count - len(fitted), dtype=np.int16)]))
        frames = tuple(_encode(p, spec.codec) for p in padded)
        cache[key] = frames
    audio_slots = len(frames[0])
    hold = None
    if spec.hold:
        at, seconds = spec.hold
        start, length = _slot(at, "hold time"), max(1, _slot(seconds, "hold duration"))
        if not 0 < start < audio_slots:
            raise ValueError(f"hold at {at} s is outside the audio (0 to {audio_slots * rtp.FRAME_SECONDS:g} s)")
        hold = (start, length)
    total = audio_slots + (hold[1] if hold else 0)
    digit_frames = max(2, _slot(spec.dtmf_duration, "DTMF duration"))
    gap = _slot(spec.dtmf_gap, "DTMF gap")
    dtmf = []
    for at, digits in spec.dtmf:
        slot = _slot(at, "DTMF time")
        for digit in str(digits):
            if digit.upper() not in rtp.DTMF_EVENTS:
                raise ValueError(f"not a DTMF digit: {digit!r} (expected 0-9, *, #, A-D)")
            d = rtp.Dtmf(slot, digit.upper(), digit_frames)
            dtmf.append(d)
            slot += rtp.dtmf_slots(d) + gap
    dtmf.sort(key=lambda d: d.slot)
    busy_until = 0
    for d in dtmf:
        end = d.slot + rtp.dtmf_slots(d)
        when = f"DTMF {d.digit!r} at {d.slot * rtp.FRAME_SECONDS:g} s"
        if d.slot < busy_until:
            raise ValueError(f"{when} overlaps the digit before it")
        if end > total:
            raise ValueError(f"{when} does not end before the call does "
                             f"({total * rtp.FRAME_SECONDS:g} s)")
        if hold and d.slot < hold[0] + hold[1] and end > hold[0]:
            raise ValueError(f"{when} falls in the hold")
        busy_until = end
    return Prepared(frames=frames, slots=total, hold=hold, dtmf=tuple(dtmf),
                    dtmf_stream=invitemod.ROLES.index(spec.dtmf_stream))


def _cache_key(source):
    if source is None or isinstance(source, (str, Path)):
        return str(source)
    return id(source)


def place_calls(reactor, target, calls, *, concurrency=None, rate=None, speed=1.0, seed=None,
                local_host=None, media_host=None, answer_timeout=32.0, guid_order=None,
                rtp_ports=(40000, 49999), on_call_done=None, on_call_answered=None):
    """Place *calls* (CallSpecs) to *target*; a Deferred firing with a :class:`Summary`.

    At most *concurrency* calls at a time (default: all), started at most
    *rate* per second (real time); media *speed* times faster than real
    time; impairments drawn from *seed* (random when None, and reported).
    *guid_order* is the SRS's ``sip.guid_sources`` (default siprecd's), used
    to say which guid the SRS should pick. *on_call_done(CallResult)* is
    told as each call ends; *on_call_answered(CallResult)* when its media starts
    (``result.guid`` is then the guid the SRS uses). Bad arguments or unusable audio fail the
    Deferred with ValueError; anything that happens on the network ends up
    in the summary instead.
    """
    return defer.ensureDeferred(_place_calls(
        reactor, target, list(calls), concurrency=concurrency, rate=rate, speed=speed, seed=seed,
        local_host=local_host, media_host=media_host, answer_timeout=answer_timeout,
        guid_order=guid_order, rtp_ports=rtp_ports, on_call_done=on_call_done,
        on_call_answered=on_call_answered,
    ))


async def _place_calls(reactor, target, calls, *, concurrency, rate, speed, seed, local_host,
                       media_host, answer_timeout, guid_order, rtp_ports, on_call_done,
                       on_call_answered):
    if not calls:
        raise ValueError("no calls to place")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more, got {concurrency}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be above 0, got {rate}")
    if speed <= 0:
        raise ValueError(f"speed must be above 0, got {speed}")
    if answer_timeout <= 0:
        raise ValueError(f"timeout must be above 0, got {answer_timeout}")
    low, high = rtp_ports
    if not 1024 <= low < high <= 65535 or high - low < 3:
        raise ValueError(f"bad RTP port range {low}-{high}")
    order = tuple(guid_order or SOURCES)
    unknown = [s for s in order if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown guid source {unknown[0]!r}; expected some of {', '.join(SOURCES)}")
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    cache = {}
    prepared = [prepare(spec, cache) for spec in calls]
    kinds = {spec.impairments.describe() for spec in calls}
    client = SipClient(reactor, target, local_host=local_host, answer_timeout=answer_timeout)
    summary = Summary(target=f"{target.host}:{client.port}", transport=client.transport,
                      seed=seed, speed=speed, impairments="; ".join(sorted(kinds)))
    started_at = reactor.seconds()
    try:
        await client.connect()
    except ConnectError as e:
        for number, spec in enumerate(calls, 1):
            summary.calls.append(_unplaced(number, spec, str(e)))
        summary.elapsed = reactor.seconds() - started_at
        return summary
    try:
        summary.calls = await _run_all(reactor, client, calls, prepared, concurrency, rate,
                                       speed=speed, seed=seed, order=order, media_host=media_host,
                                       rtp_ports=rtp_ports, on_call_done=on_call_done,
                                       on_call_answered=on_call_answered)
    finally:
        closing = client.close()
        closing.addTimeout(2.0, reactor)
        try:
            await closing
        except defer.TimeoutError:
            pass
    summary.elapsed = reactor.seconds() - started_at
    return summary


def _unplaced(number, spec, problem):
    result = CallResult(number=number, flavour=spec.flavour, guid_style=spec.guid_style,
                        codec=spec.codec, problems=[problem])
    result.streams = [StreamResult(label=label, role=role, codec=spec.codec)
                      for label, role in zip(invitemod.LABELS, invitemod.ROLES)]
    return result


def _run_all(reactor, client, calls, prepared, concurrency, rate, *, speed, seed, order,
             media_host, rtp_ports, on_call_done, on_call_answered=None):
    """Start calls as concurrency and rate allow; fires with the results in order."""
    results = [None] * len(calls)
    all_done = defer.Deferred()
    state = {"next": 0, "active": 0, "last_start": None, "waiting": None}
    interval = 1.0 / rate if rate else 0.0

    def ended(result, index):
        results[index] = result
        state["active"] -= 1
        if on_call_done is not None:
            try:
                on_call_done(result)
            except Exception:
                SiprecCall.log.failure("on_call_done failed")
        if all(r is not None for r in results):
            all_done.callback(results)
        else:
            start_more()

    def start_more():
        state["waiting"] = None
        while state["next"] < len(calls):
            if concurrency is not None and state["active"] >= concurrency:
                return
            now = reactor.seconds()
            if interval and state["last_start"] is not None:
                wait = state["last_start"] + interval - now
                if wait > 0:
                    if state["waiting"] is None:
                        state["waiting"] = reactor.callLater(wait, start_more)
                    return
            index = state["next"]
            state["next"] += 1
            state["active"] += 1
            state["last_start"] = now
            call = SiprecCall(client, index + 1, calls[index], prepared[index], speed=speed,
                              seed=seed, guid_order=order, media_host=media_host,
                              rtp_ports=rtp_ports, on_answered=on_call_answered)
            call.run().addCallback(ended, index)

    start_more()
    return all_done
