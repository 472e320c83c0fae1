"""RTP for the simulator: what each stream sends, when, and how it is impaired.

A stream is planned in full before the call starts, as a list of packets
on a grid of 20 ms slots along the call's timeline (RFC 3550 header, RFC
3551 payloads, RFC 4733 telephone-events). Holds leave a gap of slots in
which nothing is sent (the RTP timestamp goes on counting, so the receiver
sees the true call time); a DTMF digit takes the slots of the audio it
replaces. Impairments are then decided packet by packet from a seeded
:class:`random.Random`, so that a given seed always loses, delays and
reorders the same packets. Sending is a :class:`Pacer` on the reactor's
clock, optionally faster than real time.

Planning ahead keeps the per-packet work at send time to one
``transport.write``, and makes every count in the summary exact rather
than dependent on timing.
"""

import struct

import attrs
import pylibsrtp

from siprecd.media.srtp import SUITES

__all__ = [
    "CLOCK_RATE",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "DTMF_EVENTS",
    "Impairments",
    "Packet",
    "Dtmf",
    "plan_stream",
    "impair",
    "ImpairmentCounts",
    "rtp_header",
    "telephone_event",
    "rtcp_sender_report",
    "rtcp_bye",
    "srtp_sender",
    "Pacer",
]

CLOCK_RATE = 8000
FRAME_SAMPLES = 160          # 20 ms at 8 kHz
FRAME_SECONDS = FRAME_SAMPLES / CLOCK_RATE
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

# RFC 4733 §3.2: DTMF named events.
DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11,
               "A": 12, "B": 13, "C": 14, "D": 15}
DTMF_VOLUME = 10             # -10 dBm0, what most SBCs send
END_REPEATS = 3              # RFC 4733 §2.5.1.4: the final packet, three times


def rtp_header(payload_type, seq, timestamp, ssrc, marker=False):
    """The fixed 12-byte RTP header (RFC 3550 §5.1), version 2, no CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type,
                       seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)


def telephone_event(event, end, duration, volume=DTMF_VOLUME):
    """An RFC 4733 §2.3 payload: event, E bit, volume, duration (in samples)."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


@attrs.frozen
class Packet:
    slot: int          # 20 ms slot on the call timeline (send time = slot * 20 ms)
    kind: str          # "audio" or "dtmf"
    seq: int           # sequence number (before the 16-bit wrap)
    data: bytes        # the whole RTP packet
    payload_size: int


@attrs.frozen
class Dtmf:
    """A digit to send: *slot* where its first packet goes, *frames* its
    length in 20 ms packets (before the end packet's two repeats)."""

    slot: int
    digit: str
    frames: int = 5


def _dtmf_packets(dtmf, payload_type, ticks=FRAME_SAMPLES):
    """[(slot offset, payload, marker)] for one digit (RFC 4733 §2.5).

    Every packet of the event carries the timestamp of its start; the
    duration grows by 160 samples per packet; the last one has the E bit
    and goes out three times with the same duration.
    """
    event = DTMF_EVENTS[dtmf.digit.upper()]
    out = []
    for j in range(dtmf.frames):
        last = j == dtmf.frames - 1
        out.append((j, telephone_event(event, last, (j + 1) * ticks), j == 0))
    final = out[-1][1]
    out += [(dtmf.frames - 1 + r, final, False) for r in range(1, END_REPEATS)]
    return out


def dtmf_slots(dtmf):
    """Slots one digit occupies (its packets, the end repeats included)."""
    return dtmf.frames + END_REPEATS - 1


def plan_stream(payloads, *, payload_type, ssrc, first_seq, first_timestamp,
                hold=None, dtmf=(), event_payload_type=101, ticks_per_slot=FRAME_SAMPLES):
    """Every packet of one stream, in sending order.

    *ticks_per_slot* is how far the RTP timestamp moves in 20 ms (160 on
    an 8 kHz clock, G.722's included; 960 for Opus's 48 kHz clock).

    *payloads* holds one encoded 20 ms frame per slot of audio; *hold* is
    ``(first slot, slots)`` during which nothing is sent and the audio
    pauses; *dtmf* is a sequence of :class:`Dtmf` whose packets replace the
    audio of their slots (the audio position moves on, as on a real call
    where the tone replaces the speech).
    """
    hold_start, hold_slots = hold if hold else (len(payloads) + 1, 0)
    events = {}
    for d in dtmf:
        for offset, payload, marker in _dtmf_packets(d, event_payload_type, ticks_per_slot):
            events.setdefault(d.slot + offset, []).append((payload, marker, d.slot))
    total = len(payloads) + hold_slots
    packets = []
    seq = first_seq
    marker = True  # first packet of the stream, and the first after a hold
    for slot in range(total):
        if hold_start <= slot < hold_start + hold_slots:
            marker = True
            continue
        if slot in events:
            for payload, event_marker, start in events[slot]:
                ts = first_timestamp + start * ticks_per_slot
                data = rtp_header(event_payload_type, seq, ts, ssrc, event_marker) + payload
                packets.append(Packet(slot, "dtmf", seq, data, len(payload)))
                seq += 1
            continue
        frame = slot if slot < hold_start else slot - hold_slots
        payload = payloads[frame]
        ts = first_timestamp + slot * ticks_per_slot
        packets.append(Packet(slot, "audio", seq,
                              rtp_header(payload_type, seq, ts, ssrc, marker) + payload,
                              len(payload)))
        marker = False
        seq += 1
    return packets


@attrs.frozen
class Impairments:
    """Network trouble to simulate: *loss* and *reorder* in percent of
    packets, *jitter_ms* the most a packet is delayed (uniformly 0..max)."""

    loss: float = attrs.field(default=0.0, validator=lambda i, a, v: _percent(a.name, v))
    jitter_ms: float = attrs.field(default=0.0, validator=lambda i, a, v: _non_negative(a.name, v))
    reorder: float = attrs.field(default=0.0, validator=lambda i, a, v: _percent(a.name, v))

    @property
    def any(self):
        return bool(self.loss or self.jitter_ms or self.reorder)

    def describe(self):
        if not self.any:
            return "none"
        return f"loss {self.loss:g}%, jitter {self.jitter_ms:g} ms, reorder {self.reorder:g}%"


def _percent(name, value):
    if not 0 <= value <= 100:
        raise ValueError(f"{name} must be a percentage from 0 to 100, got {value}")


def _non_negative(name, value):
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {value}")


@attrs.define
class ImpairmentCounts:
    planned: int = 0
    lost: int = 0
    reordered: int = 0      # packets deliberately sent after their successor
    delayed: int = 0        # packets given a jitter delay above zero
    max_delay_ms: float = 0.0


def impair(packets, impairments, rng):
    """Decide what happens to each packet: ``([(send time, packet)] in
    sending order, ImpairmentCounts)``; times are seconds of call time.

    Three numbers are drawn per packet, in order, whatever is enabled, so
    turning one impairment on does not change the decisions of another.
    A reordered packet swaps places with the next one (never with a lost
    one, and never twice in a row, so each counted swap is a real one).
    """
    counts = ImpairmentCounts(planned=len(packets))
    loss, reorder = impairments.loss / 100.0, impairments.reorder / 100.0
    jitter = impairments.jitter_ms / 1000.0
    lost, swap, delay = [], [], []
    for _ in packets:
        lost.append(rng.random() < loss)
        swap.append(rng.random() < reorder)
        delay.append(rng.random() * jitter)
    keyed = []
    i, n = 0, len(packets)
    while i < n:
        if lost[i]:
            counts.lost += 1
            i += 1
            continue
        t = packets[i].slot * FRAME_SECONDS + delay[i]
        if delay[i] > 0:
            counts.delayed += 1
            counts.max_delay_ms = max(counts.max_delay_ms, delay[i] * 1000.0)
        if swap[i] and i + 1 < n and not lost[i + 1]:
            t_next = packets[i + 1].slot * FRAME_SECONDS + delay[i + 1]
            if delay[i + 1] > 0:
                counts.delayed += 1
                counts.max_delay_ms = max(counts.max_delay_ms, delay[i + 1] * 1000.0)
            first, second = min(t, t_next), max(t, t_next)
            keyed.append((first, 0, i + 1, packets[i + 1]))
            keyed.append((second, 1, i, packets[i]))
            counts.reordered += 1
            i += 2
            continue
        keyed.append((t, 0, i, packets[i]))
        i += 1
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [(t, p) for t, _, _, p in keyed], counts


# -- RTCP (RFC 3550 §6.4.1, §6.5, §6.6) -----------------------------------------


def _ntp(seconds):
    whole = int(seconds)
    fraction = int((seconds - whole) * (1 << 32)) & 0xFFFFFFFF
    return (whole + NTP_EPOCH_OFFSET) & 0xFFFFFFFF, fraction


def _sdes_cname(ssrc, cname):
    text = cname.encode("utf-8")[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def rtcp_sender_report(ssrc, wallclock, rtp_timestamp, packets, octets, cname):
    """A compound RTCP packet: SR (no report blocks) followed by SDES CNAME."""
    msw, lsw = _ntp(wallclock)
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, msw, lsw,
                     rtp_timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)
    return sr + _sdes_cname(ssrc, cname)


def rtcp_bye(ssrc, wallclock, rtp_timestamp, packets, octets, cname):
    """The last compound RTCP packet of a stream: SR, SDES, BYE."""
    return (rtcp_sender_report(ssrc, wallclock, rtp_timestamp, packets, octets, cname)
            + struct.pack("!BBHI", 0x81, 203, 1, ssrc))


# -- SRTP ---------------------------------------------------------------------


def srtp_sender(suite, key):
    """A libsrtp session that protects what one stream sends (SRTP and
    SRTCP) with *key* (master key || salt) under the named *suite*."""
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=SUITES[suite].profile)
    # Impairments may send a packet after its successor: not a replay.
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy=policy)


# -- pacing ---------------------------------------------------------------------


class Pacer:
    """Runs ``(call time, function, argument)`` entries on the reactor's
    clock, *speed* times faster than real time.

    Times are measured from ``start()`` and every wake-up sends all that is
    due, so lateness never accumulates: a slow reactor turn makes the next
    batch bigger, not the whole stream later. *done* is called once the
    last entry has run (not when stopped).
    """

    # Wake at most this often (real seconds): at high speeds packets go
    # out in small batches instead of one timer per packet.
    min_interval = 0.001

    def __init__(self, clock, entries, speed=1.0, done=None):
        if speed <= 0:
            raise ValueError(f"speed must be above 0, got {speed}")
        self.clock = clock
        self.entries = sorted(entries, key=lambda e: e[0])
        self.speed = float(speed)
        self.done = done
        self.started_at = None
        self._next = 0
        self._call = None
        self.stopped = False

    def start(self):
        self.started_at = self.clock.seconds()
        self._tick()

    def now(self):
        """Call time: seconds since start, scaled by speed."""
        return (self.clock.seconds() - self.started_at) * self.speed

    def _tick(self):
        self._call = None
        if self.stopped:
            return
        entries, n = self.entries, len(self.entries)
        now = self.now()
        i = self._next
        while i < n and entries[i][0] <= now:
            _, fn, arg = entries[i]
            i += 1
            self._next = i
            fn(arg)
            if self.stopped:
                return
        if i >= n:
            self.stopped = True
            if self.done is not None:
                self.done()
            return
        wait = (entries[i][0] - now) / self.speed
        self._call = self.clock.callLater(max(wait, self.min_interval), self._tick)

    def stop(self):
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
