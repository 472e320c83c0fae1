"""Audio codecs of the media plane: RTP payloads to int16 PCM at the codec's
own rate, and back.

G.711 µ-law (PCMU) and A-law (PCMA) are numpy lookup tables built once at
import from the segment rules of ITU-T G.711; decoding a payload is one
table lookup, so a batch of packets costs one lookup too (``decode_many``).
G.729 (Annex A and B; the bitstreams are compatible) goes through libbcg729
with ctypes, one decoder state per stream. A machine without the library
still imports this module: ``g729_available()`` is False and
``G729_UNAVAILABLE_REASON`` says what to install.

Why our own G.711: ``audioop`` is gone from Python 3.13 (``audioop-lts``
would be one more wheel for 30 lines), and its µ-law encoder rounds negative
samples at the edges of a quantisation interval differently from ITU-T
G.191, the ITU's own reference code for G.711. Here negative samples are
taken in one's complement (``~x``), as G.191 does, so both laws quantise
symmetrically about -1/2 LSB and ``encode(-x - 1)`` mirrors ``encode(x)``.

G.722 (RFC 3551 §4.5.2: 16 kHz audio on an 8 kHz RTP clock, one byte per
two samples at 64 kbit/s) goes through the ``G722`` module of the PyPI
package ``g722`` (libg722: the bit-exact ITU-T G.722 code that spandsp and
Asterisk also carry, packaged with wheels and kept up to date, so nothing is
compiled here). Opus (RFC 7587: 48 kHz RTP clock) goes through libopus
(Debian's libopus0) with ctypes, decoded to mono at 48 kHz; libopus is the
reference implementation, and its C interface is small and stable, so a
Python wrapper (``opuslib`` has not been released since 2018) would add a
dependency and nothing else. Either may be missing: ``unavailable_reason``
says what to install, and the server then does not offer it.

Every decoder says its PCM rate (``sample_rate``) and its RTP clock
(``clock_rate``); ``sample_rate // clock_rate`` PCM samples stand for one
RTP timestamp unit (2 for G.722, 1 for the others).

Decoders and encoders are not thread-safe; each belongs to one stream and
is used from one thread.
"""

import ctypes
import ctypes.util

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "RATES",
    "G729_FRAME_SAMPLES",
    "G729_UNAVAILABLE_REASON",
    "STATIC_PAYLOAD_TYPES",
    "Decoder",
    "Encoder",
    "alaw_decode",
    "alaw_encode",
    "g729_available",
    "load_g729_library",
    "make_decoder",
    "make_encoder",
    "unavailable_reason",
    "ulaw_decode",
    "ulaw_encode",
]

SAMPLE_RATE = 8000  # of the narrowband codecs (G.711, G.729)

# RFC 3551 static payload types of the codecs this module speaks (Opus
# has none: its payload type is always dynamic).
STATIC_PAYLOAD_TYPES = {0: "PCMU", 8: "PCMA", 9: "G722", 18: "G729"}

# name -> (PCM rate, RTP clock rate)
RATES = {"PCMU": (8000, 8000), "PCMA": (8000, 8000), "G729": (8000, 8000),
         "G722": (16000, 8000), "OPUS": (48000, 48000)}

# A G.729 frame is 10 ms: 80 samples in, 10 bytes out (2 bytes for an
# Annex B SID frame, which carries comfort-noise parameters).
G729_FRAME_SAMPLES = 80
G729_FRAME_BYTES = 10
G729_SID_BYTES = 2

_EMPTY_PCM = np.zeros(0, dtype=np.int16)
_EMPTY_PCM.setflags(write=False)


# --- G.711 tables -----------------------------------------------------------
#
# Both laws split the magnitude into 8 segments of 16 equal intervals, each
# segment's interval twice as wide as the one below; a code is sign, segment
# (3 bits) and interval (4 bits). The decoder answers the middle of the
# interval. µ-law works on 14-bit samples (the top 14 bits of int16) and,
# by adding a bias of 33, makes its segment edges powers of two; A-law works
# on 13-bit samples and has two segments of the finest step at the bottom.


def _int16_domain():
    """Every int16 value, in the order a uint16 view of it indexes."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _one_complement_magnitude(x):
    # G.191's negative side: ~x == -x - 1, so -1 is "minus zero".
    return np.where(x < 0, ~x, x)


def _segment(value, first_edge):
    """The segment (0..7) of *value*: how many doublings of *first_edge* it
    has reached."""
    segment = np.zeros_like(value)
    for s in range(1, 8):
        segment += value >= (first_edge << (s - 1))
    return segment


def _ulaw_decode_table():
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # µ-law sends every bit inverted
    segment = (code >> 4) & 7
    interval = code & 15
    magnitude = ((2 * interval + 33) << segment) - 33  # 14-bit units
    linear = np.where(code & 0x80, -magnitude, magnitude) << 2
    return linear.astype(np.int16)


def _ulaw_encode_table():
    x = _int16_domain()
    # Biased 14-bit magnitude, clipped at the top of the last interval (8158).
    biased = np.minimum((_one_complement_magnitude(x) >> 2) + 33, 8191)
    segment = _segment(biased, 64)
    interval = (biased >> (segment + 1)) & 15
    sign = np.where(x < 0, 0x80, 0)
    return (~(sign | segment << 4 | interval) & 0xFF).astype(np.uint8)


def _alaw_decode_table():
    code = np.arange(256, dtype=np.int32) ^ 0x55  # A-law inverts the even bits
    segment = (code >> 4) & 7
    interval = code & 15
    magnitude = np.where(  # 13-bit units
        segment == 0,
        2 * interval + 1,
        (2 * interval + 33) << np.maximum(segment - 1, 0),
    )
    linear = np.where(code & 0x80, magnitude, -magnitude) << 3
    return linear.astype(np.int16)


def _alaw_encode_table():
    x = _int16_domain()
    # Half the 13-bit magnitude: intervals of the bottom two segments are 2 wide.
    half = _one_complement_magnitude(x) >> 4
    segment = _segment(half, 16)
    interval = np.where(segment == 0, half, half >> np.maximum(segment - 1, 0)) & 15
    sign = np.where(x >= 0, 0x80, 0)
    return ((sign | segment << 4 | interval) ^ 0x55).astype(np.uint8)


def _frozen(table):
    table.setflags(write=False)
    return table


# decode: int16 indexed by the code byte; encode: code byte indexed by the
# int16 sample viewed as uint16.
ULAW_DECODE_TABLE = _frozen(_ulaw_decode_table())
ULAW_ENCODE_TABLE = _frozen(_ulaw_encode_table())
ALAW_DECODE_TABLE = _frozen(_alaw_decode_table())
ALAW_ENCODE_TABLE = _frozen(_alaw_encode_table())


def _codes(data):
    return np.frombuffer(data, dtype=np.uint8)


def _pcm16(pcm):
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        # Casting would wrap louder samples silently; the caller must choose.
        raise TypeError(f"expected int16 PCM, got an array of {pcm.dtype}")
    return pcm.reshape(-1)


def ulaw_decode(data):
    """µ-law bytes (bytes, bytearray, memoryview) to int16 PCM."""
    return ULAW_DECODE_TABLE.take(_codes(data))


def ulaw_encode(pcm):
    """int16 PCM to µ-law bytes."""
    return ULAW_ENCODE_TABLE.take(_pcm16(pcm).view(np.uint16)).tobytes()


def alaw_decode(data):
    """A-law bytes (bytes, bytearray, memoryview) to int16 PCM."""
    return ALAW_DECODE_TABLE.take(_codes(data))


def alaw_encode(pcm):
    """int16 PCM to A-law bytes."""
    return ALAW_ENCODE_TABLE.take(_pcm16(pcm).view(np.uint16)).tobytes()


# --- libbcg729 --------------------------------------------------------------

_BCG729_PACKAGE = "the Debian package libbcg729-0"


class Bcg729:
    """libbcg729's entry points with their C prototypes: the interface
    whose decoder takes the frame length and the Annex B flags (the one
    of Debian's libbcg729-0 1.1.1)."""

    def __init__(self, library, path):
        self.path = path
        vp, u8 = ctypes.c_void_p, ctypes.c_uint8

        def bind(name, restype, *argtypes):
            function = getattr(library, name)
            function.restype = restype
            function.argtypes = argtypes
            return function

        self.decoder_new = bind("initBcg729DecoderChannel", vp)
        self.decoder_free = bind("closeBcg729DecoderChannel", None, vp)
        # (state, bitStream, bitStreamLength, frameErasureFlag, SIDFrameFlag,
        #  rfc3389PayloadFlag, signal[80])
        self.decode = bind("bcg729Decoder", None, vp, vp, u8, u8, u8, u8, vp)
        self.encoder_new = bind("initBcg729EncoderChannel", vp, u8)
        self.encoder_free = bind("closeBcg729EncoderChannel", None, vp)
        # (state, inputFrame[80], bitStream[10], *bitStreamLength)
        self.encode = bind("bcg729Encoder", None, vp, vp, vp, ctypes.POINTER(u8))
        # Came with the Annex B interface: the older decoder takes four
        # arguments, and calling it with seven would read garbage, so a
        # library without this symbol is refused.
        bind("bcg729GetRFC3389Payload", None, vp, vp)


def _default_candidates():
    names = [ctypes.util.find_library("bcg729"), "libbcg729.so.0"]
    return [name for name in dict.fromkeys(names) if name]


def _open_bcg729(candidates):
    """(Bcg729, None) from the first candidate that loads, or (None, reason)."""
    failures = []
    for name in candidates:
        try:
            return Bcg729(ctypes.CDLL(name), name), None
        except OSError as e:
            failures.append(str(e) if name in str(e) else f"{name}: {e}")
        except AttributeError as e:
            failures.append(f"{name} is not a libbcg729 with the Annex B interface ({e})")
    tried = "; ".join(failures) or "no library name to try"
    return None, (
        f"G.729 needs libbcg729, which could not be loaded ({tried}): install {_BCG729_PACKAGE}."
    )


_bcg729 = None
G729_UNAVAILABLE_REASON = None


def load_g729_library(candidates=None):
    """Find libbcg729 (again) and return whether G.729 is now available.

    *candidates* are library names or paths for ``ctypes.CDLL``, tried in
    order; by default what ``ctypes.util.find_library("bcg729")`` finds,
    then ``libbcg729.so.0``. Runs at import; tests call it with a bogus
    name to see the server without the library. Decoders made earlier keep
    the library they were made with.
    """
    global _bcg729, G729_UNAVAILABLE_REASON
    _bcg729, G729_UNAVAILABLE_REASON = _open_bcg729(
        _default_candidates() if candidates is None else list(candidates)
    )
    return _bcg729 is not None


def g729_available():
    return _bcg729 is not None


load_g729_library()


# --- decoders ---------------------------------------------------------------


class _Codec:
    """What decoders and encoders share: a name, a payload type, and
    state to free (also as a context manager)."""

    #: The function of ``self._lib`` that frees ``self._state``, for the
    #: codecs whose state lives in a native library.
    _release = None

    def close(self):
        """Free the codec state; safe to call more than once."""
        state, self._state = getattr(self, "_state", None), None
        if state is not None and self._release is not None:
            getattr(self._lib, self._release)(state)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn ctypes down
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} PT {self.payload_type}>"


class Decoder(_Codec):
    """One stream's decoder: RTP payloads in, 8 kHz int16 PCM out.

    Payloads are bytes-like (bytes, bytearray, memoryview). Arrays returned
    are new and owned by the caller.
    """

    name = ""
    payload_type = -1
    sample_rate = SAMPLE_RATE
    clock_rate = SAMPLE_RATE
    # Frames whose bits could not be decoded and were concealed instead.
    damaged_frames = 0

    def decode(self, payload):
        """int16 samples for one RTP payload."""
        raise NotImplementedError

    def decode_many(self, payloads):
        """The samples of *payloads* (a sequence, in play-out order), joined."""
        if not payloads:
            return _EMPTY_PCM.copy()
        return np.concatenate([self.decode(payload) for payload in payloads])

    def conceal(self, samples):
        """*samples* samples of audio to stand in for lost packets."""
        return np.zeros(_sample_count(samples), dtype=np.int16)



def _sample_count(samples):
    samples = int(samples)
    if samples < 0:
        raise ValueError(f"expected a sample count of 0 or more, got {samples}")
    return samples


class G711Decoder(Decoder):
    """Stateless table lookup; lost packets become silence."""

    def __init__(self, name, payload_type, table):
        self.name = name
        self.payload_type = payload_type
        self._table = table

    def decode(self, payload):
        return self._table.take(_codes(payload))

    def decode_many(self, payloads):
        # One lookup for the whole batch: per-call overhead dominates a
        # 160-byte lookup, so joining first is several times faster.
        return self._table.take(_codes(b"".join(payloads)))


class G729Decoder(Decoder):
    """libbcg729 decoder state for one stream.

    An RTP payload (RFC 3551 §4.5.6) is any number of 10-byte speech frames,
    optionally followed by one 2-byte Annex B SID frame; each frame decodes
    to 80 samples. Trailing bytes that fit neither are a damaged frame: it
    is concealed like a lost one (80 samples) and counted in
    ``damaged_frames``, so one bad packet neither stops the stream nor
    shifts its timeline.
    """

    _release = "decoder_free"

    name = "G729"
    payload_type = 18
    _state = None

    def __init__(self, library):
        self._lib = library
        state = library.decoder_new()
        if not state:
            raise MemoryError("libbcg729 could not allocate a decoder")
        self._state = state
        self.damaged_frames = 0

    def _check_open(self):
        if self._state is None:
            raise ValueError("decoding with a closed G729 decoder")

    @staticmethod
    def _frames(length):
        """(speech frames, SID frames, damaged frames) in a payload of *length* bytes."""
        speech, rest = divmod(length, G729_FRAME_BYTES)
        if rest == 0:
            return speech, 0, 0
        if rest == G729_SID_BYTES:
            return speech, 1, 0
        return speech, 0, 1

    def decode(self, payload):
        return self.decode_many((payload,))

    def decode_many(self, payloads):
        self._check_open()
        codes = [_codes(payload) for payload in payloads]
        layouts = [self._frames(len(c)) for c in codes]
        out = np.empty(sum(map(sum, layouts)) * G729_FRAME_SAMPLES, dtype=np.int16)
        decode, state = self._lib.decode, self._state
        step = G729_FRAME_SAMPLES * 2
        target = out.ctypes.data
        for c, (speech, sid, damaged) in zip(codes, layouts):
            source = c.ctypes.data
            for _ in range(speech):
                decode(state, source, G729_FRAME_BYTES, 0, 0, 0, target)
                source += G729_FRAME_BYTES
                target += step
            if sid:
                decode(state, source, G729_SID_BYTES, 0, 1, 0, target)
                target += step
            if damaged:
                decode(state, None, 0, 1, 0, 0, target)
                target += step
                self.damaged_frames += 1
        return out

    def conceal(self, samples):
        """The decoder's own concealment, frame by frame (G.729 §4.4; after
        a SID frame, Annex B comfort noise goes on instead). A count that
        is not a multiple of 80 is rounded up to whole frames, then cut."""
        self._check_open()
        samples = _sample_count(samples)
        frames = -(-samples // G729_FRAME_SAMPLES)
        out = np.empty(frames * G729_FRAME_SAMPLES, dtype=np.int16)
        decode, state, target = self._lib.decode, self._state, out.ctypes.data
        for _ in range(frames):
            decode(state, None, 0, 1, 0, 0, target)
            target += G729_FRAME_SAMPLES * 2
        return out[:samples]



# --- encoders (for the call simulator) --------------------------------------


class Encoder(_Codec):
    """int16 PCM in, RTP payload bytes out."""

    name = ""
    payload_type = -1
    sample_rate = SAMPLE_RATE
    clock_rate = SAMPLE_RATE

    def encode(self, pcm):
        raise NotImplementedError



class G711Encoder(Encoder):
    def __init__(self, name, payload_type, table):
        self.name = name
        self.payload_type = payload_type
        self._table = table

    def encode(self, pcm):
        """Any number of samples; one byte each."""
        return self._table.take(_pcm16(pcm).view(np.uint16)).tobytes()


class G729Encoder(Encoder):
    """libbcg729 encoder state for one simulated stream.

    With *vad* (Annex B), a frame encodes to 10 bytes of speech, a 2-byte
    SID frame, or nothing (not sent during silence). A SID frame may only
    end an RTP payload, so with VAD packetise from ``encode_frames``.
    """

    _release = "encoder_free"

    name = "G729"
    payload_type = 18
    _state = None

    def __init__(self, library, vad=False):
        self._lib = library
        self.vad = bool(vad)
        state = library.encoder_new(1 if vad else 0)
        if not state:
            raise MemoryError("libbcg729 could not allocate an encoder")
        self._state = state
        self._bits = (ctypes.c_uint8 * G729_FRAME_BYTES)()
        self._length = ctypes.c_uint8()

    def encode_frames(self, pcm):
        """One bytes object per 80 samples of *pcm*: 10, 2 or 0 bytes long."""
        if self._state is None:
            raise ValueError("encoding with a closed G729 encoder")
        pcm = np.ascontiguousarray(_pcm16(pcm))
        if len(pcm) % G729_FRAME_SAMPLES:
            raise ValueError(f"expected a multiple of {G729_FRAME_SAMPLES} samples, got {len(pcm)}")
        encode, state, bits, length = self._lib.encode, self._state, self._bits, self._length
        frames = []
        source = pcm.ctypes.data
        for _ in range(len(pcm) // G729_FRAME_SAMPLES):
            encode(state, source, bits, ctypes.byref(length))
            frames.append(bytes(bits[: length.value]))
            source += G729_FRAME_SAMPLES * 2
        return frames

    def encode(self, pcm):
        """*pcm*: a multiple of 80 samples; the frames' bytes joined."""
        return b"".join(self.encode_frames(pcm))



# --- G.722 (the g722 package) -------------------------------------------------

_G722_PACKAGE = "the PyPI package g722"


def _load_g722():
    try:
        import G722
    except ImportError as e:
        return None, f"G.722 needs {_G722_PACKAGE}, which could not be imported ({e})."
    return G722, None


_g722_module, G722_UNAVAILABLE_REASON = _load_g722()
G722_BIT_RATE = 64000


class _G722:
    """What the G.722 decoder and encoder share: the codec's figures and
    one g722 codec state each. Each payload byte is two samples at 16 kHz;
    the RTP clock runs at 8 kHz (RFC 3551 §4.5.2)."""

    name = "G722"
    payload_type = 9
    sample_rate = 16000
    clock_rate = 8000

    def __init__(self, module):
        self._codec = module.G722(self.sample_rate, G722_BIT_RATE)


class G722Decoder(_G722, Decoder):
    """One stream's G.722 decoder (ADPCM: it keeps state between packets).
    One timestamp unit is two samples. Lost audio is silence (G.722 has no
    concealment of its own)."""

    def decode(self, payload):
        if not len(payload):
            return _EMPTY_PCM.copy()
        out = self._codec.decode(bytes(payload))
        return np.frombuffer(out, dtype=np.int16).copy()

    def decode_many(self, payloads):
        return self.decode(b"".join(bytes(p) for p in payloads))


class G722Encoder(_G722, Encoder):
    def encode(self, pcm):
        """An even number of 16 kHz samples; one byte per two."""
        pcm = np.ascontiguousarray(_pcm16(pcm))
        if len(pcm) % 2:
            raise ValueError(f"expected an even number of samples, got {len(pcm)}")
        return bytes(self._codec.encode(pcm))


# --- Opus (libopus) --------------------------------------------------------------

_OPUS_PACKAGE = "the Debian package libopus0"
OPUS_RATE = 48000
# The longest Opus packet: 120 ms.
OPUS_MAX_SAMPLES = 5760
OPUS_APPLICATION_VOIP = 2048
OPUS_MAX_PACKET = 1500


class Libopus:
    """libopus's entry points with their C prototypes."""

    def __init__(self, library, path):
        self.path = path
        vp, i32, c_int = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int

        def bind(name, restype, *argtypes):
            function = getattr(library, name)
            function.restype = restype
            function.argtypes = argtypes
            return function

        self.decoder_create = bind("opus_decoder_create", vp, i32, c_int, ctypes.POINTER(c_int))
        self.decoder_destroy = bind("opus_decoder_destroy", None, vp)
        # (state, data, len, pcm, frame_size, decode_fec) -> samples per channel, or < 0
        self.decode = bind("opus_decode", c_int, vp, vp, i32, vp, c_int, c_int)
        self.packet_samples = bind("opus_packet_get_nb_samples", c_int, vp, i32, i32)
        self.encoder_create = bind("opus_encoder_create", vp, i32, c_int, c_int,
                                   ctypes.POINTER(c_int))
        self.encoder_destroy = bind("opus_encoder_destroy", None, vp)
        # (state, pcm, frame_size, data, max_data_bytes) -> bytes written, or < 0
        self.encode = bind("opus_encode", i32, vp, vp, c_int, vp, i32)
        self.strerror = bind("opus_strerror", ctypes.c_char_p, c_int)
        self.version = bind("opus_get_version_string", ctypes.c_char_p)().decode()


def _open_opus():
    failures = []
    names = [ctypes.util.find_library("opus"), "libopus.so.0"]
    for name in [n for n in dict.fromkeys(names) if n]:
        try:
            return Libopus(ctypes.CDLL(name), name), None
        except (OSError, AttributeError) as e:
            failures.append(str(e) if name in str(e) else f"{name}: {e}")
    tried = "; ".join(failures) or "no library name to try"
    return None, f"Opus needs libopus, which could not be loaded ({tried}): install {_OPUS_PACKAGE}."


_libopus, OPUS_UNAVAILABLE_REASON = _open_opus()


class OpusDecoder(Decoder):
    """One stream's Opus decoder: mono at 48 kHz (a stereo stream is mixed
    down by libopus); lost audio is libopus's own concealment. A payload
    libopus refuses is a damaged frame: nothing comes out of it, and the
    timeline is kept by the next packet's timestamp."""

    _release = "decoder_destroy"

    name = "OPUS"
    payload_type = -1
    sample_rate = OPUS_RATE
    clock_rate = OPUS_RATE
    _state = None

    def __init__(self, library, payload_type=-1):
        self._lib = library
        self.payload_type = payload_type
        error = ctypes.c_int()
        state = library.decoder_create(OPUS_RATE, 1, ctypes.byref(error))
        if not state or error.value:
            raise MemoryError(f"libopus could not make a decoder: "
                              f"{library.strerror(error.value).decode()}")
        self._state = state
        self._out = np.empty(OPUS_MAX_SAMPLES, dtype=np.int16)
        self.damaged_frames = 0

    def samples_in(self, payload):
        """How many 48 kHz samples *payload* decodes to, or None if it is not Opus."""
        data = bytes(payload)
        if not data:
            return None
        n = self._lib.packet_samples(data, len(data), OPUS_RATE)
        return n if 0 < n <= OPUS_MAX_SAMPLES else None

    def decode(self, payload):
        if self._state is None:
            raise ValueError("decoding with a closed Opus decoder")
        data = bytes(payload)
        if not data:
            return _EMPTY_PCM.copy()
        n = self._lib.decode(self._state, data, len(data), self._out.ctypes.data,
                             OPUS_MAX_SAMPLES, 0)
        if n < 0:
            self.damaged_frames += 1
            return _EMPTY_PCM.copy()
        return self._out[:n].copy()

    def conceal(self, samples):
        """libopus's packet loss concealment, in steps of 2.5 ms (the unit
        it conceals in), cut to *samples*."""
        if self._state is None:
            raise ValueError("decoding with a closed Opus decoder")
        samples = _sample_count(samples)
        step = OPUS_RATE // 400
        out = []
        left = -(-samples // step) * step
        while left > 0:
            n = min(left, 960)
            got = self._lib.decode(self._state, None, 0, self._out.ctypes.data, n, 0)
            if got <= 0:
                break
            out.append(self._out[:got].copy())
            left -= got
        pcm = np.concatenate(out) if out else _EMPTY_PCM.copy()
        if len(pcm) < samples:
            pcm = np.concatenate([pcm, np.zeros(samples - len(pcm), dtype=np.int16)])
        return pcm[:samples]



class OpusEncoder(Encoder):
    """Mono 48 kHz Opus for the call simulator (VoIP application)."""

    _release = "encoder_destroy"

    name = "OPUS"
    payload_type = -1
    sample_rate = OPUS_RATE
    clock_rate = OPUS_RATE
    _state = None

    def __init__(self, library, payload_type=111):
        self._lib = library
        self.payload_type = payload_type
        error = ctypes.c_int()
        state = library.encoder_create(OPUS_RATE, 1, OPUS_APPLICATION_VOIP, ctypes.byref(error))
        if not state or error.value:
            raise MemoryError(f"libopus could not make an encoder: "
                              f"{library.strerror(error.value).decode()}")
        self._state = state
        self._out = (ctypes.c_ubyte * OPUS_MAX_PACKET)()

    def encode(self, pcm):
        """One Opus frame: 2.5, 5, 10, 20, 40 or 60 ms of 48 kHz samples."""
        if self._state is None:
            raise ValueError("encoding with a closed Opus encoder")
        pcm = np.ascontiguousarray(_pcm16(pcm))
        n = self._lib.encode(self._state, pcm.ctypes.data, len(pcm), self._out, OPUS_MAX_PACKET)
        if n < 0:
            raise ValueError(f"libopus could not encode {len(pcm)} samples: "
                             f"{self._lib.strerror(n).decode()}")
        return bytes(self._out[:n])



# --- by name ----------------------------------------------------------------

_G711 = {
    "PCMU": (0, ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE),
    "PCMA": (8, ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE),
}
_NAMES = ("PCMU", "PCMA", "G729", "G722", "OPUS")


def _known(name):
    key = str(name).upper()
    if key not in _NAMES:
        raise ValueError(f"unknown codec {name!r}; expected one of {', '.join(_NAMES)}")
    return key


def unavailable_reason(name):
    """None when codec *name* can be used here, else what to install."""
    key = _known(name)
    if key == "G729":
        return G729_UNAVAILABLE_REASON
    if key == "G722":
        return G722_UNAVAILABLE_REASON
    if key == "OPUS":
        return OPUS_UNAVAILABLE_REASON
    return None


def _library_for(key):
    library = {"G729": _bcg729, "G722": _g722_module, "OPUS": _libopus}[key]
    if library is None:
        raise ValueError(f"codec {key} is unavailable: {unavailable_reason(key)}")
    return library


def make_decoder(name, payload_type=None):
    """A new decoder for one stream; *name* as in SDP (case does not matter).

    Raises ValueError for a codec this module does not know or cannot load.
    *payload_type* names Opus's dynamic payload type (for repr only).
    """
    key = _known(name)
    if key in _G711:
        payload_type, table, _ = _G711[key]
        return G711Decoder(key, payload_type, table)
    if key == "G722":
        return G722Decoder(_library_for(key))
    if key == "OPUS":
        return OpusDecoder(_library_for(key), -1 if payload_type is None else payload_type)
    return G729Decoder(_library_for(key))


def make_encoder(name, *, vad=False, payload_type=None):
    """A new encoder; *vad* turns on G.729 Annex B (ignored by the others);
    *payload_type* is Opus's dynamic payload type (default 111)."""
    key = _known(name)
    if key in _G711:
        payload_type, _, table = _G711[key]
        return G711Encoder(key, payload_type, table)
    if key == "G722":
        return G722Encoder(_library_for(key))
    if key == "OPUS":
        return OpusEncoder(_library_for(key), 111 if payload_type is None else payload_type)
    return G729Encoder(_library_for(key), vad=vad)
