"""What speech recognition costs on this machine, per language.

:class:`CostMeter` keeps, for each language (each model), the processor
seconds a recogniser spends per second of audio: learnt from every call
as it runs (the processor time of the thread that ran it, so waiting for
a processor does not count), seeded by a configured figure or by a probe
at start-up. New recognisers cost more than warm ones
(``siprecd.asr.vosk``); both are measured, as the node's streams get
both. Admission (``siprecd.transcribe.admission``) turns it into how
many streams this node keeps in real time.
"""

import threading
import time

__all__ = ["CostMeter", "thread_seconds"]


class CostMeter:
    """What recognition costs, per language: processor seconds per second
    of audio, learnt from every call as it runs.

    Until enough audio was measured the figure leans on a *seed* (a
    configured figure or a start-up probe, :meth:`seed`), weighted as
    ``PRIOR_SECONDS`` of audio; without a seed there is no figure until
    ``MIN_MEASURED`` seconds of audio were measured (the first seconds of
    a new recogniser alone would overstate it); measurements count less the older they are
    (half of their weight per ``HALF_LIFE`` seconds of audio recognised
    since), so the figure follows a change of machine load or of calls.
    Safe to use from the recogniser threads.
    """

    PRIOR_SECONDS = 30.0
    MIN_MEASURED = 20.0
    HALF_LIFE = 600.0

    def __init__(self, default=None):
        self._lock = threading.Lock()
        self._default = default
        self._seeds = {}
        self._cpu = {}
        self._audio = {}

    def seed(self, language, cost):
        """The figure for *language* before anything is measured."""
        with self._lock:
            self._seeds[language] = float(cost)

    def seeded(self, language):
        return language in self._seeds

    def add(self, language, audio_seconds, cpu_seconds):
        """One call: *audio_seconds* given (0 for a finish), *cpu_seconds* spent."""
        with self._lock:
            keep = 0.5 ** (audio_seconds / self.HALF_LIFE)
            self._cpu[language] = self._cpu.get(language, 0.0) * keep + cpu_seconds
            self._audio[language] = self._audio.get(language, 0.0) * keep + audio_seconds

    def cost(self, language):
        """Processor seconds per audio second for *language* (None when
        nothing is known: no seed and nothing measured)."""
        with self._lock:
            seed = self._seeds.get(language, self._default)
            cpu, audio = self._cpu.get(language, 0.0), self._audio.get(language, 0.0)
        if seed is None:
            return cpu / audio if audio >= self.MIN_MEASURED else None
        prior = self.PRIOR_SECONDS
        return (cpu + seed * prior) / (audio + prior)

    def measured(self, language):
        """Seconds of audio measured (with their decayed weight)."""
        with self._lock:
            return self._audio.get(language, 0.0)


def thread_seconds():
    """Processor time of the calling thread (what one recogniser call costs,
    however long it waited for a processor)."""
    return time.thread_time()
