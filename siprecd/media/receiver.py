"""One recorded stream's RTP turned into PCM on the call's timeline (sans-IO).

A :class:`StreamReceiver` takes datagrams and hands int16 PCM at the
codec's own rate (8 kHz for G.711 and G.729, 16 kHz for G.722, 48 kHz for
Opus) with its position and rate to an
:class:`~siprecd.interfaces.IStreamConsumer`. It locks onto the first
SSRC, follows SSRC changes, unwraps 16-bit sequence numbers and 32-bit
timestamps, drops duplicates, restores order within a small window,
conceals losses, consumes RFC 4733 telephone events and comfort noise, and
fills holds with silence, so that ``position / rate`` is always seconds
since the stream's first packet on the call's own clock. A codec's RTP
clock may run slower than its audio (G.722: 8 kHz clock, 16 kHz audio):
one timestamp unit is then ``rate // clock_rate`` samples.

Time comes from an injected ``IReactorTime``; nothing here touches a socket.

How the timeline is kept
    A packet's position is its (unwrapped) RTP timestamp plus an offset fixed
    when the stream starts. Whatever is missing between the end of the
    audio already handed out and the next packet's position is filled:
    with the decoder's concealment after a loss, with silence after comfort
    noise, telephone events or silence suppression. When timestamps cannot
    be trusted (a new SSRC, a resume from hold, a sequence restart, a jump of
    more than a second ahead of the wall clock) the next packet is placed by
    its arrival time instead, against a reference kept from the least
    delayed packets seen; audio never overlaps and is never cut.

Why there are two paths
    One core has to carry thousands of streams, and on that budget the
    general code (a parse into an object, a heap, a decode per packet, a
    consumer call per packet) costs several times what Twisted itself
    spends reading a datagram. So :meth:`StreamReceiver.datagram_received`
    first checks, with plain indexing, whether the datagram is exactly the
    packet the steady state expects (same length, version 2 with no padding,
    extension or CSRC, the negotiated payload type without marker, the next
    sequence number, the locked SSRC) and if so only appends it to a list.
    The list is decoded in batches: by :class:`ReceiverGroup` on its shared
    tick, where every G.711 stream's batch goes through one table lookup,
    or by the stream itself before the general path runs, so output order
    never changes. Timestamps of batched packets are checked when the batch
    is decoded; a batch that does not continue the timeline exactly is
    replayed through the general path. Anything else (reordering, loss,
    SSRC changes, telephone events, padding, extensions, RTCP multiplexed on
    the RTP port) takes the general path at once, with its arrival time.

What the fast path gives up
    Batched packets carry no arrival time. Interarrival jitter (RFC 3550
    A.8) is therefore computed over the packets that are timed: every packet
    of the general path, plus one fast-path packet per stream every
    ``JITTER_SAMPLE_INTERVAL`` seconds (the fast path is switched off for one
    packet to time it). With i.i.d. network delay the transit difference of
    packets far apart has the same distribution as that of neighbours, so
    the estimate is the same, only smoother. Idle time is measured at tick
    granularity for the same reason.
"""

import heapq
import math
import struct
from collections import deque

import numpy as np
from twisted.logger import Logger

from siprecd.clock import monotonic_for
from siprecd.media.rtp import (
    MalformedPacket,
    looks_like_rtcp,
    parse_rtcp,
    parse_rtp,
    parse_telephone_event,
    SenderReport,
    ReceiverReport,
    Goodbye,
)

__all__ = [
    "StreamReceiver",
    "ReceiverGroup",
    "SAMPLE_RATE",
    "STATIC_PAYLOAD_TYPES",
    "COMFORT_NOISE_PT",
]

SAMPLE_RATE = 8000  # of G.711 and G.729
STATIC_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8, "G722": 9, "G729": 18}
# Codecs with no static payload type (their type comes from the SDP).
DYNAMIC_CODECS = frozenset(["OPUS"])
COMFORT_NOISE_PT = 13  # RFC 3389
# G.711 decoding is stateless, so streams can share one decoder and one
# table lookup per tick; G.729 keeps per-stream decoder state.
STATELESS_CODECS = frozenset(["PCMU", "PCMA"])

# RFC 3550 A.1: a jump of more than MAX_DROPOUT packets ahead or MAX_MISORDER
# behind is a restart of the sequence (confirmed by a second packet), not
# loss or reordering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
# A new SSRC must show this many consecutive packets before it takes over,
# so one stray packet of another source cannot move the timeline.
PROBATION = 2
# Timestamps that run this far ahead of the wall clock are not believed.
MAX_AHEAD_SECONDS = 1.0
# Concealment beyond this is silence anyway.
CONCEAL_SECONDS = 0.06
# How fast the wall-clock reference may drift upwards (sender clock slower
# than ours): 1 ms per second.
WALL_CREEP = 0.001
JITTER_SAMPLE_INTERVAL = 1.0
# Batches are decoded this many packets at a time: the arrays of a chunk
# (about 350 KiB in, 640 KiB out for 20 ms G.711) stay in the CPU cache
# from the join to the last stream's copy; one array for the whole tick
# would not, and costs several times more per packet.
CHUNK_PACKETS = 2048
# Long silences are handed out in pieces of at most this many samples.
FILL_CHUNK = 10 * SAMPLE_RATE
_MASK16 = 0xFFFF
_MASK32 = 0xFFFFFFFF
_TS = struct.Struct("!I")


def _signed16(x):
    x &= _MASK16
    return x - 0x10000 if x & 0x8000 else x


def _signed32(x):
    x &= _MASK32
    return x - 0x100000000 if x & 0x80000000 else x


def _default_decoder(codec, payload_type=None):
    from siprecd.media.codecs import make_decoder

    return make_decoder(codec, payload_type)


def _check_codec(codec, payload_type):
    codec = str(codec).upper()
    if codec not in STATIC_PAYLOAD_TYPES and codec not in DYNAMIC_CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    if codec in DYNAMIC_CODECS and payload_type is None:
        raise ValueError(f"codec {codec} needs its payload type from the SDP")
    return codec


class _Entry:
    """A packet waiting in the reorder buffer."""

    __slots__ = ("packet", "arrival", "simple", "size")

    def __init__(self, packet, arrival, simple, size):
        self.packet = packet
        self.arrival = arrival
        self.simple = simple  # no padding, extension or CSRC: fast path can follow
        self.size = size


class StreamReceiver:
    """RTP of one recorded stream in, PCM on the call's timeline out.

    *stream* is handed back to *consumer* as is. *codec* is "PCMU", "PCMA",
    "G729", "G722" or "OPUS"; *payload_type* defaults to its static number
    (Opus has none: it must be given);
    *dtmf_payload_type* is the negotiated telephone-event type, if any.
    *jitter_window* (seconds) is how long a gap waits for its packet.
    *decoder* defaults to ``codecs.make_decoder(codec)``.

    Call :meth:`datagram_received` for each RTP datagram,
    :meth:`receive_rtcp` for RTCP, and :meth:`poll` now and then (or put the
    receiver in a :class:`ReceiverGroup`) so batched and waiting packets come
    out. :meth:`hold`, :meth:`resume` and :meth:`end` come from the session
    layer. ``on_end``, if set, is called with the receiver once it has ended.
    """

    log = Logger()

    def __init__(self, stream, consumer, clock, codec="PCMU", payload_type=None,
                 dtmf_payload_type=None, jitter_window=0.06, decoder=None,
                 comfort_noise_payload_type=COMFORT_NOISE_PT):
        codec = _check_codec(codec, payload_type)
        self.stream = stream
        self.consumer = consumer
        self.clock = clock
        self.codec = codec
        self.payload_type = STATIC_PAYLOAD_TYPES[codec] if payload_type is None else payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.cn_payload_type = comfort_noise_payload_type
        self.jitter_window = jitter_window
        self.decoder = decoder if decoder is not None else _default_decoder(codec,
                                                                            self.payload_type)
        self._set_rates()
        self.on_end = None
        self._max_buffered = max(8, int(jitter_window * 200) + 8)

        now = clock.seconds()
        self.position = 0  # next sample position to hand out
        self.ssrc = None
        self.on_hold = False
        self.ended = False
        self._created = now
        self._last_arrival = None  # last packet of the locked SSRC
        self._resumed_at = None

        # Sequence and timestamp state of the locked SSRC.
        self._starting = True
        self._first_arrival = None
        self._next_seq = None  # extended sequence number expected next
        self._max_seq = None
        self._buffer = {}  # extended seq -> _Entry
        self._heap = []
        self._concealed = set()  # recently concealed extended seqs (for "late")
        self._concealed_order = deque()
        self._ts_ref = None  # extended timestamp of the last audio placed
        self._offset = None  # position = extended timestamp + offset
        self._reanchor = False
        self._after_loss = False
        self._retired = set()
        self._candidate = None  # [ssrc, last seq, [(packet, data, arrival)]]
        self._bad_seq = None  # (expected next seq, (packet, data, arrival))

        # Wall-clock reference: arrival time minus position/8000 of the least
        # delayed packet (creeping up slowly to follow clock drift).
        self._wall = None
        self._wall_at = None

        # Jitter (RFC 3550 A.8), in timestamp units.
        self._jitter = 0.0
        self._jitter_last = None  # (arrival, ts32)
        self._last_sample = -math.inf

        # Telephone events.
        self._dtmf_open = None  # (ts, position, TelephoneEvent) not yet ended
        # (next timestamp, datagram size, samples) after the last audio packet
        # played, when the fast path may take the next one.
        self._last_played = None
        self._dtmf_done = deque(maxlen=16)

        # Fast path (see the module docstring). _fast_len == -1 means off.
        self._fast_len = -1
        self._fast_size = -1
        self._fast_b1 = -1
        self._fast_seq = -1
        self._fast_ssrc = b""
        self._fast_ts = 0
        self._fast_spp = 0
        self._fast_header = 12
        self._group_key = None
        self._sampling = False
        self._batch = []
        # Packets the fast path has taken, ever; the general state catches
        # up with them in _sync (so a tick touches one counter, not ten).
        self._fast_count = 0
        self._fast_synced = 0

        self.counters = {
            "packets": 0, "bytes": 0, "lost": 0, "late": 0, "duplicates": 0,
            "out_of_window": 0, "malformed": 0, "unknown_payload_type": 0,
            "other_ssrc": 0, "ssrc_changes": 0, "timestamp_jumps": 0,
            "sequence_restarts": 0, "dtmf_events": 0, "comfort_noise": 0,
            "concealed_samples": 0, "silence_samples": 0, "after_end": 0,
            "rtcp_packets": 0, "rtcp_malformed": 0,
        }
        self.malformed_kinds = {}
        self.rtcp = {}

    # -- input ---------------------------------------------------------

    def datagram_received(self, data, addr=None):
        """Take one RTP datagram (the signature of ``datagramReceived``).

        The in-order steady-state packet is only appended to the batch;
        everything else goes through the general path.
        """
        if (len(data) == self._fast_len and data[1] == self._fast_b1 and data[0] == 0x80
                and (data[2] << 8 | data[3]) == self._fast_seq
                and data[8:12] == self._fast_ssrc):
            self._fast_seq = (self._fast_seq + 1) & _MASK16
            self._batch.append(data)
            return
        self._slow(data)

    def _slow(self, data):
        now = self.clock.seconds()
        if self._sampling:
            self._sampling = False
            if (len(data) == self._fast_size and data[1] == self._fast_b1 and data[0] == 0x80
                    and (data[2] << 8 | data[3]) == self._fast_seq
                    and data[8:12] == self._fast_ssrc):
                # The one packet timed on the fast path: stats, then batch it.
                ahead = len(self._batch) * self._fast_spp
                (ts,) = _TS.unpack_from(data, 4)
                if ts == (self._fast_ts + ahead) & _MASK32:
                    self._time_packet(now, ts, self.position + ahead * self._ratio)
                    self._last_sample = now
                    self._fast_seq = (self._fast_seq + 1) & _MASK16
                    self._fast_len = self._fast_size
                    self._batch.append(data)
                    return
        self._general(data, now)

    def receive(self, data):
        """Same as :meth:`datagram_received`, for callers without an address."""
        self.datagram_received(data)

    def receive_rtcp(self, data, addr=None):
        """Take one RTCP datagram: its reports go into :meth:`stats`."""
        try:
            packets = parse_rtcp(data)
        except MalformedPacket:
            self.counters["rtcp_malformed"] += 1
            return
        self.counters["rtcp_packets"] += 1
        rtcp = self.rtcp
        for p in packets:
            if isinstance(p, SenderReport):
                rtcp["sender_ssrc"] = p.ssrc
                rtcp["sender_packets"] = p.packet_count
                rtcp["sender_octets"] = p.octet_count
            if isinstance(p, (SenderReport, ReceiverReport)) and p.reports:
                block = p.reports[0]
                rtcp["fraction_lost"] = block.fraction_lost / 256.0
                rtcp["cumulative_lost"] = block.cumulative_lost
                rtcp["jitter_ms"] = block.jitter * 1000.0 / self.clock_rate
            if isinstance(p, Goodbye):
                rtcp["bye"] = rtcp.get("bye", 0) + 1

    def poll(self, now=None):
        """Hand out batched audio and gaps whose wait is over."""
        if now is None:
            now = self.clock.seconds()
        if self._batch:
            self._flush(now)
        self._sync()
        if self._buffer:
            self._release(now)
        if self._candidate is not None:
            self._expire_candidate(now)

    # -- session events ------------------------------------------------

    def hold(self):
        """The call went on hold: RTP silence from now on is expected."""
        if self.ended or self.on_hold:
            return
        now = self.clock.seconds()
        self.poll(now)
        self.on_hold = True
        self._event("hold", self.position, None)

    def resume(self):
        """The call came off hold: the time it spent there becomes silence,
        and the next packet is placed by its arrival time."""
        if self.ended or not self.on_hold:
            return
        now = self.clock.seconds()
        self.poll(now)
        self._release(now, force=True)
        self.on_hold = False
        self._resumed_at = now
        self._jitter_last = None
        if self._offset is not None:
            target = self._wall_position(now)
            if target > self.position:
                self._fill(target - self.position, conceal=False)
            self._reanchor = True
            self._disarm()
        self._event("resume", self.position, None)

    def end(self, reason="ended"):
        """The stream is over: hand out what is left, then an "end" event."""
        if self.ended:
            return
        now = self.clock.seconds()
        self.poll(now)
        self._release(now, force=True)
        self._close_dtmf()
        self.ended = True
        self._disarm()
        self._expire_candidate(now, force=True)
        self._event("end", self.position, {"reason": reason})
        if self.on_end is not None:
            self.on_end(self)

    def renegotiate(self, codec=None, payload_type=None, dtmf_payload_type=None):
        """New payload types (and perhaps a new codec) from a re-INVITE.

        Audio already received is handed out first; a new codec gets a new
        decoder (made by ``codecs.make_decoder``). None keeps a value; to
        drop telephone events pass ``dtmf_payload_type=-1``.
        """
        now = self.clock.seconds()
        self.poll(now)
        self._release(now, force=True)
        self._disarm()
        self._last_played = None
        if codec is not None and str(codec).upper() != self.codec:
            codec = _check_codec(codec, payload_type)
            self.decoder.close()
            self.decoder = _default_decoder(codec, payload_type)
            self.codec = codec
            rates = (self.rate, self.clock_rate)
            self._set_rates()
            if (self.rate, self.clock_rate) != rates:
                self._change_rates(*rates)
            if payload_type is None:
                payload_type = STATIC_PAYLOAD_TYPES[codec]
        if payload_type is not None:
            self.payload_type = payload_type
        if dtmf_payload_type is not None:
            self.dtmf_payload_type = None if dtmf_payload_type < 0 else dtmf_payload_type

    def _set_rates(self):
        self.rate = getattr(self.decoder, "sample_rate", SAMPLE_RATE)
        self.clock_rate = getattr(self.decoder, "clock_rate", SAMPLE_RATE)
        # PCM samples per RTP timestamp unit (2 for G.722).
        self._ratio = max(1, self.rate // self.clock_rate)
        self._g729 = self.codec == "G729"
        self._opus = self.codec == "OPUS"

    def _change_rates(self, old_rate, old_clock):
        """A codec switch changed the PCM rate or the RTP clock: the timeline
        so far is converted to the new rate (the same time, in new samples)
        and the next packet is placed by its arrival time, since timestamps
        of another clock say nothing about the old ones."""
        self._close_dtmf()
        self.position = int(round(self.position * self.rate / old_rate))
        self._ts_ref = None
        self._jitter = self._jitter * self.clock_rate / old_clock
        self._jitter_last = None
        if self._offset is not None:
            self._reanchor = True
        self._disarm()

    @property
    def idle_since(self):
        """When the stream last showed life; None while on hold or ended."""
        if self.on_hold or self.ended:
            return None
        times = [t for t in (self._created, self._last_arrival, self._resumed_at) if t is not None]
        return max(times)

    def shift_clock(self, jump, before):
        """The wall clock stepped forward by *jump* s at *before*: times of
        life seen before the step move with it, so the step itself does not
        count as silence."""
        for name in ("_created", "_last_arrival", "_resumed_at"):
            value = getattr(self, name)
            if value is not None and value < before:
                setattr(self, name, value + jump)

    def check_idle(self, timeout, now=None):
        """End the stream ("timeout") if it has been idle for *timeout*
        seconds and is not on hold; return True if it ended."""
        if now is None:
            now = self.clock.seconds()
        if self._candidate is not None:
            self._expire_candidate(now)
        since = self.idle_since
        if since is None:
            return False
        if now - since >= timeout:
            self.end("timeout")
            return True
        return False

    def stats(self):
        """Counters, jitter and peer-reported RTCP values as a plain dict.

        ``packets``/``bytes``: RTP packets (payload octets) of the stream's
        SSRC, duplicates and late ones included, as RTCP counts them.
        ``lost``: packets missing when their turn came (concealed); ``late``:
        those of them that came afterwards (dropped). ``duplicates``;
        ``out_of_window``: sequence numbers too far off to place;
        ``malformed`` (by cause in ``malformed_kinds``),
        ``unknown_payload_type``, ``other_ssrc`` (strays not taken over);
        ``jitter_ms``: RFC 3550 interarrival jitter (see the module
        docstring); ``position``/``audio_ms``: the timeline so far;
        ``rtcp``: what the sender's last SR/RR said (``sender_packets``,
        ``sender_octets``, ``fraction_lost``, ``cumulative_lost``,
        ``jitter_ms``).
        """
        self._sync()
        out = dict(self.counters)
        out["ssrc"] = self.ssrc
        out["jitter_ms"] = self._jitter * 1000.0 / self.clock_rate
        out["position"] = self.position
        out["rate"] = self.rate
        out["audio_ms"] = self.position * 1000 // self.rate
        out["malformed_kinds"] = dict(self.malformed_kinds)
        out["on_hold"] = self.on_hold
        out["rtcp"] = dict(self.rtcp)
        return out

    # -- general path --------------------------------------------------

    def _general(self, data, now):
        if looks_like_rtcp(data):
            self.receive_rtcp(data)
            return
        try:
            packet = parse_rtp(data)
        except MalformedPacket as e:
            self.counters["malformed"] += 1
            self.malformed_kinds[e.kind] = self.malformed_kinds.get(e.kind, 0) + 1
            return
        if self._batch:
            self._flush(now)
        self._sync()
        if self.ended:
            self.counters["after_end"] += 1
            return
        pt = packet.payload_type
        if pt != self.payload_type and pt != self.dtmf_payload_type and pt != self.cn_payload_type:
            self.counters["unknown_payload_type"] += 1
            return
        if self.ssrc is None:
            self.ssrc = packet.ssrc
        elif packet.ssrc != self.ssrc:
            # Dropped or held back: the fast path may go on for our own.
            self._consider_candidate(packet, data, now)
            return
        self._disarm()
        self._accept(packet, now, data[0] == 0x80, len(data))

    def _accept(self, packet, now, simple, size, counted=False):
        counters = self.counters
        if not counted:
            counters["packets"] += 1
            counters["bytes"] += len(packet.payload)
        self._last_arrival = now
        if self._next_seq is None:
            # First packet of this SSRC.
            self._next_seq = self._max_seq = 0x10000 + packet.sequence
            self._first_arrival = now
        diff = _signed16(packet.sequence - self._next_seq)
        is_dtmf = packet.payload_type == self.dtmf_payload_type
        if diff > MAX_DROPOUT or diff < -MAX_MISORDER:
            self._unexpected_sequence(packet, now, simple, size)
            return
        self._bad_seq = None
        ext = self._next_seq + diff
        if ext < self._next_seq:
            if self._starting:
                # Still waiting to start: an earlier packet moves the start.
                self._next_seq = ext
            else:
                if is_dtmf:
                    pass  # RFC 4733 repeats of an end packet: expected
                elif ext in self._concealed:
                    self._concealed.discard(ext)
                    counters["late"] += 1
                else:
                    counters["duplicates"] += 1
                return
        if ext in self._buffer:
            if not is_dtmf:
                counters["duplicates"] += 1
            return
        if ext > self._max_seq:
            self._max_seq = ext
        self._buffer[ext] = _Entry(packet, now, simple, size)
        heapq.heappush(self._heap, ext)
        self._release(now)

    def _unexpected_sequence(self, packet, now, simple, size):
        """A sequence number far from the expected one: stray, or a restart
        of the sender (RFC 3550 A.1 accepts it after a second in sequence)."""
        bad = self._bad_seq
        if bad is not None and packet.sequence == bad[0]:
            self._bad_seq = None
            self.counters["sequence_restarts"] += 1
            self._release(now, force=True)
            self._restart_sequence()
            self._reanchor = self._offset is not None
            first_packet, first_now, first_simple, first_size = bad[1]
            self._accept(first_packet, first_now, first_simple, first_size, counted=True)
            self._accept(packet, now, simple, size, counted=True)
            return
        self.counters["out_of_window"] += 1
        self._bad_seq = ((packet.sequence + 1) & _MASK16, (packet, now, simple, size))

    def _restart_sequence(self):
        self._next_seq = None
        self._max_seq = None
        self._buffer.clear()
        self._heap.clear()
        self._concealed.clear()
        self._concealed_order.clear()
        self._ts_ref = None
        self._jitter_last = None

    def _consider_candidate(self, packet, data, now):
        cand = self._candidate
        if cand is not None and cand[0] == packet.ssrc and packet.sequence == (cand[1] + 1) & _MASK16:
            cand[1] = packet.sequence
            cand[2].append((packet, data, now))
            if len(cand[2]) > 16:
                cand[2].pop(0)
                self.counters["other_ssrc"] += 1
        else:
            if cand is not None:
                self.counters["other_ssrc"] += len(cand[2])
            cand = self._candidate = [packet.ssrc, packet.sequence, [(packet, data, now)]]
        if len(cand[2]) < PROBATION:
            return
        if packet.ssrc in self._retired and self._last_arrival is not None \
                and now - self._last_arrival < self.jitter_window:
            # A source we left is still interleaved with the current one
            # (packets reordered around a switch): not a new takeover.
            return
        self._switch_ssrc(cand, now)

    def _expire_candidate(self, now, force=False):
        """A would-be new source that stopped before it took over was a
        stray: its packets count as from another SSRC."""
        cand = self._candidate
        if cand is not None and (force or now - cand[2][-1][2] > max(self.jitter_window, 0.5)):
            self._candidate = None
            self.counters["other_ssrc"] += len(cand[2])

    def _switch_ssrc(self, cand, now):
        self._candidate = None
        self._disarm()
        self._release(now, force=True)
        self._close_dtmf()
        old = self.ssrc
        self._retired.add(old)
        self.ssrc = cand[0]
        self.counters["ssrc_changes"] += 1
        self._restart_sequence()
        self._starting = False
        first_packet, _, first_now = cand[2][0]
        if self._offset is not None:
            self._reanchor = True
            position = max(self.position, self._wall_position(first_now))
        else:
            position = 0
        self._event("ssrc", position, {"ssrc": cand[0], "previous": old})
        for packet, data, arrival in cand[2]:
            self._accept(packet, arrival, data[0] == 0x80, len(data))

    def _release(self, now, force=False):
        buffer = self._buffer
        heap = self._heap
        if not buffer:
            return
        if self._starting:
            if not force and now - self._first_arrival < self.jitter_window \
                    and len(buffer) < self._max_buffered:
                return
            self._starting = False
            self._next_seq = heap[0]
        while heap:
            seq = heap[0]
            entry = buffer[seq]
            if seq > self._next_seq:
                if not force and now - entry.arrival < self.jitter_window \
                        and len(buffer) < self._max_buffered:
                    break
                gap = seq - self._next_seq
                self.counters["lost"] += gap
                self._after_loss = True
                for missing in range(max(self._next_seq, seq - MAX_MISORDER), seq):
                    self._concealed.add(missing)
                    self._concealed_order.append(missing)
                while len(self._concealed_order) > MAX_MISORDER:
                    self._concealed.discard(self._concealed_order.popleft())
            heapq.heappop(heap)
            del buffer[seq]
            self._next_seq = seq + 1
            self._play(entry, now)
        if not buffer and self._fast_len == -1:
            self._arm_from_last()

    # -- playing packets -------------------------------------------------

    def _play(self, entry, now):
        packet = entry.packet
        pt = packet.payload_type
        if pt == self.payload_type:
            self._play_audio(entry)
        elif pt == self.dtmf_payload_type:
            self._play_dtmf(packet)
        else:
            self.counters["comfort_noise"] += 1
            self._anchor_if_needed(packet.timestamp)
            self._after_silence()

    def _extend_ts(self, ts):
        if self._ts_ref is None:
            return 0x100000000 + ts
        return self._ts_ref + _signed32(ts - self._ts_ref)

    def _anchor_if_needed(self, ts):
        if self._offset is None:
            self._offset = -self._extend_ts(ts) * self._ratio

    def _after_silence(self):
        self._last_played = None
        self._after_loss = False

    def _play_audio(self, entry):
        packet = entry.packet
        payload = packet.payload
        if self._g729:
            frames, rest = divmod(len(payload), 10)
            if rest not in (0, 2):
                self.counters["malformed"] += 1
                self.malformed_kinds["payload"] = self.malformed_kinds.get("payload", 0) + 1
            count = frames * 80
            audio = payload[:frames * 10]
            sid = rest == 2
        elif self._opus:
            count = self.decoder.samples_in(payload)
            if count is None:
                count = 0
                self.counters["malformed"] += 1
                self.malformed_kinds["payload"] = self.malformed_kinds.get("payload", 0) + 1
            audio = payload
            sid = False
        else:
            count = len(payload) * self._ratio   # a byte is one sample (two for G.722)
            audio = payload
            sid = False
        ts = self._extend_ts(packet.timestamp)
        scaled = ts * self._ratio
        arrival = entry.arrival
        if self._offset is None:
            self._offset = -scaled
        elif self._reanchor:
            self._reanchor = False
            self._offset = max(self.position, self._wall_position(arrival)) - scaled
        position = scaled + self._offset
        if position < self.position:
            # Timestamps went back: keep the audio, shift the timeline.
            self.counters["timestamp_jumps"] += 1
            self._jitter_last = None
            self._offset += self.position - position
            position = self.position
        elif position > self.position:
            if (self._wall is not None
                    and position - self._wall_position(arrival) > MAX_AHEAD_SECONDS * self.rate):
                self.counters["timestamp_jumps"] += 1
                self._jitter_last = None
                new = max(self.position, self._wall_position(arrival))
                self._offset += new - position
                position = new
            if position > self.position:
                self._fill(position - self.position, conceal=self._after_loss)
        self._ts_ref = ts
        self._after_loss = False
        if count:
            self._emit(self.decoder.decode(audio))
        self._time_packet(arrival, packet.timestamp, position)
        ticks = count // self._ratio
        if count and not sid and entry.simple and len(payload) == entry.size - 12:
            # What the next packet looks like if the stream goes on steadily.
            self._last_played = ((packet.timestamp + ticks) & _MASK32, entry.size, ticks)
        else:
            self._last_played = None

    def _play_dtmf(self, packet):
        try:
            event = parse_telephone_event(packet.payload)
        except MalformedPacket as e:
            self.counters["malformed"] += 1
            self.malformed_kinds[e.kind] = self.malformed_kinds.get(e.kind, 0) + 1
            return
        self._anchor_if_needed(packet.timestamp)
        if self._reanchor:
            position = self.position
        else:
            position = max(0, self._extend_ts(packet.timestamp) * self._ratio + self._offset)
        ts = packet.timestamp
        if self._dtmf_open is not None and self._dtmf_open[0] != ts:
            self._close_dtmf()
        if event.end:
            self._dtmf_open = None
            if ts not in self._dtmf_done:
                self._dtmf_done.append(ts)
                self._report_dtmf(position, event)
        elif ts not in self._dtmf_done:
            self._dtmf_open = (ts, position, event)
        self._after_silence()

    def _close_dtmf(self):
        """An event whose end packets were all lost ends when the next one
        starts, or with the stream (RFC 4733 §2.5.2.2)."""
        if self._dtmf_open is not None:
            ts, position, event = self._dtmf_open
            self._dtmf_open = None
            self._dtmf_done.append(ts)
            self._report_dtmf(position, event)

    def _report_dtmf(self, position, event):
        self.counters["dtmf_events"] += 1
        self._event("dtmf", position, {"digit": event.digit, "duration": event.duration})

    # -- output ----------------------------------------------------------

    def _emit(self, samples):
        n = len(samples)
        if not n:
            return
        position = self.position
        self.position = position + n
        try:
            self.consumer.pcm(self.stream, position, samples, self.rate)
        except Exception:
            self.log.failure("stream consumer failed on PCM", stream=self.stream)

    def _event(self, kind, position, detail):
        try:
            self.consumer.event(self.stream, kind, position, detail)
        except Exception:
            self.log.failure("stream consumer failed on event {kind}", kind=kind,
                             stream=self.stream)

    def _fill(self, count, conceal):
        if conceal:
            self.counters["concealed_samples"] += count
            # Concealment beyond a few frames is silence anyway.
            first = min(count, int(CONCEAL_SECONDS * self.rate))
            self._emit(np.asarray(self.decoder.conceal(first), dtype=np.int16))
            count -= first
        else:
            self.counters["silence_samples"] += count
        while count > 0:
            n = min(count, FILL_CHUNK * self._ratio)
            self._emit(np.zeros(n, dtype=np.int16))
            count -= n

    # -- timing ------------------------------------------------------------

    def _wall_position(self, now):
        if self._wall is None:
            return self.position
        return int(round((now - self._wall) * self.rate))

    def _time_packet(self, arrival, ts, position):
        """Jitter and the wall-clock reference, from one timed audio packet."""
        last = self._jitter_last
        if last is not None:
            d = (arrival - last[0]) * self.clock_rate - _signed32(ts - last[1])
            self._jitter += (abs(d) - self._jitter) / 16.0
        self._jitter_last = (arrival, ts)
        offset = arrival - position / self.rate
        if self._wall is None or offset < self._wall:
            self._wall = offset
        else:
            self._wall = min(offset, self._wall + (arrival - self._wall_at) * WALL_CREEP)
        self._wall_at = arrival

    # -- fast path ---------------------------------------------------------

    def _disarm(self):
        self._fast_len = -1
        self._sampling = False

    def _arm_from_last(self):
        """Let the fast path take the packet after the last one played, if
        the stream is in its steady state."""
        last = self._last_played
        if last is None or self._reanchor or self.ended or self._bad_seq is not None:
            return
        next_ts, size, count = last
        self._fast_size = self._fast_len = size
        self._fast_b1 = self.payload_type
        self._fast_seq = self._next_seq & _MASK16
        self._fast_ssrc = struct.pack("!I", self.ssrc)
        self._fast_ts = next_ts
        self._fast_spp = count
        self._fast_header = 12
        self._group_key = (self.codec, size) if self.codec in STATELESS_CODECS else None
        self._sampling = False

    def _flush(self, now):
        """Decode this stream's batch on its own (before the general path)."""
        batch = self._batch[:]
        self._batch.clear()
        spp = self._fast_spp
        ts = self._fast_ts
        good = 0
        for data in batch:
            if _TS.unpack_from(data, 4)[0] != ts:
                break
            ts = (ts + spp) & _MASK32
            good += 1
        if good:
            header = self._fast_header
            taken = batch if good == len(batch) else batch[:good]
            self._take_batch(good, self.decoder.decode_many([d[header:] for d in taken]), now)
        if good < len(batch):
            self._replay(batch[good:], now)

    def _replay(self, rest, now):
        self._disarm()
        self._last_played = None
        for data in rest:
            self._general(data, now)

    def _take_batch(self, n, samples, now):
        """Account for *n* batched packets whose PCM is *samples*.

        ReceiverGroup._flush_group does the same inline.
        """
        self._fast_count += n
        self._fast_ts = (self._fast_ts + n * self._fast_spp) & _MASK32
        self._last_arrival = now  # batched packets have no time of their own
        self._emit(samples)
        if now - self._last_sample >= JITTER_SAMPLE_INTERVAL and self._fast_len != -1:
            self._sampling = True
            self._fast_len = -1

    def _sync(self):
        """Bring the general state up to date with what the fast path took."""
        n = self._fast_count - self._fast_synced
        if not n:
            return
        self._fast_synced = self._fast_count
        spp = self._fast_spp
        counters = self.counters
        counters["packets"] += n
        counters["bytes"] += n * (self._fast_size - self._fast_header)
        self._next_seq += n
        self._max_seq = self._next_seq - 1
        self._ts_ref += n * spp
        self._last_played = (self._fast_ts, self._fast_size, spp)


class ReceiverGroup:
    """The receivers of one process, served by one shared tick.

    :meth:`tick` decodes every stream's batch (all G.711 streams of a codec
    and packet size in one table lookup), releases gaps whose wait is over
    and, every *idle_check* seconds, ends streams idle for *rtp_timeout*
    seconds that are not on hold. A transport calls it from a LoopingCall.
    """

    log = Logger()

    def __init__(self, clock, rtp_timeout=None, idle_check=1.0, decoder_factory=None):
        self.clock = clock
        self.rtp_timeout = rtp_timeout
        self.idle_check = idle_check
        self.receivers = {}  # insertion-ordered set
        self._snapshot = ()
        self._decoders = {}
        self._pair_tables = {}
        self._decoder_factory = decoder_factory or _default_decoder
        self._next_idle_check = clock.seconds() + idle_check
        # (wall, monotonic) at the last idle check: a wall-clock step
        # forward (NTP) must not look like silence on every stream.
        self.monotonic = monotonic_for(clock)
        self._last_idle_check = None

    def add(self, receiver):
        self.receivers[receiver] = None
        self._snapshot = None

    def discard(self, receiver):
        if self.receivers.pop(receiver, 0) is None:
            self._snapshot = None

    def __len__(self):
        return len(self.receivers)

    def tick(self):
        now = self.clock.seconds()
        receivers = self._snapshot
        if receivers is None:
            receivers = self._snapshot = tuple(self.receivers)
        groups = {}
        others = []
        for r in receivers:
            batch = r._batch
            if batch:
                key = r._group_key
                if key is None:
                    others.append(r)
                    continue
                group = groups.get(key)
                if group is None:
                    group = groups[key] = ([], [], [], [])
                group[0].append(r)
                group[1].extend(batch)
                group[2].append(len(batch))
                group[3].append(r._fast_ts)
                # The same list again next time: a new one per tick would
                # live just long enough to reach the oldest GC generation
                # and make full collections frequent.
                batch.clear()
                if len(group[1]) >= CHUNK_PACKETS:
                    del groups[key]
                    self._flush_group_guarded(key, group, now)
            elif r._buffer:
                others.append(r)
        for key, group in groups.items():
            self._flush_group_guarded(key, group, now)
        for r in others:
            self._guard(r.poll, now)
        if self.rtp_timeout is not None and now >= self._next_idle_check:
            self._next_idle_check = now + self.idle_check
            self._check_idle(now)

    def _flush_group_guarded(self, key, group, now):
        try:
            self._flush_group(key, group, now)
        except Exception:
            # Nothing was handed out yet: give each stream its batch back
            # and let it decode on its own.
            self.log.failure("batch decode failed; decoding stream by stream")
            at = 0
            for r, n in zip(group[0], group[2]):
                r._batch[:0] = group[1][at:at + n]
                at += n
                self._guard(r.poll, now)

    def _check_idle(self, now):
        mono = self.monotonic()
        last, self._last_idle_check = self._last_idle_check, (now, mono)
        if last is not None:
            jump = (now - last[0]) - (mono - last[1])
            if jump > 1.0:
                self.log.warn("the wall clock stepped forward {jump:.1f} s; RTP timeouts "
                              "do not count the step", jump=jump)
                for r in tuple(self.receivers):
                    self._guard(r.shift_clock, jump, now - (mono - last[1]))
        for r in tuple(self.receivers):
            if self._guard(r.check_idle, self.rtp_timeout, now):
                self.discard(r)

    def _guard(self, f, *args):
        try:
            return f(*args)
        except Exception:
            self.log.failure("stream receiver failed")

    def _decoder(self, codec):
        d = self._decoders.get(codec)
        if d is None:
            d = self._decoders[codec] = self._decoder_factory(codec)
        return d

    def _pair_table(self, codec):
        """The decoder's output for every pair of G.711 bytes, as one uint32
        per pair: one lookup then decodes two samples (half the lookups of
        the byte table, and its 256 KiB still sit in cache)."""
        table = self._pair_tables.get(codec)
        if table is None:
            pairs = np.arange(1 << 16, dtype=np.uint16).tobytes()
            pcm = np.asarray(self._decoder(codec).decode(pairs), dtype=np.int16)
            table = self._pair_tables[codec] = np.ascontiguousarray(pcm).view(np.uint32)
        return table

    def _flush_group(self, key, group, now):
        codec, size = key
        rs, flat, counts, first_ts = group
        rows = np.frombuffer(b"".join(flat), np.uint8).reshape(-1, size)
        total = rows.shape[0]
        spp = size - 12
        # Every packet's timestamp must continue its stream's timeline exactly.
        ts = np.ascontiguousarray(rows[:, 4:8]).view(">u4").ravel().astype(np.int64)
        counts_np = np.array(counts, dtype=np.int64)
        starts = np.cumsum(counts_np) - counts_np
        expected = np.repeat(np.array(first_ts, dtype=np.int64) - starts * spp, counts_np)
        expected += np.arange(total, dtype=np.int64) * spp
        stream_ok = np.logical_and.reduceat(((ts - expected) & _MASK32) == 0, starts).tolist()
        payload = rows[:, 12:]
        if spp % 2 == 0:
            pcm = self._pair_table(codec).take(payload.view(np.uint16)).view(np.int16).reshape(-1)
        else:
            pcm = np.asarray(self._decoder(codec).decode(payload.tobytes()), dtype=np.int16)
        at = 0
        for r, n, ok in zip(rs, counts, stream_ok):
            if r.ended:
                pass  # ended by a consumer during this tick: its audio is late
            elif ok:
                samples = pcm[at:at + n * spp].copy()
                r._fast_count += n
                r._fast_ts = (r._fast_ts + n * spp) & _MASK32
                r._last_arrival = now
                position = r.position
                r.position = position + n * spp
                try:
                    r.consumer.pcm(r.stream, position, samples, r.rate)
                except Exception:
                    self.log.failure("stream consumer failed on PCM", stream=r.stream)
                if now - r._last_sample >= JITTER_SAMPLE_INTERVAL and r._fast_len != -1:
                    r._sampling = True
                    r._fast_len = -1
            else:
                r._batch[:0] = flat[at // spp:at // spp + n]
                self._guard(r.poll, now)
            at += n * spp
