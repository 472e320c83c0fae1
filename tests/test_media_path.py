"""The whole media path: simulator -> SIP -> UDP -> RTP -> jitter buffer ->
decoder -> the consumer above the media plane.

The daemon's service tree runs in this process on real loopback sockets;
the layer above the media plane (transcription, not built here) is replaced
by PcmRecorder, a test double that keeps every sample by position.
"""

import subprocess

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface import implementer

from harness.inprocess import start_service_tree
from siprecd.interfaces import IStreamConsumer
from siprecd.media import codecs
from siprecd.simulator import CallSpec, Impairments, Target, place_calls
from siprecd.simulator.wav import read_wav

SECONDS = 4


@implementer(IStreamConsumer)
class PcmRecorder:
    """Test double for the transcription layer: keeps PCM by stream."""

    def __init__(self):
        self.chunks = {}
        self.events = {}

    def pcm(self, stream, position, samples, rate=8000):
        self.chunks.setdefault(stream, []).append((position, np.array(samples, dtype=np.int16)))

    def event(self, stream, kind, position, detail):
        self.events.setdefault(stream, []).append((kind, position, detail))

    def audio(self, audio_index):
        (stream,) = [s for s in self.chunks if s.audio_index == audio_index]
        out, expected_position = [], 0
        for position, samples in self.chunks[stream]:
            assert position == expected_position, "chunks must be contiguous"
            out.append(samples)
            expected_position += len(samples)
        return np.concatenate(out)


def speech_like(seed, seconds=SECONDS):
    """Noise shaped by a syllable-rate envelope: every code of the law is used."""
    rnd = np.random.default_rng(seed)
    n = seconds * 8000
    envelope = 0.2 + 0.8 * np.abs(np.sin(np.arange(n) * np.pi * 4 / 8000))
    return (rnd.normal(0, 6000, n) * envelope).clip(-32768, 32767).astype(np.int16)


async def record_call(tmp_path, spec, speed=4.0, seed=1, **sections):
    root, cfg = await start_service_tree(tmp_path, reactor, **sections)
    recorder = PcmRecorder()
    root.node.media.consumer = recorder
    try:
        summary = await place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"], "udp"), [spec],
            speed=speed, seed=seed, local_host="127.0.0.1", media_host="127.0.0.1",
        )
        assert summary.ok, summary.format()
        return recorder, summary
    finally:
        await root.stopService()


@pytest.mark.parametrize("codec,law", [("PCMU", "ulaw"), ("PCMA", "alaw")])
@pytest_twisted.inlineCallbacks
def test_g711_sample_for_sample(tmp_path, codec, law):
    customer, agent = speech_like(1), speech_like(2)
    spec = CallSpec(customer=customer, agent=agent, codec=codec)
    recorder, _ = yield defer.ensureDeferred(record_call(tmp_path, spec))
    encode, decode = getattr(codecs, f"{law}_encode"), getattr(codecs, f"{law}_decode")
    for index, source in ((0, customer), (1, agent)):
        expected = decode(encode(source))
        got = recorder.audio(index)
        assert len(got) == len(expected)
        assert np.array_equal(got, expected)
    for stream, events in recorder.events.items():
        assert events[-1][0] == "end"


def snr_db(reference, test):
    reference = reference.astype(np.float64)
    noise = reference - test.astype(np.float64)
    return 10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-9))


@pytest_twisted.inlineCallbacks
def test_g729_through_the_path(tmp_path):
    """G.729 is lossy: the path must add nothing to the codec's own loss
    (output equals a local encode/decode, sample for sample), and the SNR
    against the source is stated."""
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav),
                    "Thank you for calling. Could you please read me the number on your card?"],
                   check=True, timeout=60)
    source = read_wav(wav)  # converted to 8 kHz mono, as the simulator sends it
    source = source[: len(source) - len(source) % 160]
    spec = CallSpec(customer=source, agent=source, codec="G729")
    recorder, _ = yield defer.ensureDeferred(record_call(tmp_path, spec))
    got = recorder.audio(0)
    encoder, decoder = codecs.make_encoder("G729"), codecs.make_decoder("G729")
    local = decoder.decode(encoder.encode(source))
    encoder.close(), decoder.close()
    assert len(got) == len(source)
    assert np.array_equal(got, local)
    # Align for the codec's delay (found, not assumed), then compare.
    snr, delay = max((snr_db(source[: len(source) - k], got[k:]), k) for k in range(1, 161))
    print(f"G.729 SNR against the source through the whole path: {snr:.1f} dB "
          f"(delay {delay} samples)")
    assert snr > 4.0


@pytest_twisted.inlineCallbacks
def test_loss_jitter_reordering_keep_the_timeline(tmp_path):
    """5% loss, 20 ms jitter, 2% reordering: output length within ±20 ms per
    minute of audio sent."""
    seconds = 60
    source = speech_like(3, seconds)
    spec = CallSpec(customer=source, agent=source, codec="PCMU",
                    impairments=Impairments(loss=5.0, jitter_ms=20.0, reorder=2.0))
    recorder, summary = yield defer.ensureDeferred(
        record_call(tmp_path, spec, speed=2.0, seed=7))
    sent = len(source)
    for index in (0, 1):
        got = len(recorder.audio(index))
        drift_ms = abs(got - sent) / 8
        print(f"stream {index}: sent {sent / 8000:.1f} s, got {got / 8000:.3f} s, "
              f"off by {drift_ms:.1f} ms")
        assert drift_ms <= 20 * seconds / 60
