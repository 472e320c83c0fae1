"""Warm spare recognisers of the Vosk backend, with the real Korean model:
made ahead of the streams (asr.warm_spares, after the cost probe, whose
recogniser becomes a spare too), replaced when a stream takes one, not
counted as recognition cost, and giving the very words and times a new
recogniser gives."""

import numpy as np
import pytest
import pytest_twisted
import vosk
from twisted.internet import reactor

from harness.waiting import until
from siprecd import config as configmod
from siprecd.asr.results import from_vosk_json
from siprecd.asr.vosk import VoskBackend
from siprecd.testing.asr import feed, ko_model_dir, korean_speech

SILENCE = np.zeros(4000, dtype=np.int16)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    said = korean_speech("안녕하세요 저는 학생입니다. 오늘 날씨가 좋네요", folder / "1.wav")
    return np.concatenate([SILENCE, said, SILENCE])


def test_spares_are_warmed_by_default_in_the_configuration():
    assert configmod.Asr().warm_spares is True


def bare_vosk_words(speech):
    """Words and times a new recogniser gives for *speech* in 1,600-sample chunks."""
    bare = vosk.KaldiRecognizer(vosk.Model(str(ko_model_dir())), 8000)
    bare.SetWords(True)
    pcm = speech.astype("<i2").tobytes()
    results = []
    for i in range(0, len(pcm), 3200):
        if bare.AcceptWaveform(pcm[i:i + 3200]):
            results += from_vosk_json(bare.Result())
    results += from_vosk_json(bare.FinalResult())
    return words_of(results)


def words_of(results):
    return [(w.word, round(w.start, 2), round(w.end, 2)) for r in results for w in r.words]


@pytest_twisted.ensureDeferred
async def test_spares_are_made_ahead_replaced_when_taken_and_give_a_new_ones_words(speech):
    expected = bare_vosk_words(speech)
    backend = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/", threads=1,
                          spare_recognizers=2, warm_spares=True, probe=True)
    await backend.start()
    try:
        await until(lambda: backend.spares("ko") == 2, 120, what="two warm spares")
        # The probe ran first, on a warmed recogniser that became a spare;
        # one more was warmed. Its figure: processor seconds per audio
        # second, below real time on one processor (Korean model: ~0.23).
        assert backend.costs.seeded("ko") and 0.02 < backend.cost("ko") < 1.0
        assert backend.warmed == 1
        # Neither the probe nor warming is recognition: nothing was learnt.
        assert backend.costs.measured("ko") == 0.0
        recognizer = backend.new_recognizer("ko")
        got = await feed(recognizer, speech, chunk=1600)
        # A warmed recogniser hears what a new one hears, at the same times.
        assert expected and words_of(got) == expected
        # The stream took a spare; another was warmed in its place.
        await until(lambda: backend.warmed == 2 and backend.spares("ko") == 2, 120,
                    what="the taken spare replaced")
        recognizer.close()
        assert backend.costs.measured("ko") == pytest.approx(len(speech) / 8000, abs=0.3)
    finally:
        await backend.stop()
    assert backend.spares("ko") == 0


@pytest_twisted.ensureDeferred
async def test_without_warm_spares_nothing_is_made_ahead():
    backend = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/", threads=1,
                          spare_recognizers=2)
    await backend.start()
    try:
        assert backend.spares("ko") == 0 and backend.warmed == 0 and not backend._warming
    finally:
        await backend.stop()

