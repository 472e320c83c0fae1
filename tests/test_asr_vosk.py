"""The local Vosk backend with a real model (Korean, dither off): where
models are looked for, what a missing one says, the downloader, the
thread pool, and recognition equal to bare Vosk."""

import threading

import numpy as np
import pytest
import pytest_twisted
import vosk
from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from harness.daemon import free_port
from siprecd import config as configmod
from siprecd.asr import AsrService
from siprecd.asr import vosk as vosk_backend
from siprecd.asr.common import AsrNotReady, RecognizerBusy, RecognizerClosed
from siprecd.asr.results import from_vosk_json
from siprecd.asr.vosk import ModelNotFound, ModelUnusable, VoskBackend
from siprecd.interfaces import IRecognizer
from siprecd.service import Readiness
from siprecd.structure import ConfigError
from siprecd.testing.asr import assert_same_recognition, feed, ko_model_dir, korean_speech

SILENCE = np.zeros(8000, dtype=np.int16)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    first = korean_speech("안녕하세요 저는 학생입니다. 오늘 날씨가 좋네요", folder / "1.wav")
    second = korean_speech("감사합니다 내일 만나요", folder / "2.wav")
    return first, second


@pytest_twisted.async_yield_fixture(scope="module")
async def backend():
    b = VoskBackend(reactor, {"KO": str(ko_model_dir())}, "/nonexistent", threads=2)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="module")
def bare_model():
    return vosk.Model(str(ko_model_dir()))


def bare_vosk(model, samples, chunk=1600, finish=True):
    """What Vosk itself gives for the same audio in the same chunks."""
    recognizer = vosk.KaldiRecognizer(model, 8000)
    recognizer.SetWords(True)
    pcm = samples.astype("<i2").tobytes()
    results = []
    for i in range(0, len(pcm), 2 * chunk):
        if recognizer.AcceptWaveform(pcm[i:i + 2 * chunk]):
            results += from_vosk_json(recognizer.Result())
    if finish:
        results += from_vosk_json(recognizer.FinalResult())
    return results


# Where models are ---------------------------------------------------------------


def test_models_are_looked_for_by_name_in_models_dir_or_by_path(tmp_path):
    backend = VoskBackend(reactor, {
        "en-US": "vosk-model-small-en-us-0.15",
        "es-us": "es/vosk-model-small-es-0.42",
        "ko": "/opt/models/ko",
        "fr_FR": "~/fr",
    }, tmp_path, threads=1)
    assert backend.languages() == ["en-us", "es-us", "fr-fr", "ko"]
    assert backend.model_path("en-us") == tmp_path / "vosk-model-small-en-us-0.15"
    assert backend.model_path("ES-US") == tmp_path / "es" / "vosk-model-small-es-0.42"
    assert str(backend.model_path("ko")) == "/opt/models/ko"
    assert not str(backend.model_path("fr-fr")).startswith("~")
    assert backend.describe().startswith(
        f"loading Vosk models: en-us from {tmp_path}/vosk-model-small-en-us-0.15, ")


def test_two_spellings_of_one_language_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^asr.models.en-us: 'en-US' and 'en-us' name the "
                                          r"same language; keep one$"):
        VoskBackend(reactor, {"en-US": "a", "en-us": "b"}, tmp_path)


@pytest_twisted.ensureDeferred
async def test_a_missing_model_is_one_line_naming_the_path_the_key_and_both_fixes(tmp_path):
    backend = VoskBackend(reactor, {"en-US": "vosk-model-small-en-us-0.15"}, tmp_path)
    with pytest.raises(ModelNotFound) as caught:
        await backend.start()
    await backend.stop()
    message = str(caught.value)
    assert caught.value.key_path == "asr.models.en-US"
    assert message == (
        f"asr.models.en-US: no Vosk model at {tmp_path}/vosk-model-small-en-us-0.15; "
        f"place the unpacked model folder there (from "
        f"https://alphacephei.com/vosk/models/vosk-model-small-en-us-0.15.zip), or set "
        f"asr.download: true so siprecd fetches it into {tmp_path} at start")
    assert "\n" not in message and not backend.ready


@pytest_twisted.ensureDeferred
async def test_a_missing_model_given_by_path_says_download_needs_a_name(tmp_path):
    backend = VoskBackend(reactor, {"ko": str(tmp_path / "models" / "ko")}, tmp_path,
                          download=True)
    with pytest.raises(ModelNotFound, match=(
            rf"^asr.models.ko: no Vosk model at {tmp_path}/models/ko; place an unpacked Vosk "
            r"model folder there \(models: https://alphacephei.com/vosk/models\), or name a "
            r"model \(e.g. vosk-model-small-en-us-0.15\) with asr.download: true")):
        await backend.start()
    await backend.stop()


@pytest_twisted.ensureDeferred
async def test_a_folder_vosk_cannot_load_is_reported_as_such(tmp_path):
    (tmp_path / "broken").mkdir()
    backend = VoskBackend(reactor, {"ko": "broken"}, tmp_path)
    with pytest.raises(ModelUnusable, match=(
            rf"^asr.models.ko: Vosk cannot load {tmp_path}/broken as a model \(it has no "
            r"am/final.mdl, conf/mfcc.conf, ")):
        await backend.start()
    await backend.stop()


@pytest_twisted.ensureDeferred
async def test_the_daemon_stays_up_and_unready_saying_which_model_is_missing(tmp_path):
    """The default configuration on a machine that cannot reach the model
    host: the fetch is tried, then one line says what to place where."""
    closed = free_port()  # nothing listens there
    events = []
    globalLogPublisher.addObserver(events.append)
    readiness = Readiness()
    settled = []
    readiness.when_settled(lambda: settled.append(True))
    config = configmod.from_dict({"state_dir": str(tmp_path), "asr": {
        "download_url": f"http://127.0.0.1:{closed}/vosk/"}})
    asr = AsrService.from_config(config, reactor, readiness)
    try:
        asr.startService()
        assert readiness.pending()["asr"] == (
            "loading Vosk models: en-us: fetching vosk-model-small-en-us-0.15 from "
            f"http://127.0.0.1:{closed}/vosk/")
        await asr.starting
    finally:
        globalLogPublisher.removeObserver(events.append)
    path = tmp_path / "models" / "vosk-model-small-en-us-0.15"
    reason = (f"asr.models.en-us: no Vosk model at {path} and fetching it failed: cannot read "
              f"http://127.0.0.1:{closed}/vosk/model-list.json: Connection refused; place the "
              f"unpacked model folder there (from http://127.0.0.1:{closed}/vosk/"
              f"vosk-model-small-en-us-0.15.zip), then restart siprecd")
    assert readiness.pending() == {"asr": f"speech recognition unavailable: {reason}"}
    assert readiness.details()["languages"] == {
        "en-us": {"state": "unavailable", "detail": reason}}
    assert settled == [True]  # nothing more will come of waiting
    critical = [formatEvent(e) for e in events if e.get("log_level") >= LogLevel.warn]
    assert critical == [f"asr: the vosk backend could not start: {reason} -- this node "
                        "refuses calls (503) until that is fixed and siprecd restarted"]
    await asr.stopService()


# Recognition ---------------------------------------------------------------------


def test_languages_are_case_insensitive_and_unknown_ones_refused(backend):
    assert backend.ready and backend.languages() == ["ko"]
    verifyObject(IRecognizer, backend.new_recognizer("Ko"))
    with pytest.raises(ValueError, match=r"no Vosk model for language 'en-US' \(configured: ko\)"):
        backend.new_recognizer("en-US")


def test_a_recognizer_before_the_models_are_loaded_is_refused(tmp_path):
    with pytest.raises(AsrNotReady):
        VoskBackend(reactor, {"ko": "x"}, tmp_path).new_recognizer("ko")


@pytest.mark.parametrize("chunk", [160, 1600, 8000])
@pytest_twisted.ensureDeferred
async def test_results_equal_bare_vosk_on_the_same_audio_and_chunks(
        backend, bare_model, speech, chunk):
    first, second = speech
    audio = np.concatenate([SILENCE, first, SILENCE, SILENCE, second, SILENCE])
    recognizer = backend.new_recognizer("ko")
    results = await feed(recognizer, audio, chunk=chunk)
    recognizer.close()
    expected = await defer.maybeDeferred(
        backend._run, bare_vosk, bare_model, audio, chunk)
    # The recogniser may be a spare another test used (see
    # assert_same_recognition).
    assert_same_recognition(results, expected)
    assert len([w for r in results for w in r.words]) >= 6


@pytest_twisted.ensureDeferred
async def test_vosk_runs_on_the_pool_threads_never_on_the_reactor_thread(
        backend, speech, monkeypatch):
    threads_seen = set()

    class Watched(vosk.KaldiRecognizer):
        def __init__(self, *args):
            threads_seen.add(threading.current_thread().name)
            super().__init__(*args)

        def AcceptWaveform(self, data):
            threads_seen.add(threading.current_thread().name)
            return super().AcceptWaveform(data)

        def FinalResult(self):
            threads_seen.add(threading.current_thread().name)
            return super().FinalResult()

    monkeypatch.setattr(vosk_backend.vosk, "KaldiRecognizer", Watched)
    # A backend of its own: one with spares could hand over a recogniser
    # made before the watch began.
    fresh = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/", threads=2)
    await fresh.start()
    try:
        recognizer = fresh.new_recognizer("ko")
        await feed(recognizer, speech[1], chunk=4000)
        assert threads_seen and all(name.startswith("PoolThread-siprecd-asr")
                                    for name in threads_seen)
        assert fresh.pool.max == 2
    finally:
        await fresh.stop()


@pytest_twisted.ensureDeferred
async def test_one_call_at_a_time_and_close_waits_for_the_call_in_flight(backend, speech):
    recognizer = backend.new_recognizer("ko")
    pcm = speech[0].tobytes()
    in_flight = recognizer.accept(pcm)
    with pytest.raises(RecognizerBusy, match="already has a call in flight"):
        recognizer.accept(pcm)
    with pytest.raises(RecognizerBusy):
        recognizer.finish()
    recognizer.close()
    assert await in_flight == []
    assert recognizer._kaldi is None
    with pytest.raises(RecognizerClosed):
        recognizer.accept(pcm)


@pytest_twisted.ensureDeferred
async def test_times_run_on_across_finish_and_finish_without_audio_is_empty(backend, speech):
    first, second = speech
    recognizer = backend.new_recognizer("ko")
    assert await recognizer.finish() == []
    one = await feed(recognizer, np.concatenate([SILENCE, first]))
    two = await feed(recognizer, np.concatenate([SILENCE, second]))
    assert await recognizer.finish() == []
    offset = (len(first) + 2 * len(SILENCE)) / 8000
    assert one and two
    assert 1.0 <= one[0].start and one[-1].end <= offset - 1.0 + 0.05
    assert offset <= two[0].start and two[-1].end <= offset + len(second) / 8000 + 0.05
    # The second utterance is recognised as by a fresh recogniser, shifted.
    fresh = backend.new_recognizer("ko")
    alone = await feed(fresh, np.concatenate([SILENCE, second]))
    assert [w.word for r in two for w in r.words] == [w.word for r in alone for w in r.words]
    assert [w.start for r in two for w in r.words] == pytest.approx(
        [w.start + offset - 1.0 for r in alone for w in r.words], abs=0.011)


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_work_in_flight_then_frees_the_pool(speech):
    backend = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/", threads=1)
    await backend.start()
    recognizer = backend.new_recognizer("ko")
    in_flight = recognizer.accept(speech[0].tobytes())
    stopping = backend.stop()
    assert not backend.ready
    await stopping
    assert in_flight.called and backend.pool is None
    with pytest.raises(AsrNotReady):
        await recognizer.finish()
