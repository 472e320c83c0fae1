"""Seats: which of the first two parties' places each recorded stream holds
(siprecd.siprec.session), across re-offers, without sockets."""

from twisted.internet.task import Clock

from siprecd.media.ports import RangePortAllocator
from siprecd.simulator.samples import sample_metadata, sample_sdp
from siprecd.siprec.guid import CallIdentifier
from siprecd.siprec.metadata import merge_metadata, parse_metadata
from siprecd.siprec.sdp import parse_sdp
from siprecd.siprec.session import RecordingSession


def session(metadata=None):
    ident = CallIdentifier("call-id", "c@h", "c@h")
    return RecordingSession("c@h", ident, [ident], metadata, 0.0, "UDP", ("192.0.2.10", 5060))


def offer(s, sdp, ports):
    return s.apply_offer(parse_sdp(sdp), codecs=("PCMU", "PCMA"), ports=ports,
                         address="192.0.2.1")


def seats(s):
    return [(x.label, x.seat) for x in s.streams]


def ports():
    return RangePortAllocator(Clock(), 30000, 30099, 0.0)


def test_first_two_streams_are_seated_and_a_third_is_not():
    s = session()
    offer(s, sample_sdp(("1", "2", "3")), ports())
    assert seats(s) == [("1", 0), ("2", 1), ("3", None)]


def test_a_new_m_line_replacing_a_closed_one_takes_its_seat():
    s, p = session(), ports()
    offer(s, sample_sdp(("1", "2")), p)
    transfer = sample_sdp(("1", "2", "3")).replace(b"m=audio 16384 ", b"m=audio 0 ", 1)
    offer(s, transfer, p)
    assert seats(s) == [("2", 1), ("3", 0)]
    # A later new stream, with no seat free, has none.
    offer(s, sample_sdp(("1", "2", "3", "4")).replace(b"m=audio 16384 ", b"m=audio 0 ", 1), p)
    assert seats(s) == [("2", 1), ("3", 0), ("4", None)]


def test_a_stream_keeps_its_seat_across_re_offers_and_holds():
    s, p = session(), ports()
    offer(s, sample_sdp(("1", "2")), p)
    offer(s, sample_sdp(("1", "2")).replace(b"a=sendonly", b"a=inactive"), p)
    assert seats(s) == [("1", 0), ("2", 1)]


def test_a_newcomer_replacing_a_disassociated_sender_takes_its_seat():
    first = parse_metadata(sample_metadata("rfc7865", ("1", "2"), call_key="k"))
    s, p = session(first), ports()
    offer(s, sample_sdp(("1", "2")), p)
    # The caller left (disassociate-time); a new party sends on a new label 3.
    caller = first.participants[0]
    update = parse_metadata(f"""<recording xmlns="urn:ietf:params:xml:ns:recording:1">
      <datamode>partial</datamode>
      <participantsessionassoc participant_id="{caller.id}" session_id="s">
        <disassociate-time>2024-01-01T00:05:00Z</disassociate-time>
      </participantsessionassoc>
      <participant participant_id="newcomer"><nameID aor="sip:new@h"/></participant>
      <stream stream_id="st3" session_id="s"><label>3</label></stream>
      <participantstreamassoc participant_id="newcomer"><send>st3</send></participantstreamassoc>
    </recording>""".encode())
    s.metadata = merge_metadata(s.metadata, update)
    offer(s, sample_sdp(("1", "2", "3")), p)
    assert seats(s) == [("1", 0), ("2", 1), ("3", 0)]
