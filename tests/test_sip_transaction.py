"""Transactions on task.Clock: retransmissions, absorption and timers."""

from twisted.internet.task import Clock

from siprecd.sip.message import make_response, parse_message
from siprecd.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Timers,
    server_key,
)

T = Timers()


def request(method="INVITE", branch="z9hG4bK-1", cseq=1, to_tag=None):
    to = "<sip:srs@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    raw = (
        f"{method} sip:srs@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}\r\n"
        "From: <sip:src@127.0.0.1>;tag=abc\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    return parse_message(raw)


def statuses(sent):
    return [getattr(m, "status", getattr(m, "method", None)) for m in sent]


def test_invite_2xx_is_retransmitted_until_ack():
    clock, sent = Clock(), []
    invite = request()
    txn = ServerInviteTransaction(invite, sent.append, clock, reliable=False)
    txn.respond(make_response(invite, 100))
    txn.respond(make_response(invite, 200, to_tag="t"))
    assert statuses(sent) == [100, 200]
    clock.advance(T.t1)         # 0.5 s
    clock.advance(2 * T.t1)     # 1.5 s
    clock.advance(4 * T.t1)     # 3.5 s
    assert statuses(sent) == [100, 200, 200, 200, 200]
    clock.advance(T.t2)         # interval is capped at T2
    assert len(sent) == 6
    txn.receive_request(request("ACK", branch="z9hG4bK-other"))
    clock.advance(30)
    assert len(sent) == 6
    assert txn.state == "acked"
    clock.advance(T.timeout)
    assert txn.terminated


def test_invite_2xx_without_ack_times_out_and_tells_the_user():
    clock, sent, timeouts = Clock(), [], []
    invite = request()
    txn = ServerInviteTransaction(invite, sent.append, clock, reliable=True,
                                  on_ack_timeout=lambda: timeouts.append(1))
    txn.respond(make_response(invite, 200, to_tag="t"))
    clock.advance(T.timeout - 0.01)
    assert timeouts == [] and not txn.terminated
    clock.advance(0.02)
    assert timeouts == [1] and txn.terminated


def test_retransmitted_invite_gets_the_last_provisional_again():
    clock, sent = Clock(), []
    invite = request()
    txn = ServerInviteTransaction(invite, sent.append, clock, reliable=False)
    txn.respond(make_response(invite, 100))
    txn.receive_request(invite)
    txn.receive_request(invite)
    assert statuses(sent) == [100, 100, 100]


def test_invite_error_response_timer_g_then_ack_absorbed():
    clock, sent, terminated = Clock(), [], []
    invite = request()
    txn = ServerInviteTransaction(invite, sent.append, clock, reliable=False,
                                  on_terminated=terminated.append)
    txn.respond(make_response(invite, 488))
    clock.advance(T.t1)
    clock.advance(2 * T.t1)
    assert statuses(sent) == [488, 488, 488]
    txn.receive_request(invite)  # retransmitted INVITE in Completed: resend
    assert statuses(sent)[-1] == 488 and len(sent) == 4
    txn.receive_request(request("ACK"))
    assert txn.state == "confirmed"
    clock.advance(100)
    assert len(sent) == 4  # no more retransmissions after the ACK
    assert terminated == [txn]


def test_invite_error_response_without_ack_timer_h():
    clock, sent, timeouts = Clock(), [], []
    invite = request()
    txn = ServerInviteTransaction(invite, sent.append, clock, reliable=True,
                                  on_ack_timeout=lambda: timeouts.append(1))
    txn.respond(make_response(invite, 486))
    clock.advance(T.timeout)
    assert sent and statuses(sent) == [486]  # reliable: no Timer G
    assert timeouts == [1] and txn.terminated


def test_non_invite_timer_j_absorbs_retransmissions():
    clock, sent = Clock(), []
    bye = request("BYE", cseq=2, to_tag="t")
    txn = ServerNonInviteTransaction(bye, sent.append, clock, reliable=False)
    txn.receive_request(bye)   # in Trying: absorbed silently
    assert sent == []
    txn.respond(make_response(bye, 200))
    txn.receive_request(bye)   # in Completed: the 200 again
    assert statuses(sent) == [200, 200]
    clock.advance(T.timeout - 0.1)
    assert not txn.terminated
    clock.advance(0.2)
    assert txn.terminated


def test_non_invite_reliable_terminates_at_once():
    clock, sent = Clock(), []
    options = request("OPTIONS")
    txn = ServerNonInviteTransaction(options, sent.append, clock, reliable=True)
    txn.respond(make_response(options, 200))
    clock.advance(0)
    assert txn.terminated


def test_client_non_invite_retransmits_with_timer_e_and_times_out_with_f():
    clock, sent, responses, timeouts = Clock(), [], [], []
    bye = request("BYE", branch="z9hG4bK-ours", to_tag="t")
    txn = ClientNonInviteTransaction(bye, sent.append, clock, reliable=False,
                                     on_response=responses.append,
                                     on_timeout=lambda: timeouts.append(1))
    txn.start()
    times = []
    for _ in range(40):
        clock.advance(0.25)
        times.append(len(sent))
    # E fires at 0.5, 1.5, 3.5, 7.5 then every T2 (4 s).
    assert times[1] == 2 and times[5] == 3 and times[13] == 4 and times[29] == 5
    clock.advance(T.timeout)
    assert timeouts == [1] and txn.terminated and responses == []


def test_client_non_invite_final_response_stops_retransmission():
    clock, sent, responses = Clock(), [], []
    bye = request("BYE", branch="z9hG4bK-ours", to_tag="t")
    txn = ClientNonInviteTransaction(bye, sent.append, clock, reliable=False,
                                     on_response=responses.append, on_timeout=lambda: None)
    txn.start()
    txn.receive_response(make_response(bye, 200))
    txn.receive_response(make_response(bye, 200))  # retransmission: not passed up
    clock.advance(10)
    assert len(sent) == 1 and [r.status for r in responses] == [200]
    assert txn.terminated


def test_client_invite_acks_error_responses_on_the_same_branch():
    clock, sent, responses = Clock(), [], []
    invite = request("INVITE", branch="z9hG4bK-ours", to_tag="t")
    acks = []

    def make_ack(response):
        ack = request("ACK", branch="z9hG4bK-ours", to_tag="t")
        acks.append(ack)
        return ack

    txn = ClientInviteTransaction(invite, sent.append, clock, reliable=False,
                                  on_response=responses.append, on_timeout=lambda: None,
                                  make_ack=make_ack)
    txn.start()
    clock.advance(T.t1)
    assert statuses(sent) == ["INVITE", "INVITE"]
    txn.receive_response(make_response(invite, 491))
    txn.receive_response(make_response(invite, 491))
    assert statuses(sent) == ["INVITE", "INVITE", "ACK", "ACK"]
    assert [r.status for r in responses] == [491]
    clock.advance(32)
    assert txn.terminated


def test_ack_matches_the_invite_server_transaction_key():
    assert server_key(request("ACK")) == server_key(request("INVITE"))
    assert server_key(request("CANCEL")) != server_key(request("INVITE"))
    assert server_key(request("CANCEL"))[:-1] == server_key(request("INVITE"))[:-1]
