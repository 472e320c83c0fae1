"""The recording server behind the SIP endpoint, without sockets, on task.Clock."""

import itertools

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from siprecd import config
from siprecd.calls import CallRegistry
from siprecd.interfaces import ICallListener, IMediaPortAllocator
from siprecd.media.ports import RangePortAllocator
from siprecd.service import Readiness
from siprecd.simulator.samples import FLAVOURS, sample_invite, sample_sdp
from siprecd.sip.endpoint import SipEndpoint, Source
from siprecd.sip.message import parse_message
from siprecd.siprec.sdp import parse_sdp
from siprecd.siprec.server import RecordingServer
from siprecd.testing.doubles import HeldCallListener, SentMessages

SRC = Source("UDP", "192.0.2.10", 5060, None, "192.0.2.1", 5070)
_branches = itertools.count(1)


class Harness:
    def __init__(self, listener=None, ready=True, **sections):
        self.clock = Clock()
        self.config = config.from_dict({"media": {"port_min": 30000, "port_max": 30011}, **sections})
        self.wire = SentMessages()
        self.endpoint = SipEndpoint(self.clock, self.wire)
        self.ports = RangePortAllocator(self.clock, 30000, 30011, 5.0)
        self.listener = listener if listener is not None else CallRegistry()
        self.readiness = Readiness()
        if not ready:
            self.readiness.wait_for("asr", "loading model")
        self.server = RecordingServer(self.endpoint, self.clock, self.config, self.listener,
                                      self.ports, self.readiness)

    def request(self, method, *, call_id="c1@192.0.2.10", cseq=1, to_tag=None, body=b"",
                content_type=None, headers=(), branch=None, from_tag="src1", cseq_method=None):
        branch = branch or f"z9hG4bK{next(_branches)}"
        to = "<sip:srs@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} sip:srs@192.0.2.1:5070 SIP/2.0",
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport",
            f"From: <sip:src@192.0.2.10>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            "Contact: <sip:src@192.0.2.10:5060>;+sip.src",
            "Max-Forwards: 70",
            *[f"{k}: {v}" for k, v in headers],
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self.endpoint.datagram_received(data, SRC)
        return self.wire.pop()

    def invite(self, flavour="rfc7865", headers=(), **kw):
        sample = sample_invite(flavour, **kw)
        return sample, self.request(
            "INVITE", call_id=sample.call_id, body=sample.body, content_type=sample.content_type,
            headers=[("Require", "siprec"), *sample.headers, *headers],
        )

    def established(self, flavour="rfc7865", **kw):
        sample, responses = self.invite(flavour, **kw)
        ok = responses[-1]
        assert ok.status == 200, ok
        self.request("ACK", call_id=sample.call_id, to_tag=ok.to.tag)
        return sample, ok


def test_listener_and_allocator_are_what_the_interfaces_say():
    verifyObject(ICallListener, CallRegistry())
    verifyObject(ICallListener, HeldCallListener())
    verifyObject(IMediaPortAllocator, RangePortAllocator(Clock(), 20000, 20100))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_vendor_flavour_is_answered(flavour):
    h = Harness()
    sample, responses = h.invite(flavour)
    assert [r.status for r in responses] == [100, 200]
    ok = responses[-1]
    answer = parse_sdp(ok.body)
    assert len(answer.media) == 2
    assert [m.label for m in answer.media] == ["1", "2"]
    for m in answer.media:
        assert m.direction == "recvonly"
        assert [c.name for c in m.codecs] == ["PCMU", "TELEPHONE-EVENT"]
        assert m.connection == "192.0.2.1"  # the address the SBC reached us on
    assert "+sip.srs" in ok.headers.get("Contact")
    session = h.listener.get(sample.guid)
    assert session is not None, sample.guid
    assert session.guid.value == sample.guid
    assert len(session.identifiers) >= 2  # the chosen one and at least the Call-ID
    assert [s.audio_index for s in session.streams] == [0, 1]


def test_plain_sdp_single_stream_is_a_mixed_recording():
    h = Harness()
    sdp = sample_sdp(("1",))
    responses = h.request("INVITE", body=sdp, content_type="application/sdp")
    assert responses[-1].status == 200
    session = h.listener.by_call_id["c1@192.0.2.10"]
    assert session.mixed and session.metadata is None
    assert session.guid.source == "call-id"


def test_unsupported_extension_gets_420():
    h = Harness()
    responses = h.request("INVITE", body=sample_sdp(), content_type="application/sdp",
                          headers=[("Require", "siprec, 100rel, foo")])
    assert responses[-1].status == 420
    assert responses[-1].headers.get_all("Unsupported") == ["100rel", "foo"]


def test_no_codec_in_common_gets_488():
    h = Harness()
    sdp = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 3\r\n"
    responses = h.request("INVITE", body=sdp, content_type="application/sdp")
    assert responses[-1].status == 488


def test_bad_sdp_gets_400():
    h = Harness()
    responses = h.request("INVITE", body=b"v=1\r\nnonsense", content_type="application/sdp")
    assert responses[-1].status == 400
    assert responses[-1].reason.startswith("Bad SDP")


def test_not_ready_and_draining_get_503_with_retry_after():
    h = Harness(ready=False)
    for method in ("INVITE", "OPTIONS"):
        r = h.request(method, body=sample_sdp() if method == "INVITE" else b"",
                      content_type="application/sdp" if method == "INVITE" else None)[-1]
        assert r.status == 503 and r.headers.get("Retry-After")
    h = Harness()
    assert h.request("OPTIONS")[-1].status == 200
    h.server.stop_accepting()
    assert h.request("OPTIONS")[-1].status == 503
    assert h.request("INVITE", body=sample_sdp(), content_type="application/sdp")[-1].status == 503


def test_options_lists_capabilities():
    ok = Harness().request("OPTIONS")[-1]
    assert ok.status == 200
    assert "siprec" in ok.headers.get_all("Supported")
    assert "INVITE" in ok.headers.get_all("Allow")
    assert "application/rs-metadata+xml" in ok.headers.get_all("Accept")


def test_port_exhaustion_and_max_calls_get_503():
    h = Harness()  # 6 RTP ports: three two-stream calls
    statuses = [h.invite(call_key=f"k{i}")[1][-1].status for i in range(4)]
    assert statuses == [200, 200, 200, 503]
    h = Harness(sip={"max_calls": 1})
    assert h.invite(call_key="a")[1][-1].status == 200
    assert h.invite(call_key="b")[1][-1].status == 503


def test_ports_come_back_after_quarantine():
    h = Harness()
    sample, ok = h.established()
    h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2)
    assert h.ports.in_use == 0
    assert [h.invite(call_key=f"n{i}")[1][-1].status for i in range(3)] == [200, 200, 503]
    h.clock.advance(5)
    assert h.invite(call_key="later")[1][-1].status == 200


def test_hold_resume_new_label_and_metadata_update():
    h = Harness()
    sample, ok = h.established()
    session = h.listener.get(sample.guid)
    ports = [s.local_port for s in session.streams]
    held = sample_sdp(("1", "2")).replace(b"a=sendonly", b"a=inactive")
    r = h.request("INVITE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2, body=held,
                  content_type="application/sdp")[-1]
    assert r.status == 200
    assert session.on_hold and [m.direction for m in parse_sdp(r.body).media] == ["inactive"] * 2
    assert [s.local_port for s in session.streams] == ports  # same ports across re-offers
    three = sample_sdp(("1", "2", "3"))
    r = h.request("INVITE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=3, body=three,
                  content_type="application/sdp")[-1]
    assert r.status == 200 and not session.on_hold
    assert [s.label for s in session.streams] == ["1", "2", "3"]
    assert [s.local_port for s in session.streams][:2] == ports
    update = sample_invite("rfc7865", call_key="transfer").metadata.replace(
        b"<datamode>complete</datamode>", b"<datamode>partial</datamode>")
    r = h.request("UPDATE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=4, body=update,
                  content_type="application/rs-metadata+xml")[-1]
    assert r.status == 200 and r.body == b""


def test_in_dialog_errors():
    h = Harness()
    sample, ok = h.established()
    assert h.request("BYE", call_id=sample.call_id, to_tag="nope", cseq=2)[-1].status == 481
    assert h.request("INFO", call_id=sample.call_id, to_tag=ok.to.tag, cseq=1)[-1].status == 500
    assert h.request("INFO", call_id=sample.call_id, to_tag=ok.to.tag, cseq=5)[-1].status == 200
    assert h.request("MESSAGE")[-1].status == 405


def test_bye_from_src_ends_the_call_and_frees_ports():
    h = Harness()
    sample, ok = h.established()
    assert h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2)[-1].status == 200
    assert h.listener.get(sample.guid) is None and h.listener.ended == 1
    assert h.ports.in_use == 0 and h.server.calls == {}


def test_cancel_before_answer_gets_487():
    listener = HeldCallListener()
    h = Harness(listener=listener)
    sample = sample_invite()
    branch = "z9hG4bKcancelme"
    responses = h.request("INVITE", call_id=sample.call_id, body=sample.body,
                          content_type=sample.content_type, branch=branch)
    assert [r.status for r in responses] == [100]
    responses = h.request("CANCEL", call_id=sample.call_id, branch=branch)
    assert sorted((r.status, r.cseq[1]) for r in responses) == [(200, "CANCEL"), (487, "INVITE")]
    listener.held[0].callback(None)  # the late answer must not go out
    assert h.wire.pop() == []
    assert h.ports.in_use == 0 and h.server.calls == {}


def test_cancel_for_unknown_invite_gets_481():
    assert Harness().request("CANCEL", branch="z9hG4bKunknown")[-1].status == 481


def test_a_failing_listener_refuses_the_call_with_503():
    listener = HeldCallListener()
    h = Harness(listener=listener)
    h.invite()
    listener.held[0].errback(RuntimeError("database unavailable"))
    assert [r.status for r in h.wire.pop()] == [503]
    assert h.ports.in_use == 0


def test_session_timer_answer_and_expiry_bye():
    h = Harness()
    sample, ok = h.established(headers=[("Supported", "timer"), ("Session-Expires", "120;refresher=uac")])
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    h.clock.advance(120 - 32 - 1)
    assert h.wire.pop() == []
    h.clock.advance(2)
    (bye,) = h.wire.pop()
    assert bye.method == "BYE" and bye.to.tag == "src1" or bye.headers.get("To").endswith("tag=src1")


def test_refresh_keeps_the_call():
    h = Harness()
    sample, ok = h.established(headers=[("Session-Expires", "120")])
    h.clock.advance(60)
    r = h.request("UPDATE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2,
                  headers=[("Session-Expires", "120;refresher=uac")])[-1]
    assert r.status == 200
    h.clock.advance(80)
    assert h.wire.pop() == []  # expiry was pushed back by the refresh


def test_too_small_session_expires_gets_422():
    r = Harness().invite(headers=[("Session-Expires", "30")])[1][-1]
    assert r.status == 422 and r.headers.get("Min-SE") == "90"


def test_max_call_length_bye_and_its_answer_end_the_call():
    h = Harness(sip={"max_call_duration": "1h"})
    sample, ok = h.established()
    h.clock.advance(3600)
    (bye,) = h.wire.pop()
    assert bye.method == "BYE" and bye.call_id == sample.call_id
    assert bye.headers.get("Contact").endswith("+sip.srs")
    reply = (
        "SIP/2.0 200 OK\r\n"
        f"Via: {bye.headers.get_all('Via')[0]}\r\n"
        f"From: {bye.headers.get('From')}\r\nTo: {bye.headers.get('To')}\r\n"
        f"Call-ID: {bye.call_id}\r\nCSeq: {bye.headers.get('CSeq')}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.endpoint.datagram_received(reply, SRC)
    assert h.server.calls == {} and h.listener.ended == 1


def test_unanswered_bye_still_ends_the_call():
    h = Harness(sip={"max_call_duration": "10s"})
    h.established()
    h.clock.advance(10)
    for _ in range(100):
        h.clock.advance(1)
    assert h.server.calls == {} and h.listener.ended == 1


def test_drain_then_hang_up_the_rest():
    h = Harness()
    h.established(call_key="one")
    d = h.server.drain()
    assert not d.called
    h.server.hang_up_all("shutdown")
    assert [m.method for m in h.wire.pop()] == ["BYE"]
    h.clock.advance(40)  # BYE times out: call ends anyway
    assert d.called


def test_malformed_request_gets_400_and_garbage_is_dropped():
    h = Harness()
    bad = (b"OPTIONS sip:srs@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
           b"Max-Forwards: lots\r\n\r\n")
    h.endpoint.datagram_received(bad, SRC)
    (r,) = h.wire.pop()
    assert r.status == 400 and r.reason == "Bad Max-Forwards header"
    h.endpoint.datagram_received(b"\x00\xff garbage", SRC)
    assert h.wire.pop() == []
    assert h.endpoint.counters["malformed"] == 2


def test_responses_go_to_received_and_rport():
    h = Harness()
    h.request("OPTIONS")
    # SRC is 192.0.2.10:5060 and asked for rport: the reply goes back there.
    h.request("OPTIONS")
    h.wire.sent.clear()
    data = (b"OPTIONS sip:srs@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5099;branch=z9hG4bKnat;rport\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: nat\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n")
    h.endpoint.datagram_received(data, SRC)
    ((where, response),) = h.wire.sent
    assert where == ("UDP", "192.0.2.10", 5060)
    via = response.top_via
    assert via.received == "192.0.2.10" and via.rport == "5060"


def test_a_bad_header_found_late_gets_400_not_500():
    h = Harness()
    r = h.request("INVITE", body=sample_sdp(), content_type="application/sdp",
                  headers=[("Record-Route", "<not a uri>")])[-1]
    assert r.status == 400
    assert h.endpoint.counters["errors"] == 0


def test_session_timer_is_shortened_to_ours_but_not_below_min_se():
    h = Harness()
    _, ok = h.established(call_key="long", headers=[("Session-Expires", "7200;refresher=uas")])
    assert ok.headers.get("Session-Expires") == "1800;refresher=uas"
    h = Harness(sip={"session_expires": "100s"})
    _, ok = h.established(call_key="minse", headers=[("Session-Expires", "600"), ("Min-SE", "300")])
    assert ok.headers.get("Session-Expires") == "300;refresher=uac"


def test_uas_refresher_sends_update_at_half_time():
    h = Harness()
    h.established(headers=[("Session-Expires", "600;refresher=uas")])
    h.clock.advance(299)
    assert h.wire.pop() == []
    h.clock.advance(1)
    (update,) = h.wire.pop()
    assert update.method == "UPDATE" and update.headers.get("Session-Expires") == "600;refresher=uas"


def test_g729_is_not_offered_without_libbcg729():
    from siprecd.node import usable_codecs

    no_g729 = {"G729": "install libbcg729"}.get
    assert usable_codecs(("G729", "PCMU"), no_g729) == ("PCMU",)
    assert usable_codecs(("G729", "PCMU"), lambda name: None) == ("G729", "PCMU")
    h = Harness(media={"codecs": ["G729", "PCMA"], "port_min": 30000, "port_max": 30011})
    h.server.codecs = usable_codecs(h.config.media.codecs, no_g729)
    sdp = sample_sdp(("1",), codecs=("G729", "PCMA"))
    ok = h.request("INVITE", body=sdp, content_type="application/sdp")[-1]
    assert ok.status == 200
    assert [c.name for c in parse_sdp(ok.body).media[0].codecs] == ["PCMA", "TELEPHONE-EVENT"]


# -- tolerance where nothing is at stake ----------------------------------------


def test_ack_whose_cseq_says_invite_still_confirms_the_call():
    """Some SRCs write ``CSeq: n INVITE`` on the ACK: it is matched to its
    INVITE by number, so the 200 is not retransmitted to a timeout and the
    call is not ended as "no ACK"."""
    h = Harness()
    sample, responses = h.invite()
    ok = responses[-1]
    h.request("ACK", call_id=sample.call_id, to_tag=ok.to.tag, cseq_method="INVITE")
    h.clock.advance(64 * 0.5 + 1)
    assert h.listener.get(sample.guid) is not None
    assert h.endpoint.counters["tolerated"] == 1
    assert not [r for r in h.wire.sent if getattr(r[1], "status", 0) == 200]


def test_bye_whose_cseq_says_invite_ends_the_call():
    h = Harness()
    sample, ok = h.established()
    r = h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=2, cseq_method="INVITE")
    assert r[-1].status == 200 and r[-1].cseq == (2, "INVITE")
    assert h.listener.get(sample.guid) is None


def test_bye_without_to_tag_ends_the_one_dialog_it_names():
    h = Harness()
    sample, ok = h.established()
    r = h.request("BYE", call_id=sample.call_id, cseq=2)[-1]
    assert r.status == 200 and r.to.tag == ok.to.tag
    assert h.listener.get(sample.guid) is None


def test_bye_without_to_tag_never_guesses_between_two_dialogs():
    h = Harness()
    sample, responses = h.invite()
    ok1 = responses[-1]
    h.request("ACK", call_id=sample.call_id, to_tag=ok1.to.tag)
    # A second dialog with the same Call-ID and From tag (a forked INVITE seen twice).
    again = h.request("INVITE", call_id=sample.call_id, body=sample.body, cseq=5,
                      content_type=sample.content_type, headers=[("Require", "siprec")])[-1]
    assert again.status == 200 and again.to.tag != ok1.to.tag
    r = h.request("BYE", call_id=sample.call_id, cseq=6)[-1]
    assert r.status == 481
    assert len(h.server.calls) == 2


def test_bye_without_to_tag_and_another_from_tag_is_481():
    h = Harness()
    sample, ok = h.established()
    assert h.request("BYE", call_id=sample.call_id, cseq=2, from_tag="other")[-1].status == 481
    assert h.listener.get(sample.guid) is not None


def test_bye_numbered_below_the_dialog_is_still_500_and_equal_is_taken():
    h = Harness()
    sample, ok = h.established()
    h.request("INVITE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=5)
    assert h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=4)[-1].status == 500
    assert h.listener.get(sample.guid) is not None
    assert h.request("BYE", call_id=sample.call_id, to_tag=ok.to.tag, cseq=5)[-1].status == 200
    assert h.listener.get(sample.guid) is None


def test_unclosed_contact_and_junk_after_the_sdp_are_recorded():
    h = Harness()
    sample = sample_invite("rfc7865")
    junk = b"--stray-boundary\r\nContent-Type: text/plain\r\n\r\nnot sdp\r\n"
    body = sample.sdp + junk
    r = h.request("INVITE", call_id=sample.call_id, body=body, content_type="application/sdp",
                  headers=[("Require", "siprec")])[-1]
    assert r.status == 200
    assert len(parse_sdp(r.body).media) == 2


# -- delayed offer -------------------------------------------------------------------


def _answer_sdp(ok_body, codecs=("18", "8"), host="192.0.2.10"):
    """The SRC's answer to our offer: one codec per m-line, sendonly."""
    offer = parse_sdp(ok_body)
    lines = ["v=0", f"o=SRC 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    for i, (media, pt) in enumerate(zip(offer.media, codecs)):
        port = 0 if pt is None else 40000 + 2 * i
        lines.append(f"m=audio {port} RTP/AVP {pt or 0}")
        lines += [f"a=label:{media.label}", "a=sendonly"]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_delayed_offer_is_answered_with_our_offer_and_set_up_from_the_ack():
    """Cisco CUCM built-in-bridge recording sends its INVITE without SDP."""
    h = Harness()
    ok = h.request("INVITE", call_id="bib@192.0.2.10", headers=[("Require", "siprec")])[-1]
    assert ok.status == 200 and ok.headers.get("Content-Type") == "application/sdp"
    offer = parse_sdp(ok.body)
    assert len(offer.media) == 2                      # sip.delayed_offer_streams
    for m in offer.media:
        assert m.direction == "recvonly" and m.port != 0
        assert [c.name for c in m.codecs] == ["PCMU", "PCMA", "G729", "G722", "OPUS",
                                              "TELEPHONE-EVENT"]
    session = h.listener.by_call_id["bib@192.0.2.10"]
    assert session.delayed_offer and session.awaiting_answer
    h.request("ACK", call_id="bib@192.0.2.10", to_tag=ok.to.tag, body=_answer_sdp(ok.body),
              content_type="application/sdp")
    assert not session.awaiting_answer
    assert [(s.label, s.codec.name, s.remote_port) for s in session.streams] == [
        ("1", "G729", 40000), ("2", "PCMA", 40002)]
    assert [s.local_port for s in session.streams] == [m.port for m in offer.media]
    # It is a call like any other from now on.
    assert h.request("BYE", call_id="bib@192.0.2.10", to_tag=ok.to.tag, cseq=2)[-1].status == 200


def test_delayed_offer_stream_refused_in_the_answer_is_closed():
    h = Harness(sip={"delayed_offer_streams": 3})
    ok = h.request("INVITE", call_id="d3@192.0.2.10")[-1]
    assert len(parse_sdp(ok.body).media) == 3
    h.request("ACK", call_id="d3@192.0.2.10", to_tag=ok.to.tag,
              body=_answer_sdp(ok.body, codecs=("0", None, "0")), content_type="application/sdp")
    session = h.listener.by_call_id["d3@192.0.2.10"]
    assert [s.label for s in session.streams] == ["1", "3"]


def test_an_ack_without_the_answer_leaves_the_offered_streams():
    h = Harness()
    ok = h.request("INVITE", call_id="noans@192.0.2.10")[-1]
    h.request("ACK", call_id="noans@192.0.2.10", to_tag=ok.to.tag)
    session = h.listener.by_call_id["noans@192.0.2.10"]
    assert len(session.streams) == 2 and not session.awaiting_answer
