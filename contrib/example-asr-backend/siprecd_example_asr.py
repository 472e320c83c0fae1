"""An example third-party ASR backend for siprecd: ``asr.backend: energy``.

It recognises no words: each stretch of speech, found by its energy,
becomes one utterance whose text is ``[speech]``. That is enough to see
where people talk in a call before a real model is installed, and small
enough to read as a template for a real backend.

What a backend must do (``siprecd.interfaces``): an IASRBackend with
``name``, ``ready``, ``start()``, ``languages()``, ``new_recognizer()``,
``stop()``; each recogniser an IRecognizer whose ``accept(pcm)`` and
``finish()`` return Deferreds firing with lists of
``siprecd.asr.results.AsrResult``, times in seconds from the stream's
first sample. The work here is a few numpy operations per chunk, so it
runs on the reactor thread; a real engine must not block the reactor:
run it on a thread pool as ``siprecd.asr.vosk`` does, or in another
process as ``siprecd.asr.remote`` does.
"""

import numpy as np
from twisted.internet import defer
from zope.interface import implementer

from siprecd.asr.common import OneCallAtATime, normalise_language
from siprecd.asr.results import AsrResult, Word
from siprecd.interfaces import IASRBackend, IRecognizer

__all__ = ["EnergyBackend", "EnergyRecognizer"]

FRAME_SECONDS = 0.02


@implementer(IASRBackend)
class EnergyBackend:
    name = "energy"

    def __init__(self, languages=("en-us",), endpoint_silence=0.5, level_dbfs=-40.0):
        self._languages = sorted({normalise_language(tag) for tag in languages})
        self.endpoint_silence = endpoint_silence
        self.level_dbfs = level_dbfs
        self.ready = False

    @classmethod
    def from_config(cls, config, reactor):
        """The entry point's object: siprecd calls it with its Config."""
        return cls(config.asr.models.keys(), config.asr.endpoint_silence)

    def start(self):
        self.ready = True
        return defer.succeed(None)

    def languages(self):
        return list(self._languages)

    def new_recognizer(self, language, sample_rate=8000):
        if normalise_language(language) not in self._languages:
            raise ValueError(f"no language {language!r}")
        return EnergyRecognizer(sample_rate, self.endpoint_silence, self.level_dbfs)

    def stop(self):
        self.ready = False


@implementer(IRecognizer)
class EnergyRecognizer(OneCallAtATime):
    def __init__(self, sample_rate, endpoint_silence, level_dbfs):
        self.frame = int(sample_rate * FRAME_SECONDS)
        self.endpoint_frames = max(1, round(endpoint_silence / FRAME_SECONDS))
        self.level = 32768 * 10 ** (level_dbfs / 20)
        self.leftover = np.zeros(0, dtype=np.int16)
        self.frames = 0          # frames seen so far
        self.speech_start = None  # first loud frame of the open utterance
        self.last_loud = None

    def accept(self, pcm):
        return self._call(lambda: defer.succeed(self._accept(pcm)))

    def finish(self):
        return self._call(lambda: defer.succeed(self._utterance()))

    def _accept(self, pcm):
        samples = np.concatenate([self.leftover, np.frombuffer(pcm, dtype="<i2")])
        whole = len(samples) - len(samples) % self.frame
        self.leftover = samples[whole:].copy()
        frames = samples[:whole].reshape(-1, self.frame).astype(np.float64)
        results = []
        for rms in np.sqrt((frames ** 2).mean(axis=1)):
            if rms >= self.level:
                if self.speech_start is None:
                    self.speech_start = self.frames
                self.last_loud = self.frames
            elif (self.speech_start is not None
                  and self.frames - self.last_loud >= self.endpoint_frames):
                results += self._utterance()
            self.frames += 1
        return results

    def _utterance(self):
        if self.speech_start is None:
            return []
        start = self.speech_start * FRAME_SECONDS
        end = (self.last_loud + 1) * FRAME_SECONDS
        self.speech_start = self.last_loud = None
        return [AsrResult("[speech]", [Word("[speech]", start, end, 1.0)])]
