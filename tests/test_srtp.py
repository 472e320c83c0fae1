"""SDES-SRTP without sockets: a=crypto parsing and choice (RFC 4568), the
media.srtp modes over a whole offer, and SRTP/SRTCP unprotection with
libsrtp (pylibsrtp) against packets protected by the simulator's sender."""

import base64
import os
import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.media import srtp
from siprecd.media.rtp import build_rtp
from siprecd.siprec.sdp import format_answer, negotiate, parse_sdp
from siprecd.siprec.session import RecordedStream
from siprecd.simulator.rtp import srtp_sender

SHA1_80, SHA1_32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
KEY = bytes(range(30))
KEY_TEXT = base64.b64encode(KEY).decode()          # 40 characters, no padding
OTHER = bytes(range(100, 130))
OTHER_TEXT = base64.b64encode(OTHER).decode()
HEAD = ("v=0", "o=SRC 1 1 IN IP4 198.51.100.7", "s=-", "c=IN IP4 198.51.100.7", "t=0 0")


def line(tag=1, suite=SHA1_80, key=KEY_TEXT, extra=""):
    return f"{tag} {suite} inline:{key}{extra}"


def offer(*mlines):
    return parse_sdp(("\r\n".join(HEAD + mlines) + "\r\n").encode())


def savp(port=4000, *crypto, label=None, proto="RTP/SAVP"):
    lines = (f"m=audio {port} {proto} 0",) + tuple(f"a=crypto:{c}" for c in crypto)
    return lines + ((f"a=label:{label}",) if label else ())


def no_key_in(text):
    for secret in (KEY_TEXT, OTHER_TEXT, KEY_TEXT[:20], KEY.hex()):
        assert secret not in text


# --- a=crypto parsing -----------------------------------------------------------


@pytest.mark.parametrize("suite, tag_length", [(SHA1_80, 10), (SHA1_32, 4)])
def test_the_two_suites_parse(suite, tag_length):
    attribute = srtp.parse_crypto(line(7, suite))
    assert (attribute.tag, attribute.suite.name, attribute.key) == (7, suite, KEY)
    assert attribute.suite.rtp_tag == tag_length and attribute.suite.rtcp_tag == 10
    assert (attribute.lifetime, attribute.mki, attribute.window) == (None, None, 128)


@pytest.mark.parametrize("extra, lifetime, mki", [
    ("|2^31", 2 ** 31, None),
    ("|1048576", 1048576, None),
    ("|2^20|1:4", 2 ** 20, (1, 4)),
    ("|7:1", None, (7, 1)),
    ("|1:4|2^20", 2 ** 20, (1, 4)),
])
def test_lifetime_and_mki(extra, lifetime, mki):
    attribute = srtp.parse_crypto(line(extra=extra))
    assert attribute.lifetime == lifetime
    assert (attribute.mki, attribute.mki_length) == (mki or (None, 0))


def test_session_parameters_we_honour():
    attribute = srtp.parse_crypto(line() + " KDR=0 WSH=256 FEC_ORDER=FEC_SRTP -X_VENDOR=1")
    assert attribute.window == 256


@pytest.mark.parametrize("value, why", [
    (line(suite="F8_128_HMAC_SHA1_80"), "suite F8_128_HMAC_SHA1_80 is not supported"),
    (line(suite="AEAD_AES_256_GCM"), "not supported"),
    (line(key="!!notbase64!!"), "not base64"),
    (line(key=KEY_TEXT[:-4]), "key and salt are 27 bytes"),
    (line(key=KEY_TEXT + "AAAA"), "key and salt are 33 bytes"),
    (line() + ";inline:" + OTHER_TEXT, "several master keys"),
    (f"1 {SHA1_80} uri:https://example.com/key", "not inline"),
    (line(extra="|2^49"), "beyond the SRTP limit"),
    (line(extra="|0"), "lifetime of 0"),
    (line(extra="|2^x"), "bad key lifetime"),
    (line(extra="|1:0"), "MKI length 0"),
    (line(extra="|1:129"), "MKI length 129"),
    (line(extra="|256:1"), "does not fit"),
    (line(extra="|1:4|2:4"), "two MKIs"),
    (line(extra="|2^20|2^21"), "two lifetimes"),
    (line() + " KDR=1", "key derivation rate"),
    (line() + " UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP is not supported"),
    (line() + " UNAUTHENTICATED_SRTP", "not supported"),
    (line() + " FEC_KEY=inline:" + OTHER_TEXT, "not supported"),
    (line() + " WSH=32", "replay window size 32"),
    ("x " + SHA1_80 + " inline:" + KEY_TEXT, "bad a=crypto tag"),
    ("1234567890 " + SHA1_80 + " inline:" + KEY_TEXT, "bad a=crypto tag"),
    ("1 " + SHA1_80, "needs a tag, a suite and key parameters"),
])
def test_lines_we_cannot_honour_are_refused_without_showing_keys(value, why):
    with pytest.raises(srtp.CryptoRefused) as e:
        srtp.parse_crypto(value)
    assert why in str(e.value)
    no_key_in(str(e.value))


def test_a_key_in_the_wrong_field_is_not_echoed():
    with pytest.raises(srtp.CryptoRefused) as e:
        srtp.parse_crypto(f"1 inline:{KEY_TEXT} {SHA1_80}")
    no_key_in(str(e.value))
    assert "(unprintable)" in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_crypto_raises_nothing_else(text):
    try:
        srtp.parse_crypto(text)
    except srtp.CryptoRefused:
        pass


# --- choosing a line -----------------------------------------------------------------


def test_our_preference_wins_and_the_answer_has_the_tag_and_a_fresh_key():
    offered = [line(1, SHA1_32), line(2, SHA1_80, OTHER_TEXT)]
    choice = srtp.negotiate_crypto(offered)
    assert choice.remote.tag == 2 and choice.remote.key == OTHER
    tag, suite, key_params = choice.answer.split()
    assert (tag, suite) == ("2", SHA1_80)
    ours = base64.b64decode(key_params.removeprefix("inline:"))
    assert len(ours) == 30 and ours not in (KEY, OTHER)
    again = srtp.negotiate_crypto(offered)
    assert again.answer != choice.answer  # a new key every time
    assert srtp.negotiate_crypto([line(5, SHA1_32)]).answer.startswith(f"5 {SHA1_32} inline:")


def test_unusable_lines_are_skipped_for_a_usable_one():
    choice = srtp.negotiate_crypto([line(1, "F8_128_HMAC_SHA1_80"), line(2, key="AAAA"),
                                    line(3, SHA1_32)])
    assert choice.remote.tag == 3


def test_an_unchanged_reoffer_keeps_the_choice_and_a_changed_one_rekeys():
    first = srtp.negotiate_crypto([line()])
    assert srtp.negotiate_crypto([line(2, SHA1_32), line()], previous=first) is first
    changed = srtp.negotiate_crypto([line(key=OTHER_TEXT)], previous=first)
    assert changed.remote.key == OTHER and changed.answer != first.answer


def test_no_usable_line_names_each_refusal():
    with pytest.raises(srtp.CryptoRefused) as e:
        srtp.negotiate_crypto([line(1, "FOO"), line(2, key="AAAA")])
    message = str(e.value)
    assert "tag 1: suite FOO is not supported" in message
    assert "tag 2: key and salt are 3 bytes" in message
    with pytest.raises(srtp.CryptoRefused, match="no a=crypto line"):
        srtp.negotiate_crypto([])


def test_nothing_shows_keys_in_its_repr():
    choice = srtp.negotiate_crypto([line()])
    sdp = offer(*savp(4000, line()))
    media = sdp.media[0]
    (sdp_choice,) = negotiate(offer(*savp(4000, line())), ("PCMU",), accept_srtp=True)
    stream = RecordedStream(0, 0, "1", None, None, 20000, "h", 4000, crypto=media.crypto,
                            srtp=choice)
    receiver = srtp.SrtpReceiver(choice.remote)
    ours = choice.answer.split("inline:")[1]
    for thing in (choice, choice.remote, sdp, attrs.evolve(sdp_choice, crypto=choice.answer),
                  stream, receiver):
        no_key_in(repr(thing))
        assert ours not in repr(thing)


# --- modes over an offer ---------------------------------------------------------------


def secure(sdp, mode, previous=None):
    choices = negotiate(sdp, ("PCMU",), accept_srtp=mode != "off")
    return srtp.secure_choices(sdp, choices, mode, previous)


def test_allowed_takes_srtp_when_offered_and_plain_rtp_when_not():
    sdp = offer(*savp(4000, line(3)), "m=audio 4002 RTP/AVP 0")
    choices, keys = secure(sdp, "allowed")
    assert choices[0].crypto == keys[0].answer and keys[0].remote.tag == 3
    assert choices[1] is not None and choices[1].crypto is None and keys[1] is None
    text = format_answer(sdp, choices, [20000, 20002], address="192.0.2.1", session_id="1",
                         session_version=1)
    answer = parse_sdp(text)
    assert [m.proto for m in answer.media] == ["RTP/SAVP", "RTP/AVP"]
    assert answer.media[0].crypto == (keys[0].answer,) and answer.media[1].crypto == ()


def test_savpf_is_sdes_too():
    _, keys = secure(offer(*savp(4000, line(), proto="RTP/SAVPF")), "allowed")
    assert keys[0] is not None


@pytest.mark.parametrize("mode", ["allowed", "required"])
def test_an_srtp_mline_without_a_usable_line_refuses_the_offer(mode):
    sdp = offer("m=audio 4002 RTP/AVP 0" if mode == "allowed" else "m=audio 0 RTP/AVP 0",
                *savp(4000, line(1, "FOO")))
    with pytest.raises(srtp.CryptoRefused, match="m-line 1: .*suite FOO"):
        secure(sdp, mode)
    why = "no a=crypto line" if mode == "allowed" else "SRTP is required.*no SDES keys"
    with pytest.raises(srtp.CryptoRefused, match="m-line 0: " + why):
        secure(offer(*savp(4000)), mode)


def test_required_refuses_any_plain_audio_mline():
    with pytest.raises(srtp.CryptoRefused, match="m-line 1: SRTP is required"):
        secure(offer(*savp(4000, line()), "m=audio 4002 RTP/AVP 0"), "required")
    # A refused (port 0) plain m-line asks for nothing.
    choices, keys = secure(offer(*savp(4000, line()), "m=audio 0 RTP/AVP 0"), "required")
    assert keys[0] is not None and choices[1] is None


def test_off_leaves_srtp_to_negotiate_which_refuses_it():
    choices, keys = secure(offer(*savp(4000, line()), "m=audio 4002 RTP/AVP 0"), "off")
    assert choices[0] is None and choices[1] is not None and keys == [None, None]


def test_previous_choices_are_kept_per_mline():
    sdp = offer(*savp(4000, line()), *savp(4002, line(key=OTHER_TEXT)))
    _, first = secure(sdp, "allowed")
    _, again = secure(sdp, "allowed", {0: first[0], 1: first[1]})
    assert again == first
    moved = offer(*savp(4000, line()), *savp(4002, line(key=KEY_TEXT)))
    _, third = secure(moved, "allowed", {0: first[0], 1: first[1]})
    assert third[0] is first[0] and third[1] is not first[1]


def test_a_bad_mode_is_a_programming_error():
    with pytest.raises(ValueError):
        srtp.secure_choices(offer(), [], "sometimes")


# --- packets ---------------------------------------------------------------------------


def rtp_packets(n, ssrc=0x1234, seq=65530, ts=1000):
    return [build_rtp(0, seq + i, ts + 160 * i, ssrc, bytes([i % 256]) * 160) for i in range(n)]


def sender_report(ssrc=0x1234):
    return struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4)


@pytest.mark.parametrize("suite, overhead", [(SHA1_80, 10), (SHA1_32, 4)])
def test_srtp_and_srtcp_round_trip(suite, overhead):
    sender = srtp_sender(suite, KEY)
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line(suite=suite)))
    plain = rtp_packets(20)  # the sequence number wraps on the way
    for p in plain:
        protected = sender.protect(p)
        assert len(protected) == len(p) + overhead and protected[12:] != p[12:]
        assert receiver.unprotect(protected) == p
    report = sender_report()
    assert receiver.unprotect_rtcp(sender.protect_rtcp(report)) == report
    stats = receiver.stats()
    assert (stats["srtp_packets"], stats["srtcp_packets"], stats["srtp_suite"]) == (20, 1, suite)
    assert stats["srtp_auth_failures"] == stats["srtp_replays"] == stats["srtp_errors"] == 0


def test_wrong_key_tampering_and_replays_are_counted_and_dropped():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line()))
    wrong = srtp_sender(SHA1_80, OTHER)
    for p in rtp_packets(5):
        assert receiver.unprotect(wrong.protect(p)) is None
    assert receiver.unprotect_rtcp(wrong.protect_rtcp(sender_report())) is None
    assert receiver.counters["srtp_auth_failures"] == 5
    assert receiver.counters["srtcp_auth_failures"] == 1

    right = srtp_sender(SHA1_80, KEY)
    packets = [right.protect(p) for p in rtp_packets(4, ssrc=0x99)]
    tampered = bytearray(packets[0])
    tampered[20] ^= 0x01
    assert receiver.unprotect(bytes(tampered)) is None
    header = bytearray(packets[0])
    header[1] ^= 0x08  # payload type: the header is authenticated too
    assert receiver.unprotect(bytes(header)) is None
    assert receiver.counters["srtp_auth_failures"] == 7
    assert receiver.unprotect(packets[0]) is not None
    assert receiver.unprotect(packets[0]) is None       # the same packet again
    assert receiver.unprotect(packets[2]) is not None
    assert receiver.unprotect(packets[1]) is not None   # late, but inside the window
    assert receiver.unprotect(packets[2]) is None
    assert receiver.counters["srtp_replays"] == 2
    assert receiver.counters["srtp_packets"] == 3


def test_a_packet_far_behind_the_window_is_a_replay():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line()))
    sender = srtp_sender(SHA1_80, KEY)
    packets = [sender.protect(p) for p in rtp_packets(300, seq=100)]
    assert receiver.unprotect(packets[-1]) is not None
    assert receiver.unprotect(packets[0]) is None
    assert receiver.counters["srtp_replays"] == 1


def test_short_long_and_garbage_datagrams_are_errors_not_crashes():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line()))
    for data in (b"", b"\x80", bytes(12), bytes(21), os.urandom(2000), bytearray(40),
                 memoryview(bytes(40))):
        assert receiver.unprotect(data) is None
        assert receiver.unprotect_rtcp(data) is None
    counted = sum(receiver.counters[k] for k in receiver.counters if k.startswith("srtp_")
                  and k != "srtp_packets")
    assert counted >= 7


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_unprotect_never_raises(data):
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line()))
    assert receiver.unprotect(data) is None
    assert receiver.unprotect_rtcp(data) is None


def with_mki(protected, mki, tag):
    return protected[:-tag] + mki + protected[-tag:]


def test_an_mki_is_checked_and_cut_out():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line(extra="|258:2")))
    sender = srtp_sender(SHA1_80, KEY)
    plain = rtp_packets(3)
    assert receiver.unprotect(with_mki(sender.protect(plain[0]), b"\x01\x02", 10)) == plain[0]
    assert receiver.unprotect(with_mki(sender.protect(plain[1]), b"\x01\x03", 10)) is None
    assert receiver.counters["srtp_errors"] == 1
    report = sender_report()
    assert receiver.unprotect_rtcp(with_mki(sender.protect_rtcp(report), b"\x01\x02", 10)) == report


def test_a_key_past_its_lifetime_is_not_used():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line(extra="|3")))
    sender = srtp_sender(SHA1_80, KEY)
    results = [receiver.unprotect(sender.protect(p)) for p in rtp_packets(5)]
    assert [r is not None for r in results] == [True, True, True, False, False]
    assert receiver.counters["srtp_key_expired"] == 2


def test_rekey_keeps_counters_and_switches_keys():
    first = srtp.parse_crypto(line())
    receiver = srtp.SrtpReceiver(first)
    old, new = srtp_sender(SHA1_80, KEY), srtp_sender(SHA1_80, OTHER)
    packets = rtp_packets(4)
    assert receiver.unprotect(old.protect(packets[0])) is not None
    receiver.rekey(first)
    assert receiver.counters["srtp_rekeys"] == 0  # the same key: nothing changes
    assert receiver.unprotect(old.protect(packets[1])) is not None
    receiver.rekey(srtp.parse_crypto(line(key=OTHER_TEXT)))
    assert receiver.unprotect(old.protect(packets[2])) is None
    assert receiver.unprotect(new.protect(packets[3])) is not None
    assert receiver.counters["srtp_rekeys"] == 1
    assert receiver.counters["srtp_packets"] == 3
    assert receiver.counters["srtp_auth_failures"] == 1


def test_a_new_ssrc_is_accepted_once_it_authenticates():
    receiver = srtp.SrtpReceiver(srtp.parse_crypto(line()))
    sender = srtp_sender(SHA1_80, KEY)
    for ssrc in (1, 2, 3):
        assert receiver.unprotect(sender.protect(rtp_packets(1, ssrc=ssrc)[0])) is not None
    assert receiver.counters["srtp_packets"] == 3
