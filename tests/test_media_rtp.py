"""RTP/RTCP packet parsing (RFC 3550) and telephone events (RFC 4733)."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.media.rtp import (
    Goodbye,
    MalformedPacket,
    OtherRtcp,
    ReceiverReport,
    RtpPacket,
    SenderReport,
    TelephoneEvent,
    build_rtp,
    looks_like_rtcp,
    parse_rtcp,
    parse_rtp,
    parse_telephone_event,
)


def test_plain_packet():
    data = bytes([0x80, 0x80 | 8]) + struct.pack("!HII", 1234, 0xDEADBEEF, 0x01020304) + b"abc"
    p = parse_rtp(data)
    assert p == RtpPacket(payload_type=8, sequence=1234, timestamp=0xDEADBEEF, ssrc=0x01020304,
                          payload=b"abc", marker=True)


def test_build_and_parse_round_trip_with_everything():
    data = build_rtp(0, 65535, 2**32 - 1, 7, b"\x11" * 160, marker=True, csrcs=(1, 2, 3),
                     extension=(0xBEDE, b"\x10\xaa\x00\x00"), padding=4)
    p = parse_rtp(data)
    assert p.payload == b"\x11" * 160
    assert p.csrcs == (1, 2, 3)
    assert p.extension == (0xBEDE, b"\x10\xaa\x00\x00")
    assert p.padding == 4
    assert (p.sequence, p.timestamp, p.ssrc, p.marker) == (65535, 2**32 - 1, 7, True)


def test_padding_is_stripped_using_the_last_byte():
    data = build_rtp(0, 1, 2, 3, b"\x01\x02\x03", padding=5)
    assert data[-1] == 5
    assert parse_rtp(data).payload == b"\x01\x02\x03"


@pytest.mark.parametrize("count", [0, 200])
def test_impossible_padding_is_malformed(count):
    data = bytearray(build_rtp(0, 1, 2, 3, b"\x01\x02\x03", padding=2))
    data[-1] = count
    with pytest.raises(MalformedPacket) as e:
        parse_rtp(bytes(data))
    assert e.value.kind == "padding"


def test_padding_that_eats_exactly_the_payload_leaves_it_empty():
    data = bytearray(build_rtp(0, 1, 2, 3, b"\x01\x02\x03", padding=1))
    data[-1] = 4
    assert parse_rtp(bytes(data)).payload == b""


def test_extension_is_skipped():
    data = build_rtp(0, 1, 2, 3, b"PAYLOAD", extension=(0x1000, b"12345678"))
    p = parse_rtp(data)
    assert p.payload == b"PAYLOAD"
    assert p.extension == (0x1000, b"12345678")


def test_extension_and_csrcs_together():
    data = build_rtp(8, 1, 2, 3, b"xy", csrcs=(9,), extension=(1, b"abcd"))
    p = parse_rtp(data)
    assert (p.csrcs, p.extension, p.payload) == ((9,), (1, b"abcd"), b"xy")


@pytest.mark.parametrize("data, kind", [
    (b"", "short"),
    (b"\x80\x00" + b"\x00" * 9, "short"),
    (b"\x40\x00" + b"\x00" * 10, "version"),
    (b"\x00\x00" + b"\x00" * 10, "version"),
    (b"\xc0\x00" + b"\x00" * 10, "version"),
    (b"\x82\x00" + b"\x00" * 10 + b"\x00" * 7, "csrc"),
    (b"\x90\x00" + b"\x00" * 10 + b"\x00\x00", "extension"),
    (b"\x90\x00" + b"\x00" * 10 + b"\x00\x00\x00\x02" + b"\x00" * 7, "extension"),
    (b"\xa0\x00" + b"\x00" * 10, "padding"),
])
def test_malformed_kinds(data, kind):
    with pytest.raises(MalformedPacket) as e:
        parse_rtp(data)
    assert e.value.kind == kind


def test_header_only_packet_is_valid_and_empty():
    assert parse_rtp(build_rtp(0, 1, 2, 3, b"")).payload == b""


def test_memoryview_and_bytearray_input():
    data = build_rtp(0, 1, 2, 3, b"abc")
    assert parse_rtp(memoryview(data)).payload == b"abc"
    assert parse_rtp(bytearray(data)).payload == b"abc"


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_malformed(data):
    for parse in (parse_rtp, parse_rtcp, parse_telephone_event):
        try:
            parse(data)
        except MalformedPacket:
            pass


@settings(max_examples=300)
@given(
    pt=st.integers(0, 127), seq=st.integers(0, 65535), ts=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1), payload=st.binary(max_size=200), marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    ext=st.none() | st.tuples(st.integers(0, 65535), st.binary(max_size=40)),
    padding=st.integers(0, 255),
)
def test_round_trip(pt, seq, ts, ssrc, payload, marker, csrcs, ext, padding):
    data = build_rtp(pt, seq, ts, ssrc, payload, marker=marker, csrcs=tuple(csrcs),
                     extension=ext, padding=padding)
    p = parse_rtp(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload, p.marker) == (
        pt, seq, ts, ssrc, payload, marker)
    assert p.csrcs == tuple(csrcs)
    if ext:
        assert p.extension[0] == ext[0] and p.extension[1].startswith(ext[1])


@settings(max_examples=300)
@given(st.binary(min_size=12, max_size=200), st.data())
def test_mutated_valid_packets_never_raise_anything_but_malformed(base, data):
    packet = bytearray(build_rtp(0, 1, 2, 3, base, csrcs=(1,), extension=(1, b"abcd"), padding=3))
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(packet) - 1))
        packet[i] = data.draw(st.integers(0, 255))
    try:
        parse_rtp(bytes(packet))
    except MalformedPacket:
        pass


# -- RTCP ----------------------------------------------------------------------

def _block(ssrc=0xAA, fraction=64, lost=-3, highest=70000, jitter=80, lsr=5, dlsr=6):
    return struct.pack("!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter,
                       lsr, dlsr)


def _rtcp(packet_type, count, body, padding=0):
    if padding:
        body = body + b"\0" * (padding - 1) + bytes([padding])
    return struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | count, packet_type,
                       len(body) // 4) + body


def _sr(blocks=(), padding=0):
    info = struct.pack("!IQIII", 0x1234, 0xE000000000000000, 160000, 500, 80000)
    return _rtcp(200, len(blocks), info + b"".join(blocks), padding)


def test_sender_report_with_a_block():
    (sr,) = parse_rtcp(_sr([_block()]))
    assert isinstance(sr, SenderReport)
    assert (sr.ssrc, sr.packet_count, sr.octet_count, sr.rtp_timestamp) == (0x1234, 500, 80000, 160000)
    (b,) = sr.reports
    assert (b.ssrc, b.fraction_lost, b.cumulative_lost, b.highest_sequence, b.jitter) == (
        0xAA, 64, -3, 70000, 80)


def test_compound_sr_sdes_bye():
    sdes = _rtcp(202, 1, struct.pack("!I", 0x1234) + b"\x01\x03abc\x00\x00\x00")
    bye = _rtcp(203, 1, struct.pack("!I", 0x1234) + b"\x03bye")
    packets = parse_rtcp(_sr() + sdes + bye)
    assert [type(p) for p in packets] == [SenderReport, OtherRtcp, Goodbye]
    assert packets[1].packet_type == 202
    assert packets[2] == Goodbye((0x1234,), "bye")


def test_receiver_report_and_padding_on_the_last_packet():
    rr = _rtcp(201, 1, struct.pack("!I", 9) + _block(), padding=4)
    (p,) = parse_rtcp(_sr() + rr)[1:]
    assert isinstance(p, ReceiverReport)
    assert p.ssrc == 9 and p.reports[0].jitter == 80


@pytest.mark.parametrize("data, kind", [
    (b"\x80\xc8", "short"),
    (_sr()[:-4], "length"),
    (_sr() + b"\x80", "length"),
    (b"\x40" + _sr()[1:], "version"),
    (_rtcp(201, 2, struct.pack("!I", 9) + _block()), "length"),
    (_rtcp(200, 0, b"\0" * 8), "length"),
    (_sr(padding=4) + _sr(), "padding"),
    (_rtcp(203, 3, struct.pack("!I", 1)), "length"),
])
def test_malformed_rtcp(data, kind):
    with pytest.raises(MalformedPacket) as e:
        parse_rtcp(data)
    assert e.value.kind == kind


def test_rtcp_is_recognised_on_the_rtp_port():
    assert looks_like_rtcp(_sr())
    assert not looks_like_rtcp(build_rtp(0, 1, 2, 3, b"x"))
    assert not looks_like_rtcp(build_rtp(8, 1, 2, 3, b"x", marker=True))
    assert not looks_like_rtcp(b"\x80")


# -- telephone events ----------------------------------------------------------

def test_telephone_event():
    e = parse_telephone_event(bytes([11, 0x80 | 10]) + struct.pack("!H", 1600))
    assert e == TelephoneEvent(event=11, end=True, volume=10, duration=1600)
    assert e.digit == "#"
    assert parse_telephone_event(b"\x05\x0a\x00\xa0" + b"extra").digit == "5"
    assert TelephoneEvent(16, False, 0, 0).digit == "16"
    assert TelephoneEvent(12, False, 0, 0).digit == "A"
    with pytest.raises(MalformedPacket):
        parse_telephone_event(b"\x01\x02\x03")
