"""SDP offer/answer for a recording server: what SRCs send, what we answer,
and that no input makes the parser fail any other way than SdpError."""

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprecd.siprec.sdp import (
    DIRECTIONS,
    Codec,
    SdpError,
    StreamChoice,
    answer_direction,
    check_reoffer,
    format_answer,
    negotiate,
    parse_sdp,
)

PREFERENCE = ("PCMU", "PCMA", "G729")


def sdp(*lines, end="\r\n"):
    return (end.join(lines) + end).encode()


HEAD = ("v=0", "o=SRC 2890844526 2890844526 IN IP4 198.51.100.7", "s=SIPREC", "t=0 0")

# Two streams, one per participant, as Cisco CUBE / Oracle SBC send them.
TWO_STREAMS = sdp(
    *HEAD[:3],
    "c=IN IP4 198.51.100.7",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0 8 18 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=label:1",
    "a=sendonly",
    "m=audio 49172 RTP/AVP 0 8 18 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=label:2",
    "a=sendonly",
)


def answer_for(offer_bytes, preference=PREFERENCE, ports=None, **kwargs):
    """Parse, negotiate and answer; return (offer, choices, answer text, parsed answer)."""
    offer = parse_sdp(offer_bytes)
    choices = negotiate(offer, preference, accept_srtp=kwargs.pop("accept_srtp", False))
    if ports is None:
        ports = [20000 + 2 * i for i in range(len(offer.media))]
    kwargs.setdefault("address", "192.0.2.10")
    kwargs.setdefault("session_id", "42")
    kwargs.setdefault("session_version", 1)
    text = format_answer(offer, choices, ports, **kwargs)
    return offer, choices, text, parse_sdp(text)


def audio_codecs(media):
    return [c for c in media.codecs if c.name not in ("TELEPHONE-EVENT", "CN")]


# --- parsing -----------------------------------------------------------------


def test_parse_two_stream_siprec_offer():
    offer = parse_sdp(TWO_STREAMS)
    assert offer.version == 0
    assert offer.origin == ("SRC", "2890844526", "2890844526", "IN", "IP4", "198.51.100.7")
    assert offer.session_name == "SIPREC"
    assert offer.connection == "198.51.100.7"
    assert offer.direction is None
    assert [m.index for m in offer.media] == [0, 1]
    assert offer.audio() == list(offer.media)
    first, second = offer.media
    assert (first.label, second.label) == ("1", "2")
    assert (first.port, second.port) == (49170, 49172)
    assert first.proto == "RTP/AVP"
    assert first.formats == ("0", "8", "18", "101")
    assert first.codecs == (
        Codec(0, "PCMU", 8000, None, None),
        Codec(8, "PCMA", 8000, None, None),
        Codec(18, "G729", 8000, None, "annexb=no"),
        Codec(101, "TELEPHONE-EVENT", 8000, None, "0-15"),
    )
    assert first.direction == second.direction == "sendonly"
    assert first.connection == "198.51.100.7"
    assert first.ptime == 20
    assert first.is_audio_rtp and not first.on_hold
    assert ("label", "1") in first.attributes and ("sendonly", None) in first.attributes
    assert first.crypto == () and first.rtcp is None


def test_static_payload_types_need_no_rtpmap():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0 8 18 13 96"))
    assert [(c.payload_type, c.name, c.clock_rate) for c in offer.media[0].codecs] == [
        (0, "PCMU", 8000), (8, "PCMA", 8000), (18, "G729", 8000), (13, "CN", 8000), (96, "", 0),
    ]


def test_rtpmap_overrides_static_meaning_and_keeps_channels():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0 97",
                          "a=rtpmap:0 PCMA/8000", "a=rtpmap:97 L16/8000/2"))
    assert offer.media[0].codecs == (
        Codec(0, "PCMA", 8000, None, None), Codec(97, "L16", 8000, 2, None),
    )


def test_tolerant_of_lf_whitespace_unknown_lines_and_missing_s_and_t():
    text = (
        "\ufeffv=0  \n"
        "o=- 1 1 IN IP4 10.0.0.1\n"
        "\n"
        "i=a session\n"
        "y=unknown letter\n"
        "b=AS:64\n"
        "c=IN IP4 10.0.0.1\t\n"
        "a=x-vendor:whatever\n"
        "a=\n"
        "m=audio 4000 RTP/AVP 0\n"
        "a=ptime:twenty\n"
        "a=rtcp-mux\n"
        "k=clear:nothing\n"
    )
    offer = parse_sdp(text)
    assert offer.session_name == ""
    assert offer.connection == "10.0.0.1"
    assert offer.attributes == (("x-vendor", "whatever"),)
    media = offer.media[0]
    assert media.ptime is None
    assert media.attributes == (("ptime", "twenty"), ("rtcp-mux", None))


def test_session_level_and_media_level_connection_and_direction():
    offer = parse_sdp(sdp(
        *HEAD, "c=IN IP4 10.0.0.1", "a=sendonly",
        "m=audio 4000 RTP/AVP 0",
        "m=audio 4002 RTP/AVP 0", "c=IN IP4 10.0.0.2", "a=inactive",
        "m=audio 4004 RTP/AVP 0", "a=sendrecv",
    ))
    assert offer.direction == "sendonly"
    assert [m.connection for m in offer.media] == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]
    assert [m.direction for m in offer.media] == ["sendonly", "inactive", "sendrecv"]


def test_direction_defaults_to_sendrecv_and_connection_may_be_missing():
    media = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0")).media[0]
    assert media.direction == "sendrecv"
    assert media.connection is None and not media.on_hold


def test_ipv6_connection():
    offer = parse_sdp(sdp(
        "v=0", "o=- 1 1 IN IP6 2001:db8::7", "s=-", "c=IN IP6 2001:db8::7",
        "m=audio 4000 RTP/AVP 0", "a=rtcp:4001 IN IP6 2001:db8::8",
    ))
    assert offer.media[0].connection == "2001:db8::7"
    assert offer.media[0].rtcp == (4001, "2001:db8::8")


def test_connection_hostname_and_multicast_suffix():
    offer = parse_sdp(sdp(*HEAD, "c=IN IP4 media.example.com",
                          "m=audio 4000 RTP/AVP 0", "c=IN IP4 224.2.1.1/127"))
    assert offer.connection == "media.example.com"
    assert offer.media[0].connection == "224.2.1.1"


def test_rtcp_crypto_port_count_and_non_rtp_formats():
    offer = parse_sdp(sdp(
        *HEAD, "c=IN IP4 10.0.0.1",
        "m=audio 4000/2 RTP/SAVP 0",
        "a=rtcp:5001",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj",
        "m=application 5000 TCP/MSRP *",
    ))
    audio, app = offer.media
    assert audio.port_count == 2
    assert audio.rtcp == (5001, None)
    assert [c.split()[0] for c in audio.crypto] == ["1", "2"]
    assert app.formats == ("*",) and app.codecs == () and not app.is_audio_rtp


@pytest.mark.parametrize("hold", [
    ("c=IN IP4 0.0.0.0", "a=sendonly"),
    ("c=IN IP6 ::", "a=sendonly"),
    ("c=IN IP4 10.0.0.1", "a=inactive"),
])
def test_on_hold(hold):
    media = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", *hold)).media[0]
    assert media.on_hold


@pytest.mark.parametrize("bad", [
    pytest.param(b"", id="empty"),
    pytest.param(b" \r\n\r\n", id="blank"),
    pytest.param(sdp("o=- 1 1 IN IP4 10.0.0.1", "v=0"), id="v-not-first"),
    pytest.param(sdp("v=1", "o=- 1 1 IN IP4 10.0.0.1"), id="v1"),
    pytest.param(sdp("v=0"), id="no-origin"),
    pytest.param(sdp("v=0", "o=- 1 1 IN IP4"), id="origin-five-fields"),
    pytest.param(sdp("v=0", "o=- 1 1 IN IP4 10.0.0.1 extra"), id="origin-seven-fields"),
    pytest.param(sdp(*HEAD, "o=- 1 1 IN IP4 10.0.0.1"), id="two-origins"),
    pytest.param(sdp(*HEAD, "v=0"), id="second-v"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "o=- 1 1 IN IP4 10.0.0.1"),
                 id="origin-in-media"),
    pytest.param(sdp(*HEAD, "m=audio abc RTP/AVP 0"), id="port-not-number"),
    pytest.param(sdp(*HEAD, "m=audio 65536 RTP/AVP 0"), id="port-too-big"),
    pytest.param(sdp(*HEAD, "m=audio -1 RTP/AVP 0"), id="port-negative"),
    pytest.param(sdp(*HEAD, "m=audio +4000 RTP/AVP 0"), id="port-plus"),
    pytest.param(sdp(*HEAD, "m=audio \u0664\u0660\u0660\u0660 RTP/AVP 0"), id="port-arabic-digits"),
    pytest.param(sdp(*HEAD, "m=audio 4000/0 RTP/AVP 0"), id="port-count-zero"),
    pytest.param(sdp(*HEAD, "m=audio 4000/x RTP/AVP 0"), id="port-count-junk"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP"), id="no-format"),
    pytest.param(sdp(*HEAD, "m=audio 4000"), id="no-proto"),
    pytest.param(sdp(*HEAD, "m="), id="empty-m"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP PCMU"), id="format-not-number"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 128"), id="payload-type-too-big"),
    pytest.param(sdp(*HEAD, "m=audio 4000 / 0"), id="proto-slash"),
    pytest.param(sdp(*HEAD, "c=IN IP4"), id="c-no-address"),
    pytest.param(sdp(*HEAD, "c=ATM NSAP 47.0005"), id="c-not-IN"),
    pytest.param(sdp(*HEAD, "c=IN IP5 10.0.0.1"), id="c-bad-addrtype"),
    pytest.param(sdp(*HEAD, "c=IN IP4 999.1.1.1"), id="c-bad-ipv4"),
    pytest.param(sdp(*HEAD, "c=IN IP4 1.2.3"), id="c-short-ipv4"),
    pytest.param(sdp(*HEAD, "c=IN IP4 ::1"), id="c-ipv6-as-ip4"),
    pytest.param(sdp(*HEAD, "c=IN IP6 10.0.0.1"), id="c-ipv4-as-ip6"),
    pytest.param(sdp(*HEAD, "c=IN IP6 gg::1"), id="c-bad-ipv6"),
    pytest.param(sdp(*HEAD, "c=IN IP4 -bad-.example"), id="c-bad-hostname"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "c=IN IP4 10.0.0.1 extra"),
                 id="media-c-extra-field"),
    pytest.param(sdp(*HEAD, "garbage", "m=audio 4000 RTP/AVP 0"), id="no-equals"),
    pytest.param(sdp(*HEAD, "=abc", "m=audio 4000 RTP/AVP 0"), id="no-type"),
    pytest.param(sdp(*HEAD, "1=abc", "m=audio 4000 RTP/AVP 0"), id="digit-type"),
    pytest.param(sdp(*HEAD, " a=sendonly", "m=audio 4000 RTP/AVP 0"), id="leading-space"),
    pytest.param(sdp(*HEAD, "\u00e9=x", "m=audio 4000 RTP/AVP 0"), id="non-ascii-type"),
    pytest.param(sdp(*HEAD) + b"a=label:1\x00", id="nul"),
    pytest.param(sdp(*HEAD, "a=label:1\rm=audio 1 RTP/AVP 0"), id="stray-cr"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:x PCMU/8000"), id="rtpmap-pt"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU"), id="rtpmap-no-rate"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/0"), id="rtpmap-rate-0"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0"), id="rtpmap-empty"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap"), id="rtpmap-no-value"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 96", "a=rtpmap:96 telephone-event/8000/x"),
                 id="rtpmap-channels"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 /8000"), id="rtpmap-no-name"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000/1/2"),
                 id="rtpmap-too-many-fields"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 101", "a=fmtp:x 0-15"), id="fmtp-pt"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:abc"), id="rtcp-port"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:70000"), id="rtcp-port-range"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:4001 IN IP4"), id="rtcp-short"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:4001 IN IP4 ::1"),
                 id="rtcp-bad-address"),
    pytest.param(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=rtcp:4001 XX IP4 10.0.0.1"),
                 id="rtcp-not-IN"),
])
def test_malformed_input_raises_sdp_error(bad):
    with pytest.raises(SdpError) as info:
        parse_sdp(bad)
    assert isinstance(info.value.args[0], str) and info.value.args[0]


def test_malformed_line_is_located():
    with pytest.raises(SdpError, match=r"^line 5: m= port"):
        parse_sdp(sdp(*HEAD, "m=audio abc RTP/AVP 0"))


def test_not_bytes_or_text():
    with pytest.raises(SdpError):
        parse_sdp(None)
    with pytest.raises(SdpError):
        parse_sdp(12)


def test_size_and_media_limits():
    many = sdp(*HEAD, *[f"m=audio {4000 + 2 * i} RTP/AVP 0" for i in range(5)])
    assert len(parse_sdp(many, max_media=5).media) == 5
    with pytest.raises(SdpError, match="more than 4 m-lines"):
        parse_sdp(many, max_media=4)
    with pytest.raises(SdpError, match="larger than"):
        parse_sdp(many, max_size=len(many) - 1)
    assert parse_sdp(many, max_size=len(many))


def test_text_input_and_bad_utf8_are_accepted():
    assert parse_sdp(TWO_STREAMS.decode()).media[1].label == "2"
    offer = parse_sdp(sdp(*HEAD[:2]) + b"s=caf\xe9\r\n")
    assert offer.session_name == "caf\ufffd"
    # A lone surrogate in text input cannot reach an answer unencodable.
    assert set(parse_sdp("v=0\no=- 1 1 IN IP4 10.0.0.1\ns=\udc80\n").session_name) == {"\ufffd"}


# --- negotiation -------------------------------------------------------------


@pytest.mark.parametrize("preference, expected", [
    (("PCMU", "PCMA", "G729"), "G729"),
    (("PCMA", "PCMU"), "PCMA"),
    (("PCMU",), "PCMU"),
    (("g729",), "G729"),
])
def test_codec_order_is_the_srcs_among_ours(preference, expected):
    """An SRC that lists G.729 first keeps sending it: the answer takes the
    first offered codec that is among ours."""
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 18 8 0"))
    (choice,) = negotiate(offer, preference)
    assert choice.codec.name == expected


@pytest.mark.parametrize("formats, rtpmaps, expected", [
    ("9 0", (), Codec(9, "G722", 8000, None, None)),
    ("111 0", ("a=rtpmap:111 opus/48000/2", "a=fmtp:111 useinbandfec=1"),
     Codec(111, "OPUS", 48000, 2, "useinbandfec=1")),
    ("96 0", ("a=rtpmap:96 opus/16000/2",), Codec(0, "PCMU", 8000, None, None)),
    ("96 0", ("a=rtpmap:96 G722/16000",), Codec(0, "PCMU", 8000, None, None)),
])
def test_wideband_codecs_are_taken_at_their_registered_clock(formats, rtpmaps, expected):
    offer = parse_sdp(sdp(*HEAD, f"m=audio 4000 RTP/AVP {formats}", *rtpmaps))
    (choice,) = negotiate(offer, ("PCMU", "PCMA", "G729", "G722", "opus"))
    assert choice.codec == expected


def test_opus_answer_names_it_as_registered():
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 111 0",
                      "a=rtpmap:111 opus/48000/2", "a=sendonly")
    offer = parse_sdp(offer_bytes)
    choices = negotiate(offer, ("opus", "PCMU"))
    answer = format_answer(offer, choices, [5000], address="10.0.0.2", session_id="1",
                           session_version=1)
    assert b"a=rtpmap:111 opus/48000/2\r\n" in answer


def test_unknown_preference_is_a_programming_error():
    offer = parse_sdp(TWO_STREAMS)
    with pytest.raises(ValueError):
        negotiate(offer, ("AMR",))


def test_no_codec_in_common_is_refused():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 4 3 101",
                          "a=rtpmap:101 telephone-event/8000"))
    assert negotiate(offer, PREFERENCE) == [None]
    assert negotiate(parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0")), ("PCMA",)) == [None]


def test_codec_must_match_clock_rate_and_mono():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 96 97 98",
                          "a=rtpmap:96 PCMU/16000", "a=rtpmap:97 PCMU/8000/2",
                          "a=rtpmap:98 PCMU/8000/1"))
    (choice,) = negotiate(offer, PREFERENCE)
    assert choice.codec == Codec(98, "PCMU", 8000, 1, None)


@pytest.mark.parametrize("pt", [101, 96])
def test_dynamic_telephone_event_is_echoed(pt):
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1", f"m=audio 4000 RTP/AVP 8 {pt}",
                      f"a=rtpmap:{pt} telephone-event/8000", f"a=fmtp:{pt} 0-16", "a=sendonly")
    offer, choices, text, answer = answer_for(offer_bytes)
    assert choices[0].telephone_event == Codec(pt, "TELEPHONE-EVENT", 8000, None, "0-16")
    assert answer.media[0].formats == ("8", str(pt))
    lines = text.decode().split("\r\n")
    assert f"a=rtpmap:{pt} telephone-event/8000" in lines
    assert f"a=fmtp:{pt} 0-16" in lines


def test_telephone_event_at_another_clock_rate_is_not_echoed():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0 100 101",
                          "a=rtpmap:100 telephone-event/48000",
                          "a=rtpmap:101 telephone-event/8000"))
    (choice,) = negotiate(offer, PREFERENCE)
    assert choice.telephone_event.payload_type == 101
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0 100",
                          "a=rtpmap:100 telephone-event/16000"))
    assert negotiate(offer, PREFERENCE)[0].telephone_event is None


@pytest.mark.parametrize("annexb", ["yes", "no"])
def test_g729_annexb_is_accepted_and_echoed(annexb):
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 18",
                      "a=rtpmap:18 G729/8000", f"a=fmtp:18 annexb={annexb}", "a=sendonly")
    offer, choices, text, answer = answer_for(offer_bytes, preference=("PCMU", "G729"))
    assert choices[0].codec == Codec(18, "G729", 8000, None, f"annexb={annexb}")
    assert answer.media[0].codecs == (Codec(18, "G729", 8000, None, f"annexb={annexb}"),)
    assert b"a=fmtp:18 annexb=" + annexb.encode() + b"\r\n" in text


def test_srtp_refused_unless_accepted_with_sdes_keys():
    crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    offer = parse_sdp(sdp(
        *HEAD, "c=IN IP4 10.0.0.1",
        "m=audio 4000 RTP/SAVP 0", crypto,
        "m=audio 4002 RTP/SAVP 0",
        "m=audio 4004 UDP/TLS/RTP/SAVP 0", "a=fingerprint:sha-256 AB:CD",
        "m=audio 4006 RTP/AVP 0",
    ))
    assert [c is not None for c in negotiate(offer, PREFERENCE)] == [False, False, False, True]
    accepted = negotiate(offer, PREFERENCE, accept_srtp=True)
    assert [c is not None for c in accepted] == [True, False, False, True]


@pytest.mark.parametrize("mline", [
    "m=audio 4000 RTP/XYZ 0", "m=audio 4000 udp 0", "m=audio 4000 TCP/RTP/AVP 0",
])
def test_unknown_proto_refused(mline):
    assert negotiate(parse_sdp(sdp(*HEAD, mline)), PREFERENCE) == [None]


def test_avpf_is_accepted_as_plain_rtp():
    offer, choices, text, answer = answer_for(sdp(*HEAD, "m=audio 4000 RTP/AVPF 0"))
    assert choices[0] is not None and answer.media[0].proto == "RTP/AVPF"


# --- answers -----------------------------------------------------------------


def test_two_stream_answer():
    offer, choices, text, answer = answer_for(TWO_STREAMS, ports=[30000, 30002])
    assert b"\n" not in text.replace(b"\r\n", b"")
    assert text.endswith(b"\r\n")
    assert answer.origin == ("siprecd", "42", "1", "IN", "IP4", "192.0.2.10")
    assert answer.connection == "192.0.2.10"
    assert [m.port for m in answer.media] == [30000, 30002]
    assert [m.label for m in answer.media] == ["1", "2"]
    assert [m.direction for m in answer.media] == ["recvonly", "recvonly"]
    for media in answer.media:
        assert media.proto == "RTP/AVP"
        assert [c.name for c in media.codecs] == ["PCMU", "TELEPHONE-EVENT"]
        assert media.ptime == 20
        assert media.connection == "192.0.2.10"
    assert text.count(b"a=recvonly") == 2


def test_answer_has_no_telephone_event_when_not_offered():
    offer, choices, text, answer = answer_for(sdp(*HEAD, "m=audio 4000 RTP/AVP 0 8"))
    assert choices == [StreamChoice(Codec(0, "PCMU", 8000, None, None), None)]
    assert answer.media[0].formats == ("0",)
    assert b"telephone-event" not in text.lower()
    assert b"a=ptime" not in text and b"a=label" not in text


def test_video_is_refused_with_port_zero():
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1",
                      "m=audio 4000 RTP/AVP 0", "a=label:1", "a=sendonly",
                      "m=video 5000 RTP/AVP 96 97", "a=rtpmap:96 H264/90000", "a=label:v",
                      "m=audio 4002 RTP/AVP 0", "a=label:2", "a=sendonly")
    offer, choices, text, answer = answer_for(offer_bytes)
    assert choices[1] is None
    assert [m.media for m in answer.media] == ["audio", "video", "audio"]
    assert [m.port for m in answer.media] == [20000, 0, 20004]
    video = answer.media[1]
    assert video.proto == "RTP/AVP" and video.formats == ("96",)
    assert video.attributes == ()
    assert [m.label for m in answer.media] == ["1", None, "2"]


def test_offered_port_zero_is_answered_with_port_zero():
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1",
                      "m=audio 0 RTP/AVP 8 0", "a=label:1",
                      "m=audio 4002 RTP/AVP 0", "a=label:2", "a=sendonly")
    offer, choices, text, answer = answer_for(offer_bytes)
    assert choices[0] is None
    assert (answer.media[0].port, answer.media[0].formats) == (0, ("8",))
    assert answer.media[1].port == 20002


def test_single_mixed_stream():
    offer_bytes = sdp(*HEAD, "c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 8 101",
                      "a=rtpmap:101 telephone-event/8000", "a=label:mixed", "a=sendonly")
    offer, choices, text, answer = answer_for(offer_bytes)
    assert len(offer.audio()) == 1 and len(answer.media) == 1
    assert answer.media[0].label == "mixed"
    assert [c.name for c in answer.media[0].codecs] == ["PCMA", "TELEPHONE-EVENT"]


@pytest.mark.parametrize("lines", [
    ("c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 0", "a=inactive"),
    ("c=IN IP4 0.0.0.0", "m=audio 4000 RTP/AVP 0", "a=sendonly"),
    ("c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 0", "c=IN IP4 0.0.0.0"),
    ("c=IN IP4 10.0.0.1", "a=inactive", "m=audio 4000 RTP/AVP 0"),
])
def test_hold_is_answered_inactive_with_the_stream_kept(lines):
    offer, choices, text, answer = answer_for(sdp(*HEAD, *lines, "a=label:1"))
    assert offer.media[0].on_hold
    assert choices[0] is not None
    assert answer.media[0].port == 20000 and answer.media[0].direction == "inactive"
    assert answer.media[0].label == "1"


def test_resume_after_hold():
    held = parse_sdp(sdp(*HEAD, "c=IN IP4 0.0.0.0", "m=audio 4000 RTP/AVP 0", "a=sendonly"))
    resumed = parse_sdp(sdp(*HEAD, "c=IN IP4 10.0.0.1", "m=audio 4000 RTP/AVP 0", "a=sendonly"))
    assert answer_direction(held.media[0]) == "inactive"
    assert answer_direction(resumed.media[0]) == "recvonly"


@pytest.mark.parametrize("offered, wanted, expected", [
    ("sendonly", "recvonly", "recvonly"),
    ("sendrecv", "recvonly", "recvonly"),
    ("recvonly", "recvonly", "inactive"),
    ("inactive", "recvonly", "inactive"),
    ("sendonly", "inactive", "inactive"),
    ("sendrecv", "sendrecv", "sendrecv"),
    ("sendonly", "sendrecv", "recvonly"),
    ("recvonly", "sendrecv", "sendonly"),
])
def test_answer_direction_follows_rfc3264(offered, wanted, expected):
    media = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", f"a={offered}")).media[0]
    assert answer_direction(media, wanted) == expected
    with pytest.raises(ValueError):
        answer_direction(media, "sideways")


def test_answer_direction_parameter():
    offer, choices, text, answer = answer_for(TWO_STREAMS, direction="inactive")
    assert [m.direction for m in answer.media] == ["inactive", "inactive"]


def test_reoffer_with_a_new_label_adds_a_stream():
    first = parse_sdp(TWO_STREAMS)
    reoffer_bytes = TWO_STREAMS.replace(b"2890844526 IN", b"2890844527 IN") + sdp(
        "m=audio 49174 RTP/AVP 8 0", "a=label:3", "a=sendonly")
    reoffer = parse_sdp(reoffer_bytes)
    check_reoffer(first, reoffer)
    offer, choices, text, answer = answer_for(reoffer_bytes)
    assert [m.label for m in answer.media] == ["1", "2", "3"]
    assert [m.direction for m in answer.media] == ["recvonly"] * 3
    assert [m.index for m in answer.media] == [0, 1, 2]
    with pytest.raises(SdpError, match="fewer"):
        check_reoffer(reoffer, first)


def test_ipv6_answer_address():
    offer, choices, text, answer = answer_for(TWO_STREAMS, address="2001:db8::10")
    assert b"c=IN IP6 2001:db8::10\r\n" in text
    assert answer.origin[4:] == ("IP6", "2001:db8::10")
    assert answer.media[0].connection == "2001:db8::10"


def test_port_none_for_an_accepted_stream_refuses_it():
    offer, choices, text, answer = answer_for(TWO_STREAMS, ports=[20000, None])
    assert [m.port for m in answer.media] == [20000, 0]
    assert answer.media[1].formats == ("0",)


def test_srtp_answer_carries_our_key():
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/SAVP 0",
                          "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"))
    (choice,) = negotiate(offer, PREFERENCE, accept_srtp=True)
    choice = attrs.evolve(choice, crypto="1 AES_CM_128_HMAC_SHA1_80 inline:BBBB")
    text = format_answer(offer, [choice], [20000], address="192.0.2.1",
                         session_id="1", session_version=0)
    media = parse_sdp(text).media[0]
    assert media.proto == "RTP/SAVP"
    assert media.crypto == ("1 AES_CM_128_HMAC_SHA1_80 inline:BBBB",)


@pytest.mark.parametrize("kwargs", [
    {"session_id": "abc"},
    {"session_version": -1},
    {"address": "not an address"},
    {"username": "two words"},
    {"session_name": "a\r\nm=audio 1 RTP/AVP 0"},
    {"direction": "up"},
])
def test_format_answer_rejects_bad_arguments(kwargs):
    offer = parse_sdp(TWO_STREAMS)
    choices = negotiate(offer, PREFERENCE)
    args = dict(address="192.0.2.1", session_id="1", session_version=1) | kwargs
    with pytest.raises(ValueError):
        format_answer(offer, choices, [20000, 20002], **args)


def test_format_answer_needs_one_choice_and_port_per_mline():
    offer = parse_sdp(TWO_STREAMS)
    choices = negotiate(offer, PREFERENCE)
    with pytest.raises(ValueError):
        format_answer(offer, choices, [20000], address="192.0.2.1",
                      session_id="1", session_version=1)


# --- properties --------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_sdp_error(data):
    try:
        parse_sdp(data)
    except SdpError:
        pass


_LINE_JUNK = st.sampled_from([
    "", " ", "/", ":", "=", "0", "65536", "-1", "IN", "IP4", "IP6", "::", "0.0.0.0",
    "\r", "\x00", "\u0664", "\udc80", "a=", "m=", "c=", "rtpmap:", "fmtp:", "rtcp:",
    "RTP/AVP", "999.1.1.1", "/0", "x" * 50,
])


@st.composite
def mutated_offers(draw):
    """A valid offer with a few lines cut, spliced or garbled: reaches much
    deeper into the parser than random bytes, which rarely pass ``v=0``."""
    lines = TWO_STREAMS.decode().split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["cut", "insert", "replace", "duplicate", "drop"]))
        line = lines[i]
        junk = draw(_LINE_JUNK) if draw(st.booleans()) else draw(st.text(max_size=8))
        if action == "cut":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j]
        elif action == "insert":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + junk + line[j:]
        elif action == "replace":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + junk + line[j + len(junk):]
        elif action == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), line)
        elif len(lines) > 1:
            del lines[i]
    return "\r\n".join(lines)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_offers(), st.booleans())
def test_mutated_offers_raise_only_sdp_error_and_answers_parse(text, as_bytes):
    data = text.encode("utf-8", "surrogatepass") if as_bytes else text
    try:
        offer = parse_sdp(data)
    except SdpError:
        return
    choices = negotiate(offer, PREFERENCE)
    answer = format_answer(offer, choices, [20000 + 2 * i for i in range(len(offer.media))],
                           address="192.0.2.1", session_id="1", session_version=1)
    assert len(parse_sdp(answer).media) == len(offer.media)


_AUDIO_PTS = st.lists(st.sampled_from([0, 8, 18, 9, 3, 4, 13]), min_size=1, max_size=5,
                      unique=True)
_ADDRESSES = st.sampled_from(["10.0.0.1", "0.0.0.0", "2001:db8::1", "::", "sbc.example.net"])


def _c_line(address):
    return f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"


@st.composite
def media_sections(draw):
    kind = draw(st.sampled_from(["audio"] * 6 + ["video", "application", "text"]))
    port = draw(st.sampled_from([0]) | st.integers(1024, 65534))
    proto = draw(st.sampled_from(
        ["RTP/AVP"] * 6 + ["RTP/AVPF", "RTP/SAVP", "UDP/TLS/RTP/SAVP", "TCP/MSRP", "udp"]))
    lines = []
    if "RTP/" in proto:
        pts = draw(_AUDIO_PTS)
        event_pt = draw(st.none() | st.integers(96, 127))
        extra_pt = draw(st.none() | st.integers(96, 127).filter(lambda p: p != event_pt))
        formats = [str(p) for p in pts]
        if event_pt is not None:
            formats.insert(draw(st.integers(0, len(formats))), str(event_pt))
            lines.append(f"a=rtpmap:{event_pt} telephone-event/"
                         f"{draw(st.sampled_from([8000, 8000, 16000]))}")
            if draw(st.booleans()):
                lines.append(f"a=fmtp:{event_pt} 0-15")
        if extra_pt is not None:
            formats.append(str(extra_pt))
            name = draw(st.sampled_from(["PCMU/8000", "opus/48000/2", "H264/90000", "PCMA/16000"]))
            lines.append(f"a=rtpmap:{extra_pt} {name}")
        for pt in pts:
            if draw(st.booleans()):
                name = {0: "PCMU", 8: "PCMA", 18: "G729", 9: "G722", 3: "GSM",
                        4: "G723", 13: "CN"}[pt]
                lines.append(f"a=rtpmap:{pt} {name}/8000")
        if 18 in pts and draw(st.booleans()):
            lines.append(f"a=fmtp:18 annexb={draw(st.sampled_from(['yes', 'no']))}")
        if proto == "RTP/SAVP" and draw(st.booleans()):
            lines.append("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA")
    else:
        formats = [draw(st.sampled_from(["*", "0", "t38"]))]
    if draw(st.booleans()):
        lines.append(_c_line(draw(_ADDRESSES)))
    if draw(st.booleans()):
        lines.append(f"a={draw(st.sampled_from(DIRECTIONS))}")
    if draw(st.booleans()):
        lines.append(f"a=label:{draw(st.from_regex(r'[A-Za-z0-9_-]{1,12}', fullmatch=True))}")
    if draw(st.booleans()):
        lines.append(f"a=ptime:{draw(st.sampled_from([10, 20, 30]))}")
    if draw(st.booleans()):
        lines.append(f"a=rtcp:{draw(st.integers(1, 65535))}")
    lines = draw(st.permutations(lines))
    return [f"m={kind} {port} {proto} {' '.join(formats)}", *lines]


@st.composite
def offers(draw):
    head = ["v=0", f"o=SRC {draw(st.integers(0, 2**32))} 1 IN IP4 198.51.100.1", "s=-"]
    if draw(st.booleans()):
        head.append(_c_line(draw(_ADDRESSES)))
    head.append("t=0 0")
    if draw(st.booleans()):
        head.append(f"a={draw(st.sampled_from(DIRECTIONS))}")
    sections = draw(st.lists(media_sections(), min_size=1, max_size=6))
    end = draw(st.sampled_from(["\r\n", "\n"]))
    return end.join(head + [line for section in sections for line in section]) + end


_ALLOWED = {  # RFC 3264 §6.1: offered direction -> directions an answer may use
    "sendonly": {"recvonly", "inactive"},
    "recvonly": {"sendonly", "inactive"},
    "sendrecv": set(DIRECTIONS),
    "inactive": {"inactive"},
}


@settings(max_examples=500, deadline=None)
@given(offers(), st.permutations(PREFERENCE), st.booleans(),
       st.sampled_from(["192.0.2.1", "2001:db8::99"]))
def test_offer_answer_round_trip(text, preference, accept_srtp, address):
    offer = parse_sdp(text)
    choices = negotiate(offer, tuple(preference), accept_srtp=accept_srtp)
    assert len(choices) == len(offer.media)
    ports = [30000 + 2 * i for i in range(len(offer.media))]
    answer = parse_sdp(format_answer(offer, choices, ports, address=address,
                                     session_id="7", session_version=3))
    assert len(answer.media) == len(offer.media)
    assert [m.index for m in answer.media] == [m.index for m in offer.media]
    for off, ans, choice in zip(offer.media, answer.media, choices):
        assert (ans.media, ans.proto) == (off.media, off.proto)
        if choice is None:
            assert ans.port == 0 and ans.formats == off.formats[:1]
            continue
        assert off.is_audio_rtp and off.port != 0
        assert ans.port == ports[off.index]
        assert ans.label == off.label
        assert ans.ptime == off.ptime
        assert ans.direction in _ALLOWED[off.direction]
        assert ans.direction in ("recvonly", "inactive")
        if off.on_hold:
            assert ans.direction == "inactive"
        (codec,) = audio_codecs(ans)
        assert codec == choice.codec and codec in off.codecs
        # The SRC's first codec among ours, at its clock, mono.
        assert codec == next(c for c in off.codecs if c.name in preference
                             and c.clock_rate == 8000 and c.channels in (None, 1))
        events = [c for c in ans.codecs if c.name == "TELEPHONE-EVENT"]
        assert len(events) <= 1
        if events:
            assert events[0] in off.codecs
        else:
            assert not any(c.name == "TELEPHONE-EVENT" and c.clock_rate == 8000
                           for c in off.codecs)


def test_junk_after_the_last_valid_line_is_ignored():
    """A multipart delimiter and the metadata part pasted into the SDP part
    (seen from SRCs that miscount a part's Content-Length): the lines before
    it are a whole description."""
    junk = ("--uniqueBoundary", "Content-Type: application/rs-metadata+xml", "",
            "<?xml version='1.0'?>", "<recording xmlns='urn:ietf:params:xml:ns:recording:1'/>")
    offer = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "a=label:1", "a=sendonly", *junk))
    assert [m.label for m in offer.media] == ["1"] and offer.media[0].direction == "sendonly"
    assert offer.ignored_lines == 4
    assert parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0")).ignored_lines == 0
    # Junk with an m-line after it would lose a stream: refused.
    with pytest.raises(SdpError):
        parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "junk", "m=audio 4002 RTP/AVP 0"))
