"""SDES-SRTP in the SIP layer, without sockets: what the recording server
answers to SRTP offers in each media.srtp mode, the 488s and their
Warning, and keys across re-INVITEs."""

import base64

import pytest

from siprecd.simulator.samples import sample_invite, sample_sdp
from siprecd.siprec.sdp import parse_sdp
from test_siprec_server import Harness

SHA1_80, SHA1_32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"
KEYS = [base64.b64encode(bytes([i]) * 30).decode() for i in range(4)]
PORTS = {"port_min": 30000, "port_max": 30011}


def srtp_sdp(labels=("1", "2"), crypto=None, proto="RTP/SAVP"):
    """sample_sdp with SAVP m-lines, each with its a=crypto lines
    (default: one AES_CM_128_HMAC_SHA1_80 line with tag 1 and its own key)."""
    crypto = crypto or [[f"1 {SHA1_80} inline:{KEYS[i]}"] for i in range(len(labels))]
    text = sample_sdp(labels).decode()
    parts = text.split("m=audio")
    out = parts[0]
    for i, part in enumerate(parts[1:]):
        part = part.replace("RTP/AVP", proto, 1)
        lines = "".join(f"a=crypto:{c}\r\n" for c in crypto[i])
        out += "m=audio" + part.replace("a=label:", lines + "a=label:", 1)
    return out.encode()


def harness(mode=None, **media):
    section = dict(PORTS, **media)
    if mode is not None:
        section["srtp"] = mode
    return Harness(media=section)


def invite(h, sdp, call_id="c1@192.0.2.10"):
    return h.request("INVITE", call_id=call_id, body=sdp, content_type="application/sdp",
                     headers=[("Require", "siprec")])[-1]


def warning(response):
    return response.headers.get("Warning") or ""


def session_of(h, call_id="c1@192.0.2.10"):
    return h.listener.by_call_id[call_id]


@pytest.mark.parametrize("mode", [None, "allowed", "required"])
def test_an_srtp_offer_is_answered_with_one_crypto_line_of_ours(mode):
    h = harness(mode)
    ok = invite(h, srtp_sdp())
    assert ok.status == 200, warning(ok)
    answer = parse_sdp(ok.body)
    session = session_of(h)
    for i, media in enumerate(answer.media):
        assert media.proto == "RTP/SAVP"
        (value,) = media.crypto
        tag, suite, key = value.split()
        assert (tag, suite) == ("1", SHA1_80)
        assert key.removeprefix("inline:") not in KEYS  # our own key, not the SRC's
        stream = session.streams[i]
        assert stream.srtp.remote.key == base64.b64decode(KEYS[i])
        assert stream.srtp.answer == value
        assert KEYS[i] not in repr(session)


def test_the_sha1_32_suite_and_tag_are_echoed():
    h = harness()
    sdp = srtp_sdp(("1",), [[f"1 AES_CM_999 inline:{KEYS[0]}", f"4 {SHA1_32} inline:{KEYS[1]}"]])
    ok = invite(h, sdp)
    assert ok.status == 200
    (value,) = parse_sdp(ok.body).media[0].crypto
    assert value.split()[:2] == ["4", SHA1_32]


def test_allowed_takes_plain_rtp_too():
    ok = invite(harness(), sample_sdp())
    assert ok.status == 200
    answer = parse_sdp(ok.body)
    assert [m.proto for m in answer.media] == ["RTP/AVP"] * 2
    assert all(m.crypto == () for m in answer.media)


def test_required_answers_488_to_a_plain_offer_with_a_reason():
    h = harness("required")
    for sdp in (sample_sdp(), srtp_sdp(("1",)) + sample_sdp(("2",)).split(b"t=0 0\r\n")[1]):
        r = invite(h, sdp)
        assert r.status == 488
        assert "SRTP is required here (media.srtp)" in warning(r)
        assert warning(r).startswith('304 siprecd "')
    assert h.ports.allocate() == 30000  # nothing was kept


def test_no_acceptable_crypto_line_is_488_naming_why():
    h = harness()
    two_keys = f"2 {SHA1_80} inline:{KEYS[1]}|2^20|1:4;inline:{KEYS[2]}|2^20|2:4"
    sdp = srtp_sdp(("1", "2"), [[f"1 {SHA1_80} inline:{KEYS[0]}"],
                                [f"1 F8_128_HMAC_SHA1_80 inline:{KEYS[1]}", two_keys]])
    r = invite(h, sdp)
    assert r.status == 488
    text = warning(r)
    assert "m-line 1" in text and "F8_128_HMAC_SHA1_80 is not supported" in text
    assert "several master keys" in text
    assert not any(k in text for k in KEYS)
    r = invite(h, srtp_sdp(("1",), [[]]), call_id="c2@192.0.2.10")
    assert r.status == 488 and "no a=crypto line" in warning(r)


def test_off_refuses_srtp_mlines_and_says_so_when_nothing_is_left():
    h = harness("off")
    r = invite(h, srtp_sdp())
    assert r.status == 488 and "SRTP is turned off here (media.srtp)" in warning(r)
    mixed = srtp_sdp(("1",)) + sample_sdp(("2",), first_port=16386).split(b"t=0 0\r\n")[1]
    ok = invite(h, mixed, call_id="c2@192.0.2.10")
    assert ok.status == 200
    assert [m.port == 0 for m in parse_sdp(ok.body).media] == [True, False]


def reinvite(h, call_id, ok, cseq, sdp):
    return h.request("INVITE", call_id=call_id, to_tag=ok.to.tag, cseq=cseq, body=sdp,
                     content_type="application/sdp")[-1]


class Updates:
    """Counts call_updated calls that the media plane would act on."""

    def __init__(self, registry):
        self.count = 0
        original = registry.call_updated

        def call_updated(session):
            self.count += 1
            return original(session)

        registry.call_updated = call_updated


def test_reinvite_keeps_keys_while_unchanged_and_rekeys_when_changed():
    h = harness()
    updates = Updates(h.listener)
    sample = sample_invite("rfc7865")
    body = sample.body.replace(sample_sdp(), srtp_sdp())
    assert sample_sdp() in sample.body
    ok = h.request("INVITE", call_id=sample.call_id, body=body, content_type=sample.content_type,
                   headers=[("Require", "siprec"), *sample.headers])[-1]
    assert ok.status == 200
    h.request("ACK", call_id=sample.call_id, to_tag=ok.to.tag)
    session = h.listener.get(sample.guid)
    first = [s.srtp for s in session.streams]
    first_answer = parse_sdp(ok.body)

    # The same offer again (a session refresh): same contexts, same answer keys.
    r = reinvite(h, sample.call_id, ok, 2, srtp_sdp())
    assert r.status == 200
    assert [s.srtp for s in session.streams] == first
    assert all(a is b for a, b in zip((s.srtp for s in session.streams), first))
    assert [m.crypto for m in parse_sdp(r.body).media] == [m.crypto for m in first_answer.media]
    assert updates.count == 0

    # Hold keeps the keys too.
    held = srtp_sdp().replace(b"a=sendonly", b"a=inactive")
    assert reinvite(h, sample.call_id, ok, 3, held).status == 200
    assert all(a is b for a, b in zip((s.srtp for s in session.streams), first))

    # The SRC re-keys stream 2: a new context there, stream 1 keeps its own.
    rekeyed = srtp_sdp(crypto=[[f"1 {SHA1_80} inline:{KEYS[0]}"],
                               [f"1 {SHA1_80} inline:{KEYS[3]}"]])
    r = reinvite(h, sample.call_id, ok, 4, rekeyed)
    assert r.status == 200
    now = [s.srtp for s in session.streams]
    assert now[0] is first[0]
    assert now[1] is not first[1] and now[1].remote.key == base64.b64decode(KEYS[3])
    answer = parse_sdp(r.body)
    assert answer.media[0].crypto == first_answer.media[0].crypto
    assert answer.media[1].crypto != first_answer.media[1].crypto
    assert updates.count >= 2  # the hold and the re-key reached the media plane

    # A re-offer with no usable key: 488 with the reason, the call goes on.
    bad = srtp_sdp(crypto=[[f"1 {SHA1_80} inline:{KEYS[0]}"], ["1 NOPE inline:x"]])
    r = reinvite(h, sample.call_id, ok, 5, bad)
    assert r.status == 488 and "m-line 1" in warning(r)
    assert [s.srtp for s in session.streams] == now and session.state == "confirmed"
