"""The ASR backend contract: the same tests against every backend.

``vosk`` runs the dither-free Korean model in this process; ``remote``
talks to ``contrib/vosk-server/asr_server.py`` running the same model in
a real subprocess on loopback. A new backend joins by adding a case to
``BACKENDS``.
"""

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from harness.asr_server import AsrServerProcess
from siprecd.asr.common import AsrNotReady, RecognizerBusy, RecognizerClosed
from siprecd.asr.remote import RemoteBackend
from siprecd.asr.results import AsrResult, Word
from siprecd.asr.vosk import VoskBackend
from siprecd.interfaces import IASRBackend, IPartialResults, IRecognizer
from siprecd.testing.asr import assert_same_recognition, feed, ko_model_dir, korean_speech

SILENCE = np.zeros(8000, dtype=np.int16)


def vosk_backend():
    return VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/nonexistent", threads=2), None


def remote_backend():
    server = AsrServerProcess(ko_model_dir(), threads=2).start()
    return RemoteBackend(reactor, [server.url], ["KO"], connect_timeout=5.0), server


BACKENDS = {"vosk": vosk_backend, "remote": remote_backend}


@pytest_twisted.async_yield_fixture(scope="module", params=sorted(BACKENDS))
async def backend(request):
    made, server = BACKENDS[request.param]()
    try:
        verifyObject(IASRBackend, made)
        assert not made.ready
        with pytest.raises(AsrNotReady):
            made.new_recognizer("ko")
        await made.start()
        yield made
        await made.stop()
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return (korean_speech("안녕하세요 저는 학생입니다. 오늘 날씨가 좋네요", folder / "1.wav"),
            korean_speech("감사합니다 내일 만나요", folder / "2.wav"))


def words_of(results):
    return [w for r in results for w in r.words]


def test_it_is_ready_with_its_languages(backend):
    assert backend.ready and backend.name in BACKENDS
    assert backend.languages() == ["ko"]


def test_recognizers_implement_the_interface_and_unknown_languages_are_refused(backend):
    recognizer = backend.new_recognizer("KO", sample_rate=8000)
    verifyObject(IRecognizer, recognizer)
    recognizer.close()
    with pytest.raises(ValueError, match="'xx-yy'"):
        backend.new_recognizer("xx-yy")


@pytest_twisted.ensureDeferred
async def test_speech_gives_final_results_with_timed_words(backend, speech):
    first, _ = speech
    recognizer = backend.new_recognizer("ko")
    results = await feed(recognizer, np.concatenate([SILENCE, first, SILENCE]))
    recognizer.close()
    assert results and all(isinstance(r, AsrResult) and r.final for r in results)
    words = words_of(results)
    assert len(words) >= 4 and all(isinstance(w, Word) for w in words)
    for result in results:
        assert result.text == " ".join(w.word for w in result.words)
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(w.start < w.end and 0 <= w.conf <= 1 for w in words)
    assert 0.9 <= words[0].start and words[-1].end <= 1 + len(first) / 8000 + 0.05


@pytest_twisted.ensureDeferred
async def test_interim_results_grow_while_speaking_and_end_with_the_final(backend, speech):
    first, _ = speech
    recognizer = backend.new_recognizer("ko")
    verifyObject(IPartialResults, recognizer)
    pcm = np.concatenate([SILENCE, first, SILENCE]).astype("<i2").tobytes()
    partials, finals = [], []
    for i in range(0, len(pcm), 3200):
        results = await recognizer.accept_partial(pcm[i:i + 3200])
        # Always one interim result, last.
        assert results and not results[-1].final and all(r.final for r in results[:-1])
        partials.append(results[-1])
        finals += results[:-1]
    finals += await recognizer.finish()
    recognizer.close()
    heard = [p for p in partials if p.text]
    assert heard, "no interim result had words"
    final_words = " ".join(w.word for w in words_of(finals)).split()
    # Interim words are timed like final ones when the backend times them
    # (the local one with partial_word_times; vosk-server sends partial text
    # only) and are words the final has.
    assert all(not p.words or p.words[0].start >= 0.9 for p in heard)
    if getattr(backend, "partial_word_times", False):
        assert all(p.words for p in heard)
    else:
        assert not any(p.words for p in heard)
    assert set(heard[-1].text.split()) & set(final_words)
    # Without asking, accept() gives finished results only.
    again = backend.new_recognizer("ko")
    plain = await feed(again, np.concatenate([SILENCE, first, SILENCE]), chunk=1600)
    again.close()
    assert all(r.final for r in plain)


@pytest_twisted.ensureDeferred
async def test_nothing_said_gives_nothing(backend):
    recognizer = backend.new_recognizer("ko")
    assert await recognizer.finish() == []
    assert await recognizer.accept(b"") == []
    assert await feed(recognizer, np.zeros(16000, dtype=np.int16)) == []
    assert await recognizer.finish() == []
    recognizer.close()


@pytest_twisted.ensureDeferred
async def test_times_stay_on_the_stream_timeline_across_finish(backend, speech):
    first, second = speech
    recognizer = backend.new_recognizer("ko")
    one = await feed(recognizer, np.concatenate([SILENCE, first]))
    two = await feed(recognizer, np.concatenate([SILENCE, second]))
    recognizer.close()
    offset = (len(SILENCE) * 2 + len(first)) / 8000
    assert words_of(one)[-1].end <= offset - 1 + 0.05
    end = offset + len(second) / 8000 + 0.05
    assert offset <= words_of(two)[0].start <= words_of(two)[-1].end <= end


@pytest_twisted.ensureDeferred
async def test_one_call_in_flight_and_no_calls_after_close(backend, speech):
    recognizer = backend.new_recognizer("ko")
    in_flight = recognizer.accept(speech[1].tobytes())
    with pytest.raises(RecognizerBusy):
        recognizer.accept(b"\0\0" * 160)
    with pytest.raises(RecognizerBusy):
        recognizer.finish()
    await in_flight
    await recognizer.finish()
    recognizer.close()
    recognizer.close()
    with pytest.raises(RecognizerClosed):
        recognizer.accept(b"\0\0")


@pytest_twisted.ensureDeferred
async def test_streams_recognised_at_once_do_not_disturb_each_other(backend, speech):
    first, second = speech
    audios = [np.concatenate([SILENCE, first]), np.concatenate([SILENCE, second]),
              np.concatenate([SILENCE, first])]
    alone = []
    for audio in audios:
        recognizer = backend.new_recognizer("ko")
        alone.append(await feed(recognizer, audio))
        recognizer.close()
    recognizers = [backend.new_recognizer("ko") for _ in audios]
    together = await defer.gatherResults([
        defer.ensureDeferred(feed(r, a)) for r, a in zip(recognizers, audios)])
    for r in recognizers:
        r.close()
    for got, expected in zip(together, alone):
        assert_same_recognition(got, expected)
    assert_same_recognition(alone[0], alone[2])


@pytest_twisted.ensureDeferred
async def test_the_local_backend_times_interim_words_when_asked(speech):
    first, _ = speech
    timed = VoskBackend(reactor, {"ko": str(ko_model_dir())}, "/nonexistent", threads=1,
                        partial_word_times=True)
    await timed.start()
    try:
        recognizer = timed.new_recognizer("ko")
        pcm = np.concatenate([SILENCE, first, SILENCE]).astype("<i2").tobytes()
        heard = []
        for i in range(0, len(pcm), 3200):
            results = await recognizer.accept_partial(pcm[i:i + 3200])
            heard += [r for r in results if not r.final and r.text]
        recognizer.close()
        assert heard and all(p.words and p.words[0].start >= 0.9 for p in heard)
    finally:
        await timed.stop()
