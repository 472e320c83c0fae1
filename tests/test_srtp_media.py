"""SRTP streams on real loopback UDP sockets: decrypted before the RTP
receiver, failures and replays counted in the stream's stats and never
fed, SRTCP on both ports, and re-keying."""

import base64

import numpy as np
import pytest_twisted

from siprecd.media import srtp
from siprecd.media.codecs import ulaw_decode, ulaw_encode
from siprecd.simulator.rtp import srtp_sender
from test_media_transport import Waiting, _packets, _sender, _transport

SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
KEY, OTHER = bytes(range(30)), bytes(range(50, 80))


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


def choice_for(key, suite=SHA1_80):
    return srtp.negotiate_crypto([f"1 {suite} inline:{base64.b64encode(key).decode()}"])


def report(ssrc=0xCAFE):
    import struct

    return struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, 1, 2, 42, 6720)


@pytest_twisted.inlineCallbacks
def test_srtp_is_decrypted_to_the_same_audio_and_counted():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", srtp=choice_for(KEY))
    encoded = ulaw_encode(np.arange(-16000, 16000, 10, dtype=np.int16))
    packets = _packets(encoded, 0)
    protect = srtp_sender(SHA1_80, KEY)
    sender = _sender()
    try:
        for p in packets:
            sender.sendto(protect.protect(p), ("127.0.0.1", stream.port))
        sender.sendto(protect.protect_rtcp(report()), ("127.0.0.1", stream.port + 1))
        sender.sendto(protect.protect_rtcp(report()), ("127.0.0.1", stream.port))  # rtcp-mux
        yield consumer.wait_samples(len(encoded))
        yield until(reactor, lambda: stream.receiver.counters["rtcp_packets"] == 2)
        assert np.array_equal(consumer.audio, ulaw_decode(encoded))
        s = stream.stats()
        assert s["srtp"] is True and s["srtp_suite"] == SHA1_80
        assert (s["srtp_packets"], s["srtcp_packets"]) == (len(packets), 2)
        assert (s["srtp_auth_failures"], s["srtp_replays"], s["malformed"]) == (0, 0, 0)
        assert s["packets"] == len(packets) and s["rtcp"]["sender_packets"] == 42
    finally:
        sender.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_wrong_key_plain_rtp_and_replays_are_dropped_and_counted():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", srtp=choice_for(KEY))
    encoded = ulaw_encode(np.zeros(160 * 20, dtype=np.int16) + 1000)
    packets = _packets(encoded, 0)
    wrong, right = srtp_sender(SHA1_80, OTHER), srtp_sender(SHA1_80, KEY)
    sender = _sender()
    address = ("127.0.0.1", stream.port)
    try:
        for p in packets[:10]:
            sender.sendto(wrong.protect(p), address)
        for p in packets[:5]:
            sender.sendto(p, address)  # plain RTP to an SRTP stream
        sender.sendto(wrong.protect_rtcp(report()), ("127.0.0.1", stream.port + 1))
        yield until(reactor, lambda: stream.stats()["srtcp_auth_failures"] == 1)
        yield until(reactor, lambda: stream.stats()["srtp_auth_failures"] == 15)
        assert consumer.samples == 0 and stream.stats()["packets"] == 0
        protected = [right.protect(p) for p in packets]
        for data in protected + protected[:3]:
            sender.sendto(data, address)
        yield consumer.wait_samples(len(encoded))
        yield until(reactor, lambda: stream.stats()["srtp_replays"] == 3)
        s = stream.stats()
        assert (s["srtp_packets"], s["duplicates"], s["packets"]) == (len(packets), 0, len(packets))
    finally:
        sender.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_set_srtp_keeps_the_context_for_the_same_key_and_rekeys_for_a_new_one():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    first = choice_for(KEY)
    stream = t.open_stream("s", consumer, "PCMU", srtp=first)
    encoded = ulaw_encode(np.zeros(160 * 30, dtype=np.int16) + 500)
    packets = _packets(encoded, 0)
    old, new = srtp_sender(SHA1_80, KEY), srtp_sender(SHA1_80, OTHER)
    sender = _sender()
    address = ("127.0.0.1", stream.port)
    try:
        for p in packets[:10]:
            sender.sendto(old.protect(p), address)
        yield consumer.wait_samples(160 * 10)
        context = stream.srtp
        stream.set_srtp(first)
        assert stream.srtp is context and stream.stats()["srtp_rekeys"] == 0
        sender.sendto(old.protect(packets[9]), address)  # still a replay: same context
        yield until(reactor, lambda: stream.stats()["srtp_replays"] == 1)
        stream.set_srtp(choice_for(OTHER))
        for p in packets[10:20]:
            sender.sendto(old.protect(p), address)
        yield until(reactor, lambda: stream.stats()["srtp_auth_failures"] == 10)
        for p in packets[20:]:
            sender.sendto(new.protect(p), address)
        yield until(reactor, lambda: stream.stats()["srtp_packets"] == 20)
        s = stream.stats()
        assert s["srtp_rekeys"] == 1 and s["srtp_replays"] == 1
        # Back to plain RTP (a re-INVITE with RTP/AVP): counters stay in the stats.
        stream.set_srtp(None)
        sender.sendto(packets[0][:2] + b"\x00\x00" + packets[0][4:], address)
        s = stream.stats()
        assert s["srtp"] is False and s["srtp_packets"] == 20
    finally:
        sender.close()
        yield t.stopService()
