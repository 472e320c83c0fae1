"""Every audio stream of a SIPREC session transcribed, and sessions that
share a guid kept apart, through a real daemon (a subprocess) with the real
Korean Vosk model and espeak-ng speech, sent as G.711 RTP by a raw-socket
SRC (harness.rawsrc), started and read back through the HTTPS API.

- A 3-party offer (three labelled streams, a conference bridge's or a
  3-way call's): each stream's words are stored in its role (the third in
  ``media.extra_stream_role``, agent) with the participant the metadata
  names for it.
- A transfer signalled as a new m-line (the customer's m-line set to port
  0, the new party on a third m-line): the new stream is the customer's.
- Two concurrent sessions with one guid (Cisco's built-in bridge, Avaya
  keeping the UCID across a conference): one start reaches both, both are
  transcribed, and the first one's BYE cuts neither the second nor the
  conversation.

Whose words are whose: each stream says a different sentence; the words
stored for a stream must share more with a bare recogniser's words for its
own audio than with any other stream's.
"""

import difflib
import socket
import json

import numpy as np
import pytest
import vosk

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, free_port, korean_model, write_config
from harness.rawsrc import RawSrc, answer_ports, send_rtp
from siprecd.media.codecs import ulaw_decode, ulaw_encode
from siprecd.simulator.samples import sample_invite, sample_sdp
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

SENTENCES = [
    "안녕하세요 고객님 무엇을 도와드릴까요",
    "제 카드 번호를 확인하고 싶습니다",
    "오늘 날씨가 정말 좋네요",
    "전화해 주셔서 감사합니다",
]
SPEED = 4.0
# Where the raw SRC sends RTP from, and so what its SDP names (a stream
# latches to its first packet's source; the SDP's host is the hint).
SRC = "127.0.0.1"
MESSAGES = "/conversation/v1/conversation/messages?externalId="


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    said = [korean_speech(text, folder / f"v{i}.wav") for i, text in enumerate(SENTENCES)]
    return [np.concatenate([np.zeros(4000, np.int16), s, np.zeros(12000, np.int16)])
            for s in said]


@pytest.fixture(scope="module")
def reference():
    model = vosk.Model(str(korean_model()))

    def words(audio):
        recognizer = vosk.KaldiRecognizer(model, 8000)
        recognizer.SetWords(True)
        pcm = ulaw_decode(ulaw_encode(audio)).astype("<i2").tobytes()
        out = []
        for i in range(0, len(pcm), 3200):
            if recognizer.AcceptWaveform(pcm[i:i + 3200]):
                out += [w["word"] for w in json.loads(recognizer.Result()).get("result", [])]
        out += [w["word"] for w in json.loads(recognizer.FinalResult()).get("result", [])]
        return out

    return words


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    directory = tmp_path_factory.mktemp("node")
    path, cfg = write_config(directory, media={"host": "127.0.0.1"})
    with Daemon(path) as daemon:
        daemon.wait_ready(180)
        api_id, secret = create_app(path, label="every-stream")
        api = ApiClient(cfg["api"]["port"], directory / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        daemon.api, daemon.cfg = api, cfg
        yield daemon


def payloads(audio):
    encoded = ulaw_encode(np.concatenate([audio, np.zeros(-len(audio) % 160, np.int16)]))
    return [encoded[i:i + 160] for i in range(0, len(encoded), 160)]


def start(node, guid):
    answer = node.api.start(guid, "cust-1", "agent-1",
                            autotranscribeParams={"language": KO_LANGUAGE})
    assert answer.status == 200, answer.body
    return answer.body


def stored_messages(node, guid):
    answer = node.api.get(MESSAGES + guid)
    assert answer.status == 200, answer.body
    return answer.body["items"]


def words_by_stream(items):
    out = {}
    for m in items:
        out.setdefault(m["streamId"], []).extend(m["text"].split())
    return out


def similarity(a, b):
    return difflib.SequenceMatcher(a=a, b=b).ratio()


def assert_own_words(got, expected_by_stream, all_expected):
    """*got* (stored words of one stream) is closer to its own audio's words
    than to any other stream's."""
    mine = similarity(got, expected_by_stream)
    others = [similarity(got, e) for e in all_expected if e is not expected_by_stream]
    assert got and mine > max(others), (got, expected_by_stream, mine, others)
    return mine


def test_three_party_offer_every_stream_in_its_role(node, voices, reference):
    sample = sample_invite("rfc7865", labels=("1", "2", "3"), call_key="three-party", host=SRC)
    with RawSrc("127.0.0.1", node.cfg["sip"]["udp"]["port"], "udp") as src:
        dialog = src.invite(sample.body, sample.content_type, call_id=sample.call_id)
        assert dialog.response.status == 200
        src.in_dialog(dialog, "ACK")
        started = start(node, sample.guid)
        assert [(s["label"], s["role"], s["primary"]) for s in started["streams"]] == [
            ("1", "customer", True), ("2", "agent", True), ("3", "agent", False)]
        assert started["streams"][2]["participant"]["aor"] == "sip:party3@cc.example.com"
        node.wait_for(r"stream 3 \(m-line 2\) of call .*: agent \(further stream\)", 10)
        # The calls in progress, as a controller that missed the guid sees
        # them: this call, its three streams with their roles and senders.
        listed = node.api.get("/conversation/v1/calls")
        assert listed.status == 200, listed.body
        (call,) = [c for c in listed.body["calls"] if c["externalId"] == sample.guid]
        (session,) = call["sessions"]
        assert [(st["label"], st["role"], st["transcription"]) for st in session["streams"]] == [
            ("1", "customer", "started"), ("2", "agent", "started"), ("3", "agent", "started")]
        assert session["streams"][2]["participant"]["aor"] == "sip:party3@cc.example.com"
        assert {a for p in call["participants"] for a in p["aors"]} >= {
            "sip:party3@cc.example.com"}
        assert call["identifiers"] and call["node"]
        ports = [p for p in answer_ports(dialog.response)]
        send_rtp(ports, [payloads(v) for v in voices[:3]], speed=SPEED)
        stopped = node.api.stop(sample.guid)
        assert stopped.status == 200
        assert src.in_dialog(dialog, "BYE").status == 200
    items = stored_messages(node, sample.guid)
    ids = {s["label"]: s["streamId"] for s in started["streams"]}
    got = words_by_stream(items)
    expected = [reference(v) for v in voices[:3]]
    for i, label in enumerate(("1", "2", "3")):
        share = assert_own_words(got.get(ids[label], []), expected[i], expected)
        print(f"3-party stream {label}: {len(got[ids[label]])} words, {share:.0%} like its own "
              f"audio recognised directly")
    roles = {m["streamId"]: m["sender"]["role"] for m in items}
    assert roles[ids["1"]] == "customer" and roles[ids["2"]] == roles[ids["3"]] == "agent"
    third = [m for m in items if m["streamId"] == ids["3"]]
    assert all(m["participant"]["aor"] == "sip:party3@cc.example.com" for m in third)


def test_transfer_as_a_new_m_line_keeps_the_customer_role(node, voices, reference):
    sample = sample_invite("rfc7865", labels=("1", "2"), call_key="transfer-new-mline", host=SRC)
    with RawSrc("127.0.0.1", node.cfg["sip"]["tcp"]["port"], "tcp") as src:
        dialog = src.invite(sample.body, sample.content_type, call_id=sample.call_id)
        assert dialog.response.status == 200
        src.in_dialog(dialog, "ACK")
        started = start(node, sample.guid)
        before = answer_ports(dialog.response)
        send_rtp(before, [payloads(voices[0]), payloads(voices[1])], speed=SPEED)
        # The customer is transferred: its m-line to port 0, the new party on m-line 3.
        offer = sample_sdp(("1", "2", "3"), host=SRC).replace(b"m=audio 16384 ", b"m=audio 0 ", 1)
        r = src.in_dialog(dialog, "INVITE", body=offer, content_type="application/sdp")
        assert r.status == 200
        src.in_dialog(dialog, "ACK")
        after = answer_ports(r)
        assert after[0] is None and after[1] == before[1]
        send_rtp([after[1], after[2]], [payloads(voices[3]), payloads(voices[2])],
                 speed=SPEED, ssrc_base=0x7E570000)
        node.wait_for(r"stream 3 \(m-line 2\) of call .*: customer as stream .* \(joined", 10)
        stopped = node.api.stop(sample.guid).body
        assert src.in_dialog(dialog, "BYE").status == 200
    new = next(s for s in stopped["streams"] if s["label"] == "3")
    first = next(s for s in started["streams"] if s["label"] == "1")
    assert new["role"] == "customer" and new["primary"]
    assert new["streamId"] != first["streamId"]
    items = stored_messages(node, sample.guid)
    got = words_by_stream(items)
    expected = [reference(v) for v in voices]
    share = assert_own_words(got.get(new["streamId"], []), expected[2], expected)
    print(f"transferred-to party (new m-line): {len(got[new['streamId']])} words as customer, "
          f"{share:.0%} like its own audio")
    assert {m["sender"]["role"] for m in items if m["streamId"] == new["streamId"]} == {"customer"}
    assert got.get(first["streamId"])          # the party before the transfer, too


def test_two_sessions_with_one_guid_are_both_transcribed_and_neither_cut(node, voices,
                                                                         reference):
    guid_header = ("Cisco-Guid", "1111-2222-3333-4444")
    one = sample_invite("cisco", call_key="bib-near", host=SRC)
    two = sample_invite("cisco", call_key="bib-far", host=SRC)
    port = node.cfg["sip"]["udp"]["port"]
    with RawSrc("127.0.0.1", port) as a, RawSrc("127.0.0.1", port) as b:
        headers = [f"{guid_header[0]}: {guid_header[1]}"]
        first = a.invite(one.body, one.content_type, call_id=one.call_id, headers=headers)
        second = b.invite(two.body, two.content_type, call_id=two.call_id, headers=headers)
        assert first.response.status == second.response.status == 200
        a.in_dialog(first, "ACK")
        b.in_dialog(second, "ACK")
        guid = "0000001111-0000002222-0000003333-0000004444"
        node.wait_for(rf"guid {guid} has another SIPREC session", 10)
        started = start(node, guid)
        assert len(started["streams"]) == 4
        assert {s["callId"] for s in started["streams"]} == {one.call_id, two.call_id}
        # Each stream sends from a port of its own, the same in both rounds:
        # a stream latches to its first packet's source.
        sources = [("127.0.0.1", free_port(socket.SOCK_DGRAM)) for _ in range(4)]
        send_rtp(answer_ports(first.response) + answer_ports(second.response),
                 [payloads(voices[0]), payloads(voices[1]), payloads(voices[2]),
                  payloads(voices[3])], speed=SPEED, sources=sources)
        # The first session ends; the second goes on, still transcribed.
        assert a.in_dialog(first, "BYE").status == 200
        # (The session's end waits for its recognisers to catch up, which
        # may take a while on a loaded machine.)
        node.wait_for(rf"session {one.call_id} of guid {guid} ended \(bye from SRC\); 1 other",
                      90)
        send_rtp(answer_ports(second.response), [payloads(voices[0]), payloads(voices[1])],
                 speed=SPEED, ssrc_base=0x5EED0000, sources=sources[2:])
        stopped = node.api.stop(guid)
        assert stopped.status == 200, stopped.body
        assert b.in_dialog(second, "BYE").status == 200
        assert not [r for r in a.requests_from_srs + b.requests_from_srs if r.method == "BYE"]
    items = stored_messages(node, guid)
    got = words_by_stream(items)
    ids = [s["streamId"] for s in started["streams"]]
    assert all(got.get(i) for i in ids), {i: len(got.get(i, [])) for i in ids}
    expected = [reference(v) for v in voices]
    second_ids = [s["streamId"] for s in started["streams"] if s["callId"] == two.call_id]
    # The second session was transcribed after the first one's BYE: its
    # streams heard both rounds of speech.
    for stream_id in second_ids:
        assert len(got[stream_id]) > min(len(e) for e in expected)
    print(f"two sessions, one guid: {len(items)} messages on {len(ids)} streams "
          f"({', '.join(str(len(got[i])) for i in ids)} words)")
