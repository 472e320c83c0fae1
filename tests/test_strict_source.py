"""Where a stream's packets may come from, on real loopback sockets:
streams latch to the source of their first valid packet by default
(media.latch), with the SDP's host as a hint (media.latch_wait) or a rule
(media.check_source; media.strict_source is latch and check_source);
everything else is dropped and counted (refused, foreign_packets), never
fed. A re-INVITE naming a new address opens the latch again;
media.relatch_after (off by default) lets a silent source be replaced."""

import base64

import numpy as np
import pytest_twisted

from siprecd import config
from siprecd.media import srtp
from siprecd.media.codecs import ulaw_decode, ulaw_encode
from siprecd.media.rtp import build_rtp
from siprecd.simulator.rtp import srtp_sender
from test_media_transport import Waiting, _packets, _sender, _transport

RTCP = b"\x80\xc9\x00\x01" + bytes(4)   # an empty receiver report


def until(reactor, test, timeout=10):
    """Fires once *test()* holds (checked every 10 ms); fails after *timeout*."""
    from twisted.internet import defer, task

    started = reactor.seconds()
    d = defer.Deferred()

    def check():
        if test():
            loop.stop()
        elif reactor.seconds() - started > timeout:
            loop.stop()
            d.errback(AssertionError(f"condition not met in {timeout} s"))

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(0.01).addCallback(lambda _: d.called or d.callback(None))
    return d


def test_the_key_is_documented_and_off_by_default():
    assert config.from_dict({}).media.strict_source is False
    assert config.from_dict({"media": {"strict_source": True}}).media.strict_source is True


@pytest_twisted.inlineCallbacks
def test_the_first_source_is_latched_address_and_port():
    from twisted.internet import reactor

    t = _transport(reactor, strict_source=True)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")  # no host in the SDP
    encoded = ulaw_encode(np.arange(-8000, 8000, 10, dtype=np.int16))
    packets = _packets(encoded, 0)
    first, same_host, other_host = _sender(), _sender(), _sender("127.0.0.2")
    address = ("127.0.0.1", stream.port)
    try:
        other_host.sendto(b"not RTP", address)  # garbage does not latch
        yield until(reactor, lambda: stream.receiver.counters["malformed"] == 1)
        assert stream._source.latched is None
        first.sendto(packets[0], address)
        yield consumer.wait_samples(160)
        assert stream._source.latched == first.getsockname()
        for p in packets[1:6]:
            same_host.sendto(p, address)       # another port: foreign
            other_host.sendto(p, address)      # another host: foreign
        other_host.sendto(RTCP, ("127.0.0.1", stream.port + 1))  # RTCP from another host
        same_host.sendto(RTCP, ("127.0.0.1", stream.port + 1))   # RTCP from the latched host
        for p in packets[1:]:
            first.sendto(p, address)
        yield consumer.wait_samples(len(encoded))
        yield until(reactor, lambda: stream.stats()["foreign_packets"] == 11)
        yield until(reactor, lambda: stream.receiver.counters["rtcp_packets"] == 1)
        assert np.array_equal(consumer.audio, ulaw_decode(encoded))
        s = stream.stats()
        assert (s["packets"], s["duplicates"], s["other_ssrc"]) == (len(packets), 0, 0)
    finally:
        for s in (first, same_host, other_host):
            s.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_strict_takes_only_the_sdp_host_latched_and_a_move_unlatches():
    from twisted.internet import reactor

    t = _transport(reactor, strict_source=True)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", remote_host="127.0.0.2")
    packets = _packets(ulaw_encode(np.zeros(160 * 10, dtype=np.int16)), 0)
    friend, friend_too, stranger = _sender("127.0.0.2"), _sender("127.0.0.2"), _sender()
    address = ("127.0.0.1", stream.port)
    try:
        for p in packets[:3]:
            stranger.sendto(p, address)         # another host: never, however long
        friend.sendto(packets[0], address)
        yield consumer.wait_samples(160)
        assert stream._source.latched == friend.getsockname()
        friend_too.sendto(packets[1], address)  # the SDP's host, another port: refused
        yield until(reactor, lambda: stream.stats()["foreign_packets"] == 4)
        # Hold by c=0.0.0.0 and resume: no move, the latch stays (a hold
        # is no opening for anyone else).
        stream.set_remote("0.0.0.0", 4000)
        stream.set_remote("127.0.0.2", 4000)
        stranger.sendto(packets[2], address)
        yield until(reactor, lambda: stream.stats()["foreign_packets"] == 5)
        assert stream._source.latched == friend.getsockname()
        # A re-INVITE naming another address moves the source: the next
        # packet from the new address latches.
        stream.set_remote("127.0.0.1", 4000)
        assert stream._source.latched is None
        stranger.sendto(packets[3], address)
        yield consumer.wait_samples(320)
        assert stream._source.latched == stranger.getsockname()
        # The same remote again (a refresh) keeps the latch; a new port drops it.
        stream.set_remote("127.0.0.1", 4000)
        assert stream._source.latched == stranger.getsockname()
        stream.set_remote("127.0.0.1", 5000)
        assert stream._source.latched is None
    finally:
        for s in (friend, friend_too, stranger):
            s.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_with_srtp_only_an_authenticated_packet_latches():
    from twisted.internet import reactor

    t = _transport(reactor, strict_source=True)
    consumer = Waiting(reactor)
    key = bytes(range(30))
    choice = srtp.negotiate_crypto(
        [f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}"])
    stream = t.open_stream("s", consumer, "PCMU", srtp=choice)
    packets = _packets(ulaw_encode(np.zeros(160 * 5, dtype=np.int16)), 0)
    protect = srtp_sender("AES_CM_128_HMAC_SHA1_80", key)
    attacker, src = _sender(), _sender()
    address = ("127.0.0.1", stream.port)
    try:
        attacker.sendto(build_rtp(0, 1, 2, 3, b"\xff" * 170), address)  # garbage first
        yield until(reactor, lambda: stream.stats()["srtp_auth_failures"] == 1)
        assert stream._source.latched is None
        for p in packets[:2]:
            src.sendto(protect.protect(p), address)
        yield consumer.wait_samples(320)
        assert stream._source.latched == src.getsockname()
        attacker.sendto(protect.protect(packets[2]), address)  # even a valid packet
        yield until(reactor, lambda: stream.stats()["foreign_packets"] == 1)
        assert stream.stats()["srtp_packets"] == 2
    finally:
        attacker.close()
        src.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_with_latch_off_anyone_is_taken():
    from twisted.internet import reactor

    t = _transport(reactor, latch=False)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")
    packets = _packets(ulaw_encode(np.zeros(160 * 4, dtype=np.int16)), 0)
    a, b = _sender(), _sender("127.0.0.2")
    try:
        for i, p in enumerate(packets):
            (a if i % 2 else b).sendto(p, ("127.0.0.1", stream.port))
        yield consumer.wait_samples(160 * 4)
        assert stream.stats()["foreign_packets"] == 0
    finally:
        a.close()
        b.close()
        yield t.stopService()


def test_latching_is_the_default_and_strict_source_keeps_its_name():
    media = config.from_dict({}).media
    assert (media.latch, media.latch_wait, media.relatch_after, media.check_source,
            media.strict_source) == (True, 1.0, None, False, False)


@pytest_twisted.inlineCallbacks
def test_by_default_the_first_source_is_latched_and_injection_refused():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")   # no host in the SDP
    encoded = ulaw_encode(np.arange(-8000, 8000, 10, dtype=np.int16))
    packets = _packets(encoded, 0)
    injected = _packets(ulaw_encode(np.full(160 * 5, 9000, dtype=np.int16)), 0, seq=100,
                        ssrc=0xBAD)
    sbc, attacker = _sender(), _sender("127.0.0.2")
    address = ("127.0.0.1", stream.port)
    try:
        sbc.sendto(packets[0], address)
        yield consumer.wait_samples(160)
        for p in injected:
            attacker.sendto(p, address)
        for p in packets[1:]:
            sbc.sendto(p, address)
        yield consumer.wait_samples(len(encoded))
        yield until(reactor, lambda: stream.stats()["refused"] == len(injected))
        assert np.array_equal(consumer.audio, ulaw_decode(encoded))
        assert stream.stats()["other_ssrc"] == 0
    finally:
        sbc.close()
        attacker.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_the_sdp_host_is_a_hint_another_host_latches_after_the_wait():
    from twisted.internet import reactor, task

    t = _transport(reactor, latch_wait=0.3)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", remote_host="127.0.0.2")  # a NAT'ed SBC
    packets = _packets(ulaw_encode(np.zeros(160 * 20, dtype=np.int16)), 0)
    behind_nat, other = _sender("127.0.0.1"), _sender("127.0.0.3")
    address = ("127.0.0.1", stream.port)
    try:
        behind_nat.sendto(packets[0], address)  # from elsewhere than the SDP: waits
        other.sendto(packets[1], address)       # not the first candidate: refused
        yield until(reactor, lambda: stream.stats()["refused"] == 2)
        assert stream._source.latched is None
        yield task.deferLater(reactor, 0.35, lambda: None)
        for p in packets[2:6]:
            behind_nat.sendto(p, address)
        yield consumer.wait_samples(160)
        assert stream._source.latched == behind_nat.getsockname()
        other.sendto(packets[6], address)
        yield until(reactor, lambda: stream.stats()["refused"] == 3)
    finally:
        behind_nat.close()
        other.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_the_sdp_host_wins_the_wait():
    from twisted.internet import reactor

    t = _transport(reactor, latch_wait=5.0)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", remote_host="127.0.0.2")
    packets = _packets(ulaw_encode(np.zeros(160 * 4, dtype=np.int16)), 0)
    attacker, sbc = _sender("127.0.0.1"), _sender("127.0.0.2")
    address = ("127.0.0.1", stream.port)
    try:
        attacker.sendto(packets[0], address)    # first, but not from the SDP's host
        sbc.sendto(packets[1], address)
        yield consumer.wait_samples(160)
        assert stream._source.latched == sbc.getsockname()
        attacker.sendto(packets[2], address)
        yield until(reactor, lambda: stream.stats()["refused"] == 2)
    finally:
        attacker.close()
        sbc.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_relatch_after_a_silence_only_when_configured():
    from twisted.internet import reactor, task

    t = _transport(reactor, relatch_after=1.0)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")
    packets = _packets(ulaw_encode(np.zeros(160 * 20, dtype=np.int16)), 0)
    old, new = _sender(), _sender("127.0.0.2")
    address = ("127.0.0.1", stream.port)
    try:
        old.sendto(packets[0], address)
        yield consumer.wait_samples(160)
        new.sendto(packets[1], address)          # the old source is not silent long: refused
        yield until(reactor, lambda: stream.stats()["refused"] == 1)
        yield task.deferLater(reactor, 1.1, lambda: None)
        new.sendto(packets[2], address)
        yield until(reactor, lambda: stream._source.latched == new.getsockname())
        old.sendto(packets[3], address)
        yield until(reactor, lambda: stream.stats()["refused"] == 2)
    finally:
        old.close()
        new.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_a_hold_keeps_the_latch():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", remote_host="127.0.0.1")
    packets = _packets(ulaw_encode(np.zeros(160 * 6, dtype=np.int16)), 0)
    sbc, attacker = _sender(), _sender("127.0.0.2")
    address = ("127.0.0.1", stream.port)
    try:
        sbc.sendto(packets[0], address)
        yield consumer.wait_samples(160)
        stream.set_remote("0.0.0.0", None)        # hold: the SBC falls silent
        for p in packets[1:4]:
            attacker.sendto(p, address)
        yield until(reactor, lambda: stream.stats()["refused"] == 3)
        stream.set_remote("127.0.0.1", None)      # resume
        assert stream._source.latched == sbc.getsockname()
    finally:
        sbc.close()
        attacker.close()
        yield t.stopService()
