"""Tests for siprecd.media.codecs.

G.711 is checked exhaustively against a reference written here sample by
sample from the decision values of ITU-T G.711 Tables 1a (A-law) and 2a
(µ-law), negative samples taken in one's complement as ITU-T G.191 does.
G.729 runs through the real libbcg729 (Debian libbcg729-0, installed in CI);
being lossy, it is held to signal-to-noise ratios measured with this
library and stated next to each bound.
"""

import shutil
import subprocess
import sys
import warnings
import wave

import numpy as np
import pytest

from siprecd.media import codecs
from siprecd.media.codecs import (
    G729_FRAME_SAMPLES,
    alaw_decode,
    alaw_encode,
    make_decoder,
    make_encoder,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))

needs_g729 = pytest.mark.skipif(
    not codecs.g729_available(), reason=f"libbcg729 missing: {codecs.G729_UNAVAILABLE_REASON}"
)
G729 = pytest.param("G729", marks=needs_g729)


# --- an independent G.711 reference -----------------------------------------
#
# Rows of the positive half of each table: (first value, last value, step,
# code of the first interval), in the law's own units: 14-bit samples for
# µ-law, 13-bit for A-law. An input in [first + k*step, first + (k+1)*step)
# gets interval k; the decoder answers the middle of the interval.

ULAW_ROWS = [  # G.711 Table 2a; codes count down as the value grows
    (0, 0, 1, 0xFF),
    (1, 30, 2, 0xFE),
    (31, 94, 4, 0xEF),
    (95, 222, 8, 0xDF),
    (223, 478, 16, 0xCF),
    (479, 990, 32, 0xBF),
    (991, 2014, 64, 0xAF),
    (2015, 4062, 128, 0x9F),
    (4063, 8158, 256, 0x8F),
]
ULAW_OVERLOAD = 0x80  # 8159 and above

ALAW_ROWS = [  # G.711 Table 1a, before the even bits are inverted
    (0, 31, 2, 0x00),
    (32, 63, 2, 0x10),
    (64, 127, 4, 0x20),
    (128, 255, 8, 0x30),
    (256, 511, 16, 0x40),
    (512, 1023, 32, 0x50),
    (1024, 2047, 64, 0x60),
    (2048, 4095, 128, 0x70),
]


def sign_and_magnitude(sample, bits):
    """*sample* (int16) cut to its top *bits* bits; negatives in one's complement."""
    value = sample >> (16 - bits)
    return (value >= 0), (value if value >= 0 else -value - 1)


def reference_ulaw_encode(sample):
    positive, magnitude = sign_and_magnitude(sample, 14)
    code = ULAW_OVERLOAD
    for first, last, step, first_code in ULAW_ROWS:
        if first <= magnitude <= last:
            code = first_code - (magnitude - first) // step
            break
    return code if positive else code & 0x7F


def reference_ulaw_decode(code):
    for first, last, step, first_code in ULAW_ROWS:
        k = first_code - (code | 0x80)
        if 0 <= k < 16 and first + k * step <= last:
            value = (first + k * step + step // 2) * 4
            return value if code & 0x80 else -value
    raise AssertionError(f"no row for {code:#x}")


def reference_alaw_encode(sample):
    positive, magnitude = sign_and_magnitude(sample, 13)
    for first, last, step, first_code in ALAW_ROWS:
        if first <= magnitude <= last:
            code = first_code + (magnitude - first) // step
            break
    return (code | (0x80 if positive else 0)) ^ 0x55


def reference_alaw_decode(code):
    code ^= 0x55
    first, _last, step, first_code = ALAW_ROWS[(code >> 4) & 7]
    k = (code & 0x7F) - first_code
    value = (first + k * step + step // 2) * 8
    return value if code & 0x80 else -value


@pytest.fixture(scope="module")
def reference():
    samples = ALL_INT16.tolist()
    return {
        "ulaw_decode": [reference_ulaw_decode(c) for c in range(256)],
        "alaw_decode": [reference_alaw_decode(c) for c in range(256)],
        "ulaw_encode": bytes(reference_ulaw_encode(x) for x in samples),
        "alaw_encode": bytes(reference_alaw_encode(x) for x in samples),
    }


def test_reference_agrees_with_the_tables_printed_in_g711():
    # A few rows of the standard, to keep the reference itself honest.
    assert reference_alaw_decode(0xD5) == 8  # +1 in 13-bit units
    assert reference_alaw_decode(0xAA) == 4032 * 8
    assert reference_ulaw_decode(0xFF) == 0
    assert reference_ulaw_decode(0x80) == 8031 * 4
    assert reference_ulaw_decode(0xEF) == 33 * 4
    assert reference_ulaw_encode(31 * 4) == 0xEF  # 31 is a decision value
    assert reference_ulaw_encode(30 * 4) == 0xF0


# --- G.711: bit-exact -------------------------------------------------------


def test_ulaw_decodes_all_256_codes_exactly(reference):
    decoded = ulaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == reference["ulaw_decode"]


def test_alaw_decodes_all_256_codes_exactly(reference):
    decoded = alaw_decode(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == reference["alaw_decode"]


def test_ulaw_encodes_all_65536_samples_exactly(reference):
    encoded = ulaw_encode(ALL_INT16)
    mismatches = [x for x, a, b in zip(ALL_INT16.tolist(), encoded, reference["ulaw_encode"]) if a != b]
    assert not mismatches, f"{len(mismatches)} samples differ, first {mismatches[:5]}"


def test_alaw_encodes_all_65536_samples_exactly(reference):
    encoded = alaw_encode(ALL_INT16)
    mismatches = [x for x, a, b in zip(ALL_INT16.tolist(), encoded, reference["alaw_encode"]) if a != b]
    assert not mismatches, f"{len(mismatches)} samples differ, first {mismatches[:5]}"


def test_table_shapes():
    assert codecs.ULAW_DECODE_TABLE.shape == codecs.ALAW_DECODE_TABLE.shape == (256,)
    assert codecs.ULAW_ENCODE_TABLE.shape == codecs.ALAW_ENCODE_TABLE.shape == (65536,)
    assert codecs.ULAW_ENCODE_TABLE.dtype == codecs.ALAW_ENCODE_TABLE.dtype == np.uint8
    with pytest.raises(ValueError):
        codecs.ULAW_DECODE_TABLE[0] = 1  # shared by every stream: read-only


@pytest.mark.parametrize(
    "samples, ulaw, alaw",
    [
        ([0], "ff", "d5"),
        ([-1], "7f", "55"),  # minus zero
        ([32767, -32768], "8000", "aa2a"),  # overload
        ([4, 8, 16], "fefefd", "d5d5d4"),
        ([120, 124, 132, -128], "f0efef6f", "d2d2dd52"),
    ],
)
def test_known_encodings(samples, ulaw, alaw):
    pcm = np.array(samples, dtype=np.int16)
    assert ulaw_encode(pcm).hex() == ulaw
    assert alaw_encode(pcm).hex() == alaw


def test_known_decodings():
    assert ulaw_decode(bytes.fromhex("ff7f8000ef6f")).tolist() == [0, 0, 32124, -32124, 132, -132]
    assert alaw_decode(bytes.fromhex("d555aa2ad454")).tolist() == [8, -8, 32256, -32256, 24, -24]


@pytest.mark.parametrize(
    "decode, encode, sequence, load_capacity_dbm0",
    [
        # G.711 Tables 5 and 6: the digital milliwatt, a 1 kHz sine at 0 dBm0,
        # and the theoretical load capacity of each law (full scale in dBm0).
        (ulaw_decode, ulaw_encode, "1e0b0b1e9e8b8b9e", 3.17),
        (alaw_decode, alaw_encode, "34212134b4a1a1b4", 3.14),
    ],
)
def test_digital_milliwatt(decode, encode, sequence, load_capacity_dbm0):
    codes = bytes.fromhex(sequence)
    pcm = decode(codes)
    a, b = -int(pcm[0]), -int(pcm[1])
    assert pcm.tolist() == [-a, -b, -b, -a, a, b, b, a]
    full_scale = {ulaw_decode: 8159 * 4, alaw_decode: 4096 * 8}[decode]
    sine_rms = full_scale / 10 ** (load_capacity_dbm0 / 20) / np.sqrt(2)
    level_db = 20 * np.log10(np.sqrt(np.mean(pcm.astype(float) ** 2)) / sine_rms)
    assert abs(level_db) < 0.05
    assert encode(pcm) == codes


@pytest.mark.parametrize("decode, encode", [(ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)])
def test_round_trip(decode, encode):
    linear = decode(ALL_CODES)
    assert np.array_equal(decode(encode(linear)), linear)
    # Every code comes back itself, but for µ-law's minus zero (0x7F), which
    # decodes to 0 and so encodes to plus zero (0xFF).
    again = encode(linear)
    changed = [c for c in range(256) if again[c] != c]
    assert changed == ([0x7F] if decode is ulaw_decode else [])


@pytest.mark.parametrize("decode, encode", [(ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)])
def test_quantiser_is_monotonic_and_symmetric(decode, encode):
    quantised = decode(encode(ALL_INT16)).astype(np.int32)
    assert np.all(np.diff(quantised) >= 0)
    # One's complement symmetry: x and -x - 1 quantise to opposite values.
    assert np.array_equal(quantised, -quantised[::-1])


def test_against_audioop_where_it_follows_g191():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    pcm = ALL_INT16.tobytes()
    assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)
    assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(pcm, 2)
    # audioop's µ-law encoder negates negative samples in two's complement;
    # it differs only on negative edges of an interval, by one interval.
    ours = np.frombuffer(ulaw_encode(ALL_INT16), np.uint8)
    theirs = np.frombuffer(audioop.lin2ulaw(pcm, 2), np.uint8)
    differ = ours != theirs
    assert np.all(ALL_INT16[differ] < 0)
    assert np.all(np.abs(ours[differ].astype(int) - theirs[differ]) == 1)


def test_encode_wants_int16():
    with pytest.raises(TypeError, match="int16"):
        ulaw_encode(np.zeros(8, dtype=np.int32))
    with pytest.raises(TypeError, match="int16"):
        make_encoder("PCMA").encode(np.zeros(8))


def test_decode_accepts_bytes_like():
    payload = bytes(range(0, 256, 3))
    expected = ulaw_decode(payload)
    assert np.array_equal(ulaw_decode(bytearray(payload)), expected)
    assert np.array_equal(ulaw_decode(memoryview(payload)), expected)
    assert np.array_equal(make_decoder("pcmu").decode(memoryview(payload)[1:]), expected[1:])


# --- decoders and encoders by name ------------------------------------------


@pytest.mark.parametrize(
    "name, payload_type", [("PCMU", 0), ("PCMA", 8), pytest.param("G729", 18, marks=needs_g729)]
)
def test_make_decoder_and_encoder(name, payload_type):
    decoder = make_decoder(name)
    encoder = make_encoder(name.lower())
    assert (decoder.name, decoder.payload_type) == (name, payload_type)
    assert (encoder.name, encoder.payload_type) == (name, payload_type)
    assert codecs.STATIC_PAYLOAD_TYPES[payload_type] == name
    decoder.close()
    encoder.close()


@pytest.mark.parametrize("name", ["AMR", "G7221", "", "telephone-event"])
def test_unknown_codec(name):
    with pytest.raises(ValueError, match="unknown codec .* expected one of PCMU, PCMA, G729, G722, "
                                         "OPUS"):
        make_decoder(name)
    with pytest.raises(ValueError, match="unknown codec"):
        make_encoder(name)


@pytest.mark.parametrize("name", ["PCMU", "PCMA", G729])
def test_empty_payloads(name):
    decoder = make_decoder(name)
    for empty in (b"", bytearray(), memoryview(b"")):
        pcm = decoder.decode(empty)
        assert pcm.dtype == np.int16 and len(pcm) == 0
    assert len(decoder.decode_many([])) == 0
    assert len(decoder.decode_many([b"", b""])) == 0
    assert make_encoder(name).encode(np.zeros(0, np.int16)) == b""


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_decode_many_is_decode_joined(name):
    rng = np.random.default_rng(711)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (160, 160, 0, 80, 1, 240)]
    payloads[1] = bytearray(payloads[1])
    decoder = make_decoder(name)
    joined = decoder.decode_many(payloads)
    assert joined.dtype == np.int16
    assert np.array_equal(joined, np.concatenate([decoder.decode(p) for p in payloads]))


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_conceals_with_silence(name):
    decoder = make_decoder(name)
    for samples in (0, 1, 160, 171):
        pcm = decoder.conceal(samples)
        assert pcm.dtype == np.int16 and len(pcm) == samples and not pcm.any()
    with pytest.raises(ValueError):
        decoder.conceal(-1)


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_g711_encoder_round_trip(name):
    pcm = (8000 * np.sin(np.arange(1000) / 7)).astype(np.int16)
    payload = make_encoder(name).encode(pcm)
    assert len(payload) == len(pcm)
    decoded = make_decoder(name).decode(payload)
    # G.711 quantisation noise on a -12 dBFS sine: measured 39.5 dB
    # (µ-law) and 38.8 dB (A-law).
    assert snr_db(pcm, decoded) > 35


# --- G.729 ------------------------------------------------------------------

# The encoder's 5 ms look-ahead: decoded audio lags its input by 40 samples.
G729_DELAY = 40
SECONDS = np.arange(3 * 8000) / 8000


def snr_db(reference, decoded, delay=0):
    reference = reference[: len(reference) - delay].astype(float)
    decoded = decoded[delay : delay + len(reference)].astype(float)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - decoded) ** 2))


def segmental_snr_db(reference, decoded, delay, frame=160):
    """Mean SNR of 20 ms frames that are not silent, each clamped to
    [-10, 35] dB as usual so one frame cannot dominate."""
    reference = reference[: len(reference) - delay].astype(float)
    decoded = decoded[delay : delay + len(reference)].astype(float)
    values = []
    for start in range(0, len(reference) - frame + 1, frame):
        signal = np.sum(reference[start : start + frame] ** 2)
        if signal < frame * 100**2:  # below ~ -50 dBFS: silence
            continue
        noise = np.sum((reference[start : start + frame] - decoded[start : start + frame]) ** 2)
        values.append(np.clip(10 * np.log10(signal / max(noise, 1.0)), -10, 35))
    return float(np.mean(values))


def g729_round_trip(pcm, **encoder_options):
    with make_encoder("G729", **encoder_options) as encoder, make_decoder("G729") as decoder:
        return decoder.decode(encoder.encode(pcm))


def tone(frequency=1000, amplitude=8000):
    return (amplitude * np.sin(2 * np.pi * frequency * SECONDS)).astype(np.int16)


def voice_like():
    """Three formant-like partials with vibrato, in syllables of 250 ms."""
    vibrato = 3 * np.sin(2 * np.pi * 5 * SECONDS)
    partials = sum(
        weight * np.sin(2 * np.pi * frequency * SECONDS + vibrato + phase)
        for weight, frequency, phase in [(1.0, 500, 0), (0.6, 1500, 1), (0.3, 2500, 2)]
    )
    envelope = np.sin(2 * np.pi * 2 * SECONDS) ** 2
    return (12000 * envelope * partials / np.abs(partials).max()).astype(np.int16)


def espeak_speech(tmp_path):
    path = tmp_path / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog. "
         "Please hold while I transfer your call to the billing department."],
        check=True,
        capture_output=True,
    )
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate = w.getframerate()
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(float)
    # Band-limited resampling to 8 kHz: keep the spectrum below 4 kHz.
    length = int(len(speech) * 8000 / rate)
    spectrum = np.fft.rfft(speech)[: length // 2 + 1] * (length / len(speech))
    pcm = np.fft.irfft(spectrum, length)
    pcm = np.clip(np.round(pcm), -32768, 32767).astype(np.int16)
    return pcm[: len(pcm) // G729_FRAME_SAMPLES * G729_FRAME_SAMPLES]


def best_delay(reference, decoded, search=range(0, 200)):
    return max(search, key=lambda delay: snr_db(reference, decoded, delay))


@needs_g729
def test_g729_frame_sizes():
    pcm = voice_like()
    with make_encoder("G729") as encoder:
        payload = encoder.encode(pcm)
    assert len(payload) == len(pcm) // 8  # 8 kbit/s: 10 bytes per 80 samples
    assert len(g729_round_trip(pcm)) == len(pcm)


@needs_g729
def test_g729_tone_snr():
    pcm = tone()
    decoded = g729_round_trip(pcm)
    # Measured with libbcg729 1.1.1: 10.8 dB.
    assert snr_db(pcm, decoded, G729_DELAY) > 9.5


@needs_g729
def test_g729_voice_like_snr():
    pcm = voice_like()
    decoded = g729_round_trip(pcm)
    # Measured with libbcg729 1.1.1: 6.5 dB plain, 6.8 dB segmental.
    assert snr_db(pcm, decoded, G729_DELAY) > 5.5
    assert segmental_snr_db(pcm, decoded, G729_DELAY) > 5.0


@needs_g729
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_g729_speech_snr(tmp_path):
    pcm = espeak_speech(tmp_path)
    decoded = g729_round_trip(pcm)
    # The codec delay shows in real speech, whose correlation has one peak.
    assert best_delay(pcm, decoded) == G729_DELAY
    # Measured with libbcg729 1.1.1 and espeak-ng 1.51: 5.3 dB plain,
    # 3.2 dB segmental (CELP with a post-filter keeps the spectrum more
    # than the waveform; for comparison, a silent output scores 0 dB).
    assert snr_db(pcm, decoded, G729_DELAY) > 4.0
    assert segmental_snr_db(pcm, decoded, G729_DELAY) > 2.0


def g729_payloads(pcm, frames_per_packet=2):
    with make_encoder("G729") as encoder:
        frames = encoder.encode_frames(pcm)
    return [b"".join(frames[i : i + frames_per_packet]) for i in range(0, len(frames), frames_per_packet)]


@needs_g729
def test_g729_decode_many_is_decode_joined():
    payloads = g729_payloads(voice_like(), frames_per_packet=3)
    payloads[4] = bytearray(payloads[4])
    payloads[5] = memoryview(payloads[5])
    with make_decoder("G729") as one_by_one, make_decoder("G729") as batched:
        expected = np.concatenate([one_by_one.decode(p) for p in payloads])
        got = np.concatenate([batched.decode_many(payloads[i : i + 7]) for i in range(0, len(payloads), 7)])
    assert np.array_equal(got, expected)


@needs_g729
def test_g729_streams_keep_their_own_state():
    first, second = g729_payloads(voice_like()), g729_payloads(tone(440))
    with make_decoder("G729") as alone:
        first_alone = alone.decode_many(first)
    with make_decoder("G729") as alone:
        second_alone = alone.decode_many(second)
    with make_decoder("G729") as a, make_decoder("G729") as b:
        first_mixed, second_mixed = [], []
        for p, q in zip(first, second):
            first_mixed.append(a.decode(p))
            second_mixed.append(b.decode(q))
    assert np.array_equal(np.concatenate(first_mixed), first_alone)
    assert np.array_equal(np.concatenate(second_mixed), second_alone)


@needs_g729
def test_g729_annex_b_sid_frames_and_dtx():
    rng = np.random.default_rng(729)
    quiet = rng.normal(0, 30, 8000)
    pcm = np.concatenate([tone(700, 6000)[:8000], quiet]).astype(np.int16)
    with make_encoder("G729", vad=True) as encoder:
        frames = encoder.encode_frames(pcm)
    sizes = [len(frame) for frame in frames]
    assert set(sizes) == {10, 2, 0}
    assert sizes[:50] == [10] * 50  # the tone is speech to the VAD
    # One frame per packet, as RTP would carry it; nothing is sent for an
    # untransmitted frame, and the receiver fills the gap by concealment.
    with make_decoder("G729") as decoder:
        pcm_out = np.concatenate([decoder.decode(f) if f else decoder.conceal(80) for f in frames])
        assert decoder.damaged_frames == 0
    assert len(pcm_out) == len(pcm)
    # Comfort noise: at the level of the input noise (measured: 31 vs 30 RMS).
    noise_rms = np.sqrt(np.mean(pcm_out[-4000:].astype(float) ** 2))
    assert 15 < noise_rms < 60


@needs_g729
def test_g729_sid_ends_a_payload():
    with make_encoder("G729", vad=True) as encoder:
        sid = next(f for f in encoder.encode_frames(np.zeros(800, np.int16)) if len(f) == 2)
    speech = g729_payloads(voice_like(), frames_per_packet=1)[:3]
    with make_decoder("G729") as decoder:
        assert len(decoder.decode(speech[0] + speech[1] + sid)) == 3 * 80
        assert len(decoder.decode(sid)) == 80
        assert len(decoder.decode(speech[2])) == 80
        assert decoder.damaged_frames == 0


@needs_g729
@pytest.mark.parametrize("length, samples", [(1, 80), (3, 80), (13, 160), (21, 240), (19, 160)])
def test_g729_damaged_payload_is_concealed_and_counted(length, samples):
    payload = b"".join(g729_payloads(voice_like(), frames_per_packet=3)[:1]) * 3
    with make_decoder("G729") as decoder:
        assert len(decoder.decode(payload[:length])) == samples
        assert decoder.damaged_frames == 1


@needs_g729
def test_g729_conceal_lengths_and_content():
    payloads = g729_payloads(voice_like())
    with make_decoder("G729") as decoder:
        decoder.decode_many(payloads[:40])  # mid-syllable
        for samples in (0, 80, 160, 170, 1):
            pcm = decoder.conceal(samples)
            assert pcm.dtype == np.int16 and len(pcm) == samples
        with pytest.raises(ValueError):
            decoder.conceal(-80)
    with make_decoder("G729") as decoder:
        decoder.decode_many(payloads[:40])
        filled = decoder.conceal(160)
    # Erasure concealment carries the voice on rather than dropping to silence.
    assert np.sqrt(np.mean(filled.astype(float) ** 2)) > 100


@needs_g729
def test_g729_encoder_wants_whole_frames():
    with make_encoder("G729") as encoder:
        with pytest.raises(ValueError, match="multiple of 80"):
            encoder.encode(np.zeros(100, np.int16))
        pcm = voice_like()[:800]
        kept = pcm.copy()
        encoder.encode(pcm)
        assert np.array_equal(pcm, kept)  # the caller's samples are left alone


@needs_g729
def test_g729_close_is_idempotent_and_final():
    decoder = make_decoder("G729")
    encoder = make_encoder("G729")
    decoder.close()
    decoder.close()
    encoder.close()
    encoder.close()
    with pytest.raises(ValueError, match="closed"):
        decoder.decode(b"\0" * 10)
    with pytest.raises(ValueError, match="closed"):
        decoder.conceal(80)
    with pytest.raises(ValueError, match="closed"):
        encoder.encode(np.zeros(80, np.int16))
    del decoder, encoder  # __del__ after close is harmless


# --- without libbcg729 ------------------------------------------------------


@pytest.fixture
def without_bcg729():
    assert codecs.load_g729_library(["libbcg729-not-installed.so.0"]) is False
    yield
    codecs.load_g729_library()


def test_missing_library(without_bcg729):
    assert not codecs.g729_available()
    reason = codecs.G729_UNAVAILABLE_REASON
    assert "libbcg729-not-installed.so.0" in reason
    assert reason.endswith("install the Debian package libbcg729-0.")
    with pytest.raises(ValueError, match="G729 is unavailable: .*libbcg729-0"):
        make_decoder("G729")
    with pytest.raises(ValueError, match="G729 is unavailable"):
        make_encoder("G729", vad=True)
    # G.711 does not care.
    assert make_decoder("PCMU").decode(b"\xff").tolist() == [0]


@needs_g729
def test_decoders_made_before_the_library_went_keep_it():
    decoder = make_decoder("G729")
    try:
        assert codecs.load_g729_library(["libbcg729-not-installed.so.0"]) is False
        assert len(decoder.decode(b"\0" * 10)) == 80
    finally:
        codecs.load_g729_library()
        decoder.close()


def test_library_without_the_annex_b_api_is_refused():
    try:
        assert codecs.load_g729_library(["libm.so.6"]) is False
        assert "libm.so.6 is not a libbcg729 with the Annex B interface" in codecs.G729_UNAVAILABLE_REASON
    finally:
        codecs.load_g729_library()


def test_import_without_the_library_does_not_fail():
    # A fresh interpreter whose dynamic loader finds no libbcg729.
    program = (
        "import ctypes, ctypes.util\n"
        "real = ctypes.CDLL\n"
        "def fake(name, *a, **k):\n"
        "    if 'bcg729' in str(name): raise OSError(f'{name}: cannot open shared object file')\n"
        "    return real(name, *a, **k)\n"
        "ctypes.CDLL = fake\n"
        "from siprecd.media import codecs\n"
        "print(codecs.g729_available(), codecs.G729_UNAVAILABLE_REASON)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("False G.729 needs libbcg729")


# --- wideband: G.722 (g722 package) and Opus (libopus) ----------------------

needs_g722 = pytest.mark.skipif(codecs.unavailable_reason("G722") is not None,
                                reason=str(codecs.unavailable_reason("G722")))
needs_opus = pytest.mark.skipif(codecs.unavailable_reason("OPUS") is not None,
                                reason=str(codecs.unavailable_reason("OPUS")))


def _sweep(rate, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * (200 + 1800 * t) * t) * 9000).astype(np.int16)


@needs_g722
def test_g722_is_16_khz_audio_on_an_8_khz_clock():
    encoder, decoder = make_encoder("G722"), make_decoder("g722")
    assert (decoder.sample_rate, decoder.clock_rate, decoder.payload_type) == (16000, 8000, 9)
    pcm = _sweep(16000)
    payloads = [encoder.encode(pcm[i:i + 320]) for i in range(0, len(pcm), 320)]
    assert {len(p) for p in payloads} == {160}       # 20 ms: 160 bytes, 160 clock ticks
    out = np.concatenate([decoder.decode(p) for p in payloads])
    assert out.dtype == np.int16 and len(out) == len(pcm)
    # A faithful codec: the sweep comes back (ADPCM delay of a few samples aside).
    shifted = [np.corrcoef(out[k:], pcm[:len(pcm) - k])[0, 1] for k in range(0, 40)]
    assert max(shifted) > 0.95
    # decode_many is decode of the joined payloads, from the same state.
    again = make_decoder("G722")
    assert np.array_equal(again.decode_many(payloads), out)
    assert np.array_equal(decoder.conceal(7), np.zeros(7, np.int16))
    with pytest.raises(ValueError, match="even"):
        encoder.encode(pcm[:3])


@needs_opus
def test_opus_decodes_to_48_khz_mono_and_conceals():
    encoder, decoder = make_encoder("opus", payload_type=111), make_decoder("OPUS", 111)
    assert (decoder.sample_rate, decoder.clock_rate, decoder.payload_type) == (48000, 48000, 111)
    pcm = _sweep(48000)
    payloads = [encoder.encode(pcm[i:i + 960]) for i in range(0, len(pcm), 960)]
    assert all(decoder.samples_in(p) == 960 for p in payloads)
    out = np.concatenate([decoder.decode(p) for p in payloads])
    assert len(out) == len(pcm)
    assert np.abs(out[4800:]).max() > 3000   # audio, not silence
    # A second decoder over the same packets gives the same PCM, sample for sample.
    reference = make_decoder("OPUS")
    assert np.array_equal(np.concatenate([reference.decode(p) for p in payloads]), out)
    assert len(decoder.conceal(1000)) == 1000
    assert decoder.samples_in(b"") is None
    damaged = decoder.damaged_frames
    assert len(decoder.decode(b"\xff\xff\xff")) == 0 and decoder.damaged_frames == damaged + 1
    decoder.close()
    decoder.close()
    with pytest.raises(ValueError, match="closed"):
        decoder.decode(payloads[0])


def test_unavailable_reason_names_what_to_install():
    assert codecs.unavailable_reason("PCMU") is None
    with pytest.raises(ValueError, match="unknown codec"):
        codecs.unavailable_reason("AMR")
