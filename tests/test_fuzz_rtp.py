"""Fuzzing RTP and RTCP: headers built to lie (CSRC counts past the end,
extension lengths past the end, padding counts past the start, wrong
versions, RTCP lengths and counts that do not fit), and the per-stream
receiver fed hostile datagrams among a real stream.

The parsers may only raise MalformedPacket. The receiver never raises,
hands out one contiguous timeline, and a hostile packet cannot make it
invent more audio than time has passed (no memory blow-up from a forged
timestamp). Random bytes and bit flips of valid packets are in
tests/test_media_rtp.py.
"""

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from siprecd.media.codecs import ulaw_encode
from siprecd.media.receiver import ReceiverGroup, StreamReceiver
from siprecd.media.rtp import (
    MalformedPacket, build_rtp, looks_like_rtcp, parse_rtcp, parse_rtp, parse_telephone_event,
)

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def lying_rtp(draw):
    """An RTP datagram whose header fields need not match what follows."""
    version = draw(st.sampled_from([2, 2, 2, 0, 1, 3]))
    padding, extension = draw(st.booleans()), draw(st.booleans())
    cc = draw(st.integers(0, 15))
    b0 = version << 6 | (0x20 if padding else 0) | (0x10 if extension else 0) | cc
    out = bytearray(struct.pack("!BBHII", b0, draw(st.integers(0, 255)),
                                draw(st.integers(0, 65535)), draw(st.integers(0, 2**32 - 1)),
                                draw(st.integers(0, 2**32 - 1))))
    out += draw(st.binary(max_size=4 * cc + 4))            # CSRCs: maybe fewer than cc
    if extension:
        out += struct.pack("!HH", draw(st.integers(0, 65535)),
                           draw(st.sampled_from([0, 1, 2, 255, 65535])))
        out += draw(st.binary(max_size=24))                # maybe less than it says
    out += draw(st.binary(max_size=200))
    if padding:
        out += bytes([draw(st.integers(0, 255))])          # maybe more than there is
    cut = draw(st.integers(0, len(out)))
    return bytes(out[:cut]) if draw(st.integers(0, 4)) == 0 else bytes(out)


@st.composite
def lying_rtcp(draw):
    """A compound RTCP datagram whose lengths, counts and padding may lie."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(0, 31))
        ptype = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207, 0, 255]))
        body = draw(st.binary(max_size=120))
        words = draw(st.one_of(st.just(len(body) // 4), st.integers(0, 65535)))
        b0 = draw(st.sampled_from([2, 2, 2, 1])) << 6 | (0x20 if draw(st.booleans()) else 0) \
            | count
        out += struct.pack("!BBH", b0, ptype, words) + body
    return bytes(out)


def parsed_or_malformed(parse, data):
    try:
        return parse(data)
    except MalformedPacket as e:
        assert e.args  # a kind and a reason, for the receiver's counters
        return None


@FUZZ
@given(lying_rtp())
def test_rtp_headers_that_lie(data):
    packet = parsed_or_malformed(parse_rtp, data)
    if packet is not None:
        assert len(packet.csrcs) == data[0] & 0x0F
        assert len(packet.payload) + packet.padding <= len(data) - 12 - 4 * len(packet.csrcs)
        assert 0 <= packet.payload_type < 128
    parsed_or_malformed(parse_telephone_event, data[12:])
    looks_like_rtcp(data)


@FUZZ
@given(lying_rtcp())
def test_rtcp_compounds_that_lie(data):
    packets = parsed_or_malformed(parse_rtcp, data)
    if packets is not None:
        assert packets


class Timeline:
    """An IStreamConsumer that checks the timeline stays one contiguous line."""

    def __init__(self):
        self.end = 0
        self.events = []

    def pcm(self, stream, position, samples, rate=8000):
        assert position == self.end, (position, self.end)
        assert samples.dtype == np.int16
        self.end += len(samples)

    def event(self, stream, kind, position, detail):
        self.events.append(kind)


PAYLOAD = ulaw_encode(np.random.default_rng(3).integers(-9000, 9000, 160).astype(np.int16))


@st.composite
def hostile(draw, ssrc, i):
    """A datagram an attacker (or a broken SBC) sends into a live stream."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(lying_rtp())
    if kind == 1:
        return draw(st.binary(max_size=300))
    if kind == 2:   # the stream's own SSRC with a forged sequence and timestamp
        return build_rtp(draw(st.sampled_from([0, 8, 13, 18, 101, 127])),
                         draw(st.integers(0, 65535)), draw(st.integers(0, 2**32 - 1)), ssrc,
                         draw(st.binary(max_size=320)), marker=draw(st.booleans()))
    if kind == 3:   # a telephone-event with a wild duration
        return build_rtp(101, 1000 + i, 5000 + 160 * i, ssrc,
                         draw(st.binary(min_size=0, max_size=8)))
    return draw(lying_rtcp())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_receiver_takes_hostile_datagrams_among_a_real_stream(data):
    clock = Clock()
    clock.advance(1_700_000_000)
    group = ReceiverGroup(clock, rtp_timeout=60.0)
    out = Timeline()
    receiver = StreamReceiver("s", out, clock, dtmf_payload_type=101)
    group.add(receiver)
    ssrc = 0x5EED
    started = clock.seconds()
    packets = data.draw(st.integers(20, 60))
    for i in range(packets):
        clock.advance(0.02)
        if i % 5 == 0:
            group.tick()
        receiver.datagram_received(build_rtp(0, 1000 + i, 5000 + 160 * i, ssrc, PAYLOAD))
        for _ in range(data.draw(st.integers(0, 2))):
            if data.draw(st.booleans()):
                receiver.datagram_received(data.draw(hostile(ssrc, i)))
            else:
                receiver.receive_rtcp(data.draw(hostile(ssrc, i)))
    clock.advance(0.5)
    group.tick()
    stats = receiver.stats()
    receiver.end("test")
    elapsed = clock.seconds() - started
    # Never more audio than time went by (plus the jitter window and a
    # packet): a forged timestamp does not make hours of silence.
    assert out.end <= (elapsed + 1.0) * 8000, (out.end, elapsed, stats)
    assert out.events[-1] == "end"
