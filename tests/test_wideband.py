"""G.722 and Opus end to end: siprecd-src places a real call (SIP over UDP,
RTP over loopback) to the daemon's service tree in this process, with the
real Korean Vosk model.

What is compared: the PCM the media plane hands up for each stream, at the
codec's own rate (16 kHz for G.722, 48 kHz for Opus), must equal sample
for sample a reference decode of the very payloads the simulator sent
(a fresh decoder of the same library over ``prepare(spec).frames``); and
the words stored must be those a bare recogniser gives for that reference
audio at the rate the window feeds: for G.722 (16 kHz, fed as it is) the
very words within 40 ms; for Opus (resampled to 16 kHz in pieces whose ends
depend on packet timing, so a last bit may differ, and this small model
flips words on the slightest change) at least 80 % of the words.
"""

import difflib

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface import implementer

from siprecd.interfaces import IStreamConsumer
from siprecd.media import codecs
from siprecd.simulator import CallSpec, prepare
from siprecd.testing.asr import KO_LANGUAGE
from siprecd.transcribe.resample import RateConverter
from siprecd.transcribe.segment import Feed, Finish, Segmenter
from test_transcribe_service import silence
from test_transcribe_siprec import StartOnOffer, run_call, time_difference, words_of
from test_transcribe_vosk import (  # noqa: F401 (backend, speech: fixtures)
    MAX_TIME_DIFFERENCE_MS, backend, conversation, speech,
)

RATES = {"G722": 16000, "OPUS": 48000}
FEED_RATE = 16000     # asr.sample_rate's default


@implementer(IStreamConsumer)
class Tap:
    """Keeps what the media plane hands up, then passes it on."""

    def __init__(self, service):
        self.service = service
        self.chunks = {}

    def pcm(self, stream, position, samples, rate=8000):
        self.chunks.setdefault(stream.audio_index, []).append(
            (position, np.array(samples, dtype=np.int16), rate))
        self.service.pcm(stream, position, samples, rate)

    def event(self, stream, kind, position, detail):
        self.service.event(stream, kind, position, detail)

    def pcm_of(self, audio_index):
        chunks = self.chunks[audio_index]
        rates = {rate for _, _, rate in chunks}
        expected = 0
        for position, samples, _ in chunks:
            assert position == expected, "the media plane's PCM has a gap or an overlap"
            expected += len(samples)
        return np.concatenate([s for _, s, _ in chunks]), rates


def reference_decode(codec, frames):
    decoder = codecs.make_decoder(codec, 111)
    try:
        return np.concatenate([decoder.decode(frame) for frame in frames])
    finally:
        decoder.close()


async def recognise_at(backend, audio, rate):
    """A bare recogniser given *audio* (at *rate*) in the pipeline's
    chunks, utterances ended where its Segmenter ends them."""
    recognizer = backend.new_recognizer(KO_LANGUAGE, rate)
    results = []
    frame = rate // 50
    try:
        segmenter = Segmenter(skip_silence=False, rate=rate)
        actions = []
        for i in range(0, len(audio), frame):
            actions += segmenter.push(i, audio[i:i + frame])
        actions += segmenter.close() + [Finish(len(audio), "stop")]
        for action in actions:
            if isinstance(action, Feed):
                results += await recognizer.accept(action.samples.tobytes())
            else:
                results += await recognizer.finish()
    finally:
        recognizer.close()
    return [(w.word, round(w.start * 1000), round(w.end * 1000))
            for r in results if r.final for w in r.words]


@pytest.mark.parametrize("codec", ["G722", "OPUS"])
@pytest_twisted.ensureDeferred
async def test_wideband_call_is_decoded_exactly_and_transcribed(tmp_path, backend, speech, codec):
    if codecs.unavailable_reason(codec):
        pytest.skip(codecs.unavailable_reason(codec))
    customer = conversation(speech[:3], [0.5, 1.0, 1.0])
    agent = conversation(speech[2:], [1.0, 0.8, 1.2])
    n = max(len(customer), len(agent))
    n += -n % 160
    customer = np.concatenate([customer, silence((n - len(customer)) / 8000)])
    agent = np.concatenate([agent, silence((n - len(agent)) / 8000)])
    spec = CallSpec(customer=customer, agent=agent, codec=codec)
    sent = prepare(spec).frames          # the payloads the simulator sends, per stream
    taps = {}

    def wire(service):
        taps["tap"] = Tap(service)
        return taps["tap"], StartOnOffer(service)

    found, streams, _ = await run_call(tmp_path, backend, spec, wire)
    tap = taps["tap"]
    assert {s.role for s in streams} == {"customer", "agent"}
    for audio_index, role in ((0, "customer"), (1, "agent")):
        got, rates = tap.pcm_of(audio_index)
        reference = reference_decode(codec, sent[audio_index])
        assert rates == {RATES[codec]}
        # Everything sent, decoded exactly as a decoder of its own decodes it.
        assert len(got) >= len(reference)
        assert np.array_equal(got[:len(reference)], reference), f"{codec} {role}: PCM differs"
        assert not got[len(reference):].any()       # only silence after it (the end)
        # And transcribed: the words of that audio, at the rate fed.
        fed = reference
        if RATES[codec] != FEED_RATE:
            # Resampled as the window resamples it: the same pieces, in turn
            # (a streaming resampler's last bit depends on where pieces end).
            converter = RateConverter(FEED_RATE)
            pieces = [p for position, samples, rate in tap.chunks[audio_index]
                      for _, p in converter.convert(position, samples, rate)]
            pieces += [p for _, p in converter.flush()]
            fed = np.concatenate(pieces)
        expected = await recognise_at(backend, fed, FEED_RATE)
        words = words_of(found, role)
        assert words, f"nothing transcribed on the {role}'s {codec} stream"
        same = difflib.SequenceMatcher(a=[w[0] for w in expected], b=[w[0] for w in words])
        print(f"{codec} {role}: {len(reference)} samples at {RATES[codec]} Hz equal to the "
              f"reference decode; {len(words)} words stored, {same.ratio():.0%} the same as "
              f"that audio recognised directly")
        if RATES[codec] == FEED_RATE:
            # Fed unchanged: the very words, at the very times.
            assert [w[0] for w in words] == [w[0] for w in expected]
            assert time_difference(expected, words) <= MAX_TIME_DIFFERENCE_MS
        else:
            # Resampled in pieces whose ends depend on packet timing (the
            # last bit of a sample may differ), and this model flips words
            # on the slightest change of input: most words must be the same.
            assert same.ratio() >= 0.8
