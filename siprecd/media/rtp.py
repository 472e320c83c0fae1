"""RTP and RTCP packets as values (RFC 3550), plus RFC 4733 telephone events.

Sans-IO: bytes in, objects out. Everything a peer can get wrong raises
:class:`MalformedPacket` whose ``kind`` is a short stable word, so the
receiver can count drops by cause; nothing else is ever raised, whatever
the bytes (the tests feed arbitrary bytes to prove it).

The receive path does not call :func:`parse_rtp` for the common in-order
packet: it checks the fixed header bytes in place (see
``siprecd.media.receiver``). This module is the general path: anything
with padding, a header extension, CSRCs, a new SSRC, a marker bit, an
unexpected sequence number or payload type comes through here.
"""

import struct

import attrs

__all__ = [
    "MalformedPacket",
    "RtpPacket",
    "parse_rtp",
    "looks_like_rtcp",
    "ReportBlock",
    "SenderReport",
    "ReceiverReport",
    "Goodbye",
    "OtherRtcp",
    "parse_rtcp",
    "TelephoneEvent",
    "parse_telephone_event",
    "DTMF_DIGITS",
    "build_rtp",
]

RTP_VERSION = 2
_HEADER = struct.Struct("!BBHII")
_RTCP_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")  # sender SSRC, NTP, RTP ts, packets, octets
_REPORT_BLOCK = struct.Struct("!IIIIII")
_EVENT = struct.Struct("!BBH")

# RFC 4733 §3.2: events 0-15 are the DTMF keys, 16 is a hook flash.
DTMF_DIGITS = "0123456789*#ABCD"


class MalformedPacket(ValueError):
    """A datagram that is not a valid RTP or RTCP packet.

    ``kind`` names the defect ("short", "version", "csrc", "extension",
    "padding", "length", ...) for per-cause counters.
    """

    def __init__(self, kind, message=None):
        super().__init__(message or kind)
        self.kind = kind


@attrs.frozen
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple = ()
    # (profile, data) of a header extension (RFC 3550 §5.3.1), kept so the
    # packet can be inspected; the receiver ignores it.
    extension: tuple = None
    # Bytes of padding that were stripped (0 when the P bit was clear).
    padding: int = 0


def parse_rtp(data):
    """Parse one RTP datagram; raise :class:`MalformedPacket` if it is not one."""
    n = len(data)
    if n < 12:
        raise MalformedPacket("short", f"{n} bytes is shorter than an RTP header")
    b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise MalformedPacket("version", f"RTP version {b0 >> 6}")
    offset = 12 + 4 * (b0 & 0x0F)
    if offset > n:
        raise MalformedPacket("csrc", "CSRC list runs past the end of the packet")
    csrcs = struct.unpack_from(f"!{b0 & 0x0F}I", data, 12) if b0 & 0x0F else ()
    extension = None
    if b0 & 0x10:
        if offset + 4 > n:
            raise MalformedPacket("extension", "extension header runs past the end")
        profile, words = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > n:
            raise MalformedPacket("extension", "extension data runs past the end")
        extension = (profile, bytes(data[start:offset]))
    end = n
    padding = 0
    if b0 & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding, itself included.
        padding = data[n - 1]
        if padding == 0 or offset + padding > n:
            raise MalformedPacket("padding", f"padding count {padding} is impossible here")
        end = n - padding
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(b1 & 0x80),
        csrcs=csrcs,
        extension=extension,
        padding=padding,
    )


def build_rtp(payload_type, sequence, timestamp, ssrc, payload, marker=False,
              csrcs=(), extension=None, padding=0):
    """The bytes of an RTP packet (for tests, the bench and the simulator)."""
    b0 = 0x80 | len(csrcs) | (0x10 if extension else 0) | (0x20 if padding else 0)
    out = bytearray(_HEADER.pack(b0, (0x80 if marker else 0) | payload_type,
                                 sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc))
    for c in csrcs:
        out += struct.pack("!I", c)
    if extension:
        profile, ext = extension
        ext = bytes(ext) + b"\0" * (-len(ext) % 4)
        out += struct.pack("!HH", profile, len(ext) // 4) + ext
    out += payload
    if padding:
        out += b"\0" * (padding - 1) + bytes([padding])
    return bytes(out)


def looks_like_rtcp(data):
    """True for an RTCP packet arriving on the RTP port (RFC 5761 §4).

    RTCP packet types 192-223 sit where RTP would put a marker bit and
    payload types 64-95, which no audio profile assigns.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


@attrs.frozen
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # out of 256
    cumulative_lost: int  # signed: duplicates can make it negative
    highest_sequence: int
    jitter: int  # in timestamp units
    last_sr: int
    delay_since_last_sr: int


@attrs.frozen
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple = ()


@attrs.frozen
class ReceiverReport:
    ssrc: int
    reports: tuple = ()


@attrs.frozen
class Goodbye:
    ssrcs: tuple
    reason: str = ""


@attrs.frozen
class OtherRtcp:
    """SDES, APP, feedback, XR...: kept by type, body unparsed."""

    packet_type: int
    count: int
    body: bytes


def _report_blocks(data, offset, count, end):
    if offset + 24 * count > end:
        raise MalformedPacket("length", "report blocks run past the packet")
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset + 24 * i)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def parse_rtcp(data):
    """Parse a (compound) RTCP datagram into a list of packets.

    Checks what RFC 3550 A.2 checks, minus the rule that a compound packet
    starts with SR or RR: reduced-size RTCP (RFC 5506) is legal and some
    SBCs send a lone BYE. Unknown packet types are returned as
    :class:`OtherRtcp`; any framing error rejects the whole datagram.
    """
    n = len(data)
    if n < 4:
        raise MalformedPacket("short", f"{n} bytes is shorter than an RTCP header")
    packets = []
    offset = 0
    while offset < n:
        if offset + 4 > n:
            raise MalformedPacket("length", "trailing bytes after the last RTCP packet")
        b0, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if b0 >> 6 != RTP_VERSION:
            raise MalformedPacket("version", f"RTCP version {b0 >> 6}")
        end = offset + 4 * (words + 1)
        if end > n:
            raise MalformedPacket("length", "RTCP length runs past the datagram")
        body_end = end
        if b0 & 0x20:
            if end != n:
                raise MalformedPacket("padding", "padding on an RTCP packet that is not last")
            pad = data[end - 1]
            if pad == 0 or offset + 4 + pad > end:
                raise MalformedPacket("padding", f"RTCP padding count {pad} is impossible")
            body_end = end - pad
        count = b0 & 0x1F
        body = offset + 4
        if packet_type == 200:
            if body + 24 > body_end:
                raise MalformedPacket("length", "sender report too short")
            ssrc, ntp, rtp_ts, packets_sent, octets = _SR_INFO.unpack_from(data, body)
            packets.append(SenderReport(
                ssrc, ntp, rtp_ts, packets_sent, octets,
                _report_blocks(data, body + 24, count, body_end),
            ))
        elif packet_type == 201:
            if body + 4 > body_end:
                raise MalformedPacket("length", "receiver report too short")
            (ssrc,) = struct.unpack_from("!I", data, body)
            packets.append(ReceiverReport(ssrc, _report_blocks(data, body + 4, count, body_end)))
        elif packet_type == 203:
            if body + 4 * count > body_end:
                raise MalformedPacket("length", "BYE lists more SSRCs than it holds")
            ssrcs = struct.unpack_from(f"!{count}I", data, body)
            reason = ""
            at = body + 4 * count
            if at < body_end:
                length = data[at]
                reason = bytes(data[at + 1:min(at + 1 + length, body_end)]).decode("utf-8", "replace")
            packets.append(Goodbye(ssrcs, reason))
        else:
            packets.append(OtherRtcp(packet_type, count, bytes(data[body:body_end])))
        offset = end
    return packets


@attrs.frozen
class TelephoneEvent:
    """An RFC 4733 §2.3 named event payload."""

    event: int
    end: bool
    volume: int
    duration: int  # in timestamp units (samples at 8 kHz)

    @property
    def digit(self):
        """The key as a character ("0"-"9", "*", "#", "A"-"D"), or the
        event number as text for other events (16 is a hook flash)."""
        return DTMF_DIGITS[self.event] if self.event < 16 else str(self.event)


def parse_telephone_event(payload):
    """The first event of a telephone-event payload.

    Redundant events (RFC 2198) are not negotiated by us, so only the first
    four bytes matter.
    """
    if len(payload) < 4:
        raise MalformedPacket("event", "telephone-event payload shorter than 4 bytes")
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration)
