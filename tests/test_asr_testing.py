"""The ASR test helpers: the dither-free Korean model, espeak-ng speech,
and the fast test double (verified against the real interfaces)."""

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import task
from zope.interface.verify import verifyObject

from siprecd.asr.common import AsrNotReady, RecognizerBusy, RecognizerClosed
from siprecd.interfaces import IASRBackend, IRecognizer
from siprecd.simulator.wav import SAMPLE_RATE, tone
from siprecd.testing.asr import (
    FakeAsrBackend, FakeRecognizer, feed, ko_model_dir, ko_model_source, korean_speech,
)

SILENCE = np.zeros(SAMPLE_RATE, dtype=np.int16)


def test_the_korean_model_copy_has_dithering_off_and_is_made_once():
    model = ko_model_dir()
    assert model == ko_model_dir()
    assert (model / "conf" / "mfcc.conf").read_text().splitlines()[-1] == "--dither=0.0"
    assert "dither" not in (ko_model_source() / "conf" / "mfcc.conf").read_text()
    assert (model / "am").is_symlink() and (model / "graph" / "HCLr.fst").is_file()


def test_korean_speech_is_8khz_int16(tmp_path):
    samples = korean_speech("안녕하세요", tmp_path / "hello.wav")
    assert samples.dtype == np.int16
    assert 0.5 < len(samples) / SAMPLE_RATE < 3
    assert np.abs(samples).max() > 3000


def test_the_doubles_implement_the_interfaces():
    backend = FakeAsrBackend(languages=("en-US", "es-us"))
    verifyObject(IASRBackend, backend)
    with pytest.raises(AsrNotReady):
        backend.new_recognizer("en-us")
    backend.start()
    assert backend.ready and backend.languages() == ["en-us", "es-us"]
    verifyObject(IRecognizer, backend.new_recognizer("EN-us"))
    with pytest.raises(ValueError, match="fr-fr"):
        backend.new_recognizer("fr-fr")


@pytest_twisted.ensureDeferred
async def test_the_double_makes_a_word_of_each_loud_stretch_and_ends_at_silence():
    recognizer = FakeRecognizer(words=["one", "two", "three"])
    audio = np.concatenate([SILENCE[:800], tone(0.3), SILENCE[:1600], tone(0.2),
                            SILENCE, tone(0.3), SILENCE[:400]])
    results = await feed(recognizer, audio, chunk=160, finish=False)
    [first] = results
    assert first.text == "one two"
    assert [(w.start, w.end) for w in first.words] == [(0.1, 0.4), (0.6, 0.8)]
    [last] = await recognizer.finish()
    assert last.text == "three" and last.words[0].start == 1.8
    assert bytes(recognizer.fed) == audio.tobytes()
    assert recognizer.calls[-1] == ("finish", None)
    assert await recognizer.finish() == []


@pytest_twisted.ensureDeferred
async def test_the_double_answers_late_on_a_clock_and_takes_one_call_at_a_time():
    clock = task.Clock()
    recognizer = FakeRecognizer(clock=clock, latency=0.05)
    d = recognizer.accept(tone(0.2).tobytes())
    with pytest.raises(RecognizerBusy):
        recognizer.accept(b"\0\0")
    assert not d.called
    clock.advance(0.05)
    assert d.called
    recognizer.close()
    assert recognizer.closed
    with pytest.raises(RecognizerClosed):
        recognizer.accept(b"\0\0")


def test_the_double_backend_can_hold_or_fail_its_start():
    held = FakeAsrBackend(hold_start=True)
    d = held.start()
    assert not d.called and not held.ready
    held.starting.callback(None)
    assert held.ready
    failing = FakeAsrBackend(start_error=RuntimeError("no model"))
    failures = []
    failing.start().addErrback(failures.append)
    assert failures[0].getErrorMessage() == "no model"
    held.new_recognizer("en-us")
    held.stop()
    assert held.stopped and held.recognizers[0].closed
