"""WAV files in and out of the simulator, as 8 kHz mono int16 numpy arrays.

The telephone codecs carry 8 kHz mono audio, so that is what the simulator
streams. Files in other shapes are converted, simply and predictably:

- 8-, 16-, 24- and 32-bit integer PCM become 16-bit (the top 16 bits);
- several channels are averaged into one;
- another sample rate is resampled to 8 kHz: a windowed-sinc low-pass
  filter at 3.6 kHz (so nothing above the telephone band folds back),
  then linear interpolation onto the 8 kHz grid. Good enough to check a
  deployment; for sample-exact comparisons give 8 kHz files.

Floating-point and compressed WAVs are refused with a message saying how
to convert them (``sox in.wav -r 8000 -c 1 -b 16 out.wav``).
"""

import wave
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_RATE", "WavError", "read_wav", "write_wav", "tone", "resample"]

SAMPLE_RATE = 8000
_CUTOFF_HZ = 3600.0
_CONVERT_HINT = "convert it first, e.g. `sox IN.wav -r 8000 -c 1 -b 16 OUT.wav`"


class WavError(ValueError):
    """A WAV file that cannot be used; the message names the file and why."""


def read_wav(path):
    """The audio of *path* as 8 kHz mono int16 samples (see the module doc)."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        # wave.Error covers float (format 3) and compressed files too.
        raise WavError(f"{path}: not a PCM WAV file this tool reads ({e}); {_CONVERT_HINT}") from None
    if channels < 1 or rate < 1:
        raise WavError(f"{path}: bad header ({channels} channels at {rate} Hz)")
    samples = _to_int16(frames, width, path)
    usable = len(samples) - len(samples) % channels
    samples = samples[:usable].reshape(-1, channels)
    if channels > 1:
        samples = np.round(samples.astype(np.float64).mean(axis=1)).astype(np.int16)
    else:
        samples = samples[:, 0]
    if rate != SAMPLE_RATE:
        samples = resample(samples, rate)
    return np.ascontiguousarray(samples, dtype=np.int16)


def _to_int16(frames, width, path):
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        return ((raw.astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 2:
        return np.frombuffer(frames, dtype="<i2").copy()
    if width in (3, 4):
        usable = len(raw) - len(raw) % width
        # Little-endian: the two most significant bytes are the last two.
        top = raw[:usable].reshape(-1, width)[:, width - 2:]
        return top.copy().view("<i2").reshape(-1)
    raise WavError(f"{path}: {8 * width}-bit samples are not supported; {_CONVERT_HINT}")


def _lowpass(rate, cutoff, taps=101):
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff / rate * n) * np.hamming(taps)
    return h / h.sum()


def resample(samples, rate):
    """*samples* at *rate* Hz resampled to 8 kHz (int16 in, int16 out)."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int16)
    if rate > SAMPLE_RATE:
        x = np.convolve(x, _lowpass(rate, _CUTOFF_HZ), mode="same")
    count = int(len(x) * SAMPLE_RATE // rate)
    positions = np.arange(count) * (rate / SAMPLE_RATE)
    y = np.interp(positions, np.arange(len(x)), x)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def write_wav(path, samples, rate=SAMPLE_RATE):
    """Write int16 mono *samples* to *path* as a 16-bit PCM WAV."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {samples.dtype}")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return Path(path)


def tone(seconds, frequencies=(440.0,), level=0.3, rate=SAMPLE_RATE, on=0.4, off=0.1):
    """A test signal: tone bursts (*on* seconds each, *off* seconds apart)
    cycling through *frequencies*, at *level* of full scale."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    period = on + off
    burst = (t // period).astype(np.int64)
    f = np.asarray(frequencies, dtype=np.float64)[burst % len(frequencies)]
    audible = (t % period) < on
    signal = np.sin(2 * np.pi * f * t) * audible * level * 32767
    return np.round(signal).astype(np.int16)
