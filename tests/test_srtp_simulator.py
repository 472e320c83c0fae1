"""The simulator's SRTP: its offer (RTP/SAVP with a=crypto), its check of
the SRS's answer, and ``siprecd-src --srtp`` against a daemon that
requires SRTP (a subprocess, as in tests/test_simulator.py)."""

import base64
import types

import pytest
from twisted.internet.task import Clock

from harness.daemon import Daemon, write_config
from siprecd.media import srtp
from siprecd.simulator import CallSpec
from siprecd.simulator.invite import offer_sdp
from siprecd.simulator.uac import SiprecCall
from siprecd.siprec.sdp import parse_sdp
from test_simulator import _cli, _running

SHA1_80, SHA1_32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"


@pytest.fixture(scope="module")
def srtp_srs(tmp_path_factory):
    path, cfg = write_config(tmp_path_factory.mktemp("srtp-srs"), media={"srtp": "required"})
    daemon = Daemon(path).start()
    daemon.port = cfg["sip"]["udp"]["port"]
    yield from _running(daemon)


def test_cli_srtp_call_with_hold_is_clean(srtp_srs):
    result = _cli(f"127.0.0.1:{srtp_srs.port}", "--srtp", "--srtp-suite", "aes_cm_128_hmac_sha1_32",
                  "--speed", "10", "--duration", "2", "--hold", "0.6:0.4", "--rtcp", "--json", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    import json

    data = json.loads(result.stdout)
    (call,) = data["calls"]
    assert call["hold"] == [["hold", 200], ["resume", 200]]
    assert [s["srtp_suite"] for s in call["streams"]] == [SHA1_32, SHA1_32]
    srtp_srs.wait_for(r"receiving SRTP \(AES_CM_128_HMAC_SHA1_32\) for guid", timeout=10)


def test_cli_plain_offer_to_a_srtp_only_srs_is_refused_with_the_reason(srtp_srs):
    result = _cli(f"127.0.0.1:{srtp_srs.port}", "--speed", "20", "--duration", "0.4")
    assert result.returncode == 1
    assert "FAILED  488 Not Acceptable Here" in result.stdout
    assert "SRTP is required here (media.srtp)" in result.stdout
    text = _cli(f"127.0.0.1:{srtp_srs.port}", "--srtp", "--speed", "20", "--duration", "0.4")
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"PCMU SRTP {SHA1_80} from" in text.stdout


def test_cli_srtp_suite_needs_srtp():
    result = _cli("127.0.0.1:9", "--srtp-suite", SHA1_32)
    assert result.returncode == 2 and "--srtp-suite is for --srtp" in result.stderr
    result = _cli("127.0.0.1:9", "--srtp", "--srtp-suite", "F8_128_HMAC_SHA1_80")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_callspec_checks_the_suite():
    assert CallSpec(srtp=True, srtp_suite="aes_cm_128_hmac_sha1_32").srtp_suite == SHA1_32
    with pytest.raises(ValueError, match="srtp_suite must be one of"):
        CallSpec(srtp=True, srtp_suite="NULL")


def test_the_offer_is_savp_with_one_key_per_stream():
    keys = [bytes([1]) * 30, bytes([2]) * 30]
    crypto = [srtp.format_crypto(1, srtp.SUITES[SHA1_80], k) for k in keys]
    offer = parse_sdp(offer_sdp("127.0.0.1", [40000, 40002], "PCMU", crypto=crypto))
    assert [m.proto for m in offer.media] == ["RTP/SAVP"] * 2
    for media, key in zip(offer.media, keys):
        (value,) = media.crypto
        assert srtp.parse_crypto(value).key == key
    plain = parse_sdp(offer_sdp("127.0.0.1", [40000, 40002], "PCMU"))
    assert [m.proto for m in plain.media] == ["RTP/AVP"] * 2 and plain.media[0].crypto == ()


def _call(suite=SHA1_80):
    client = types.SimpleNamespace(reactor=Clock(), local_host="127.0.0.1")
    return SiprecCall(client, 1, CallSpec(srtp=True, srtp_suite=suite), None, speed=1, seed=1,
                      guid_order=())


def _answer(*lines, proto="RTP/SAVP"):
    text = "\r\n".join(["v=0", "o=siprecd 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
                        "t=0 0", f"m=audio 20000 {proto} 0", *lines, "a=recvonly"]) + "\r\n"
    return parse_sdp(text.encode()).media[0]


KEY = base64.b64encode(bytes(30)).decode()


@pytest.mark.parametrize("media, problem", [
    (_answer(f"a=crypto:1 {SHA1_80} inline:{KEY}"), None),
    (_answer(proto="RTP/AVP"), "answered RTP/AVP to our SRTP offer"),
    (_answer(), "answered 0 a=crypto lines"),
    (_answer(f"a=crypto:1 {SHA1_80} inline:{KEY}", f"a=crypto:2 {SHA1_80} inline:{KEY}"),
     "answered 2 a=crypto lines"),
    (_answer(f"a=crypto:2 {SHA1_80} inline:{KEY}"), "tag 2"),
    (_answer(f"a=crypto:1 {SHA1_32} inline:{KEY}"), f"we offered tag 1 {SHA1_80}"),
    (_answer(f"a=crypto:1 {SHA1_80} inline:AAAA"), "unusable a=crypto in the answer"),
])
def test_the_answer_is_checked(media, problem):
    call = _call()
    stream = call.streams[0]
    assert call._check_srtp(stream, media) is (problem is None)
    if problem is None:
        assert stream.result.srtp_suite == SHA1_80 and not call.result.problems
    else:
        (reported,) = call.result.problems
        assert problem in reported and KEY not in reported


def test_every_stream_has_its_own_key_kept_for_the_whole_call():
    call = _call()
    keys = [s.srtp_key for s in call.streams]
    assert len(set(keys)) == 2 and all(len(k) == 30 for k in keys)
    call.streams[0].result.local_port, call.streams[1].result.local_port = 40000, 40002
    first, held = call._sdp("sendonly"), call._sdp("inactive")
    assert parse_sdp(first).media[0].crypto == parse_sdp(held).media[0].crypto
