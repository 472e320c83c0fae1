"""A speech-like signal to measure what a model costs before any call does.

At start-up siprecd has no audio of its own to recognise, yet admission
(``siprecd.transcribe.admission``) wants a figure for what a recogniser
costs on this machine with this model. :func:`speechlike` makes one:
voiced "syllables" (harmonics of a wandering pitch, shaped by two
formants that move from syllable to syllable) at a speaking rate, with
short pauses, at the level of telephone speech. It keeps a decoder about
as busy as speech does, though somewhat less (no words to find), hence
the margin the Vosk backend puts on the figure it measures.

Deterministic: the same arguments give the same samples.
"""

import numpy as np

__all__ = ["speechlike"]

SYLLABLE = 0.2          # seconds
PAUSE_EVERY = 8         # syllables
PAUSE = 0.4             # seconds


def speechlike(seconds, rate=8000, seed=1):
    """*seconds* of speech-like audio at *rate*, as int16 samples."""
    rng = np.random.default_rng(seed)
    count = int(round(seconds * rate))
    t = np.arange(count) / rate
    pitch = 130.0 + 30.0 * np.sin(2 * np.pi * 0.6 * t) + 10.0 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    syllable = int(SYLLABLE * rate)
    first = np.repeat(rng.uniform(300, 800, count // syllable + 1), syllable)[:count]
    second = np.repeat(rng.uniform(900, 2400, count // syllable + 1), syllable)[:count]
    signal = np.zeros(count)
    for k in range(1, int(3400 / 100)):
        frequency = k * pitch
        # Each harmonic as loud as the two formants make it there.
        weight = (np.exp(-((frequency - first) / 150.0) ** 2)
                  + 0.5 * np.exp(-((frequency - second) / 200.0) ** 2) + 0.02)
        signal += weight * np.sin(k * phase) * (frequency < rate / 2 - 200)
    within = (np.arange(count) % syllable) / syllable
    envelope = np.sin(np.pi * within) ** 0.5
    pause = int(PAUSE * rate)
    cycle = PAUSE_EVERY * syllable + pause
    envelope[(np.arange(count) % cycle) >= PAUSE_EVERY * syllable] = 0.0
    signal *= envelope
    signal += rng.normal(0.0, 0.003, count)          # a line's noise floor
    peak = np.abs(signal).max() or 1.0
    return (signal / peak * 12000).astype(np.int16)
