"""RTP reception on real loopback UDP sockets."""

import random
import socket
import struct

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import implementer

from siprecd.config import Media
from siprecd.interfaces import IStreamConsumer
from siprecd.media.codecs import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from siprecd.media.ports import RangePortAllocator
from siprecd.media.rtp import build_rtp
from siprecd.media.transport import MediaTransport, set_receive_buffer

TIMEOUT = 10


@implementer(IStreamConsumer)
class Waiting:
    """Collects PCM and events; fires Deferreds when enough has come."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.chunks = []
        self.samples = 0
        self.events = []
        self._waiters = []

    def pcm(self, stream, position, samples, rate=8000):
        assert position == self.samples
        self.chunks.append(np.array(samples))
        self.samples += len(samples)
        self._check()

    def event(self, stream, kind, position, detail):
        self.events.append((kind, position, detail))
        self._check()

    def _check(self):
        for test, d in list(self._waiters):
            if test():
                self._waiters.remove((test, d))
                d.callback(None)

    def wait(self, test):
        if test():
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((test, d))
        return d.addTimeout(TIMEOUT, self.reactor)

    def wait_samples(self, n):
        return self.wait(lambda: self.samples >= n)

    def wait_event(self, kind):
        return self.wait(lambda: any(e[0] == kind for e in self.events))

    @property
    def audio(self):
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def until(reactor, test, timeout=TIMEOUT):
    """A Deferred that fires once *test()* holds, checked on every 10 ms
    timer tick (for state no consumer call reports), or fails after *timeout*."""
    from twisted.internet import task

    d = defer.Deferred()

    def check():
        if test():
            loop.stop()
    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(0.01).chainDeferred(d)
    d.addTimeout(timeout, reactor, onTimeoutCancel=lambda *a: loop.running and loop.stop())
    return d


def _allocator(reactor):
    base = random.randrange(30000, 39000, 2)
    return RangePortAllocator(reactor, base, base + 200, quarantine=0.5)


def _transport(reactor, **media):
    media.setdefault("host", "127.0.0.1")
    t = MediaTransport(reactor, Media(**media), allocator=_allocator(reactor), tick=0.02)
    t.startService()
    return t


def _sender(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def _packets(encoded, pt, seq=65500, ts=4000000000, ssrc=0xCAFE):
    return [build_rtp(pt, seq + i, ts + 160 * i, ssrc, encoded[160 * i:160 * (i + 1)])
            for i in range(len(encoded) // 160)]


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
@pytest_twisted.inlineCallbacks
def test_g711_over_udp_is_sample_exact(codec):
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("customer", consumer, codec, dtmf_payload_type=101)
    rng = np.random.default_rng(5)
    pcm = rng.integers(-20000, 20000, 160 * 150).astype(np.int16)
    encode, decode, pt = ((ulaw_encode, ulaw_decode, 0) if codec == "PCMU"
                          else (alaw_encode, alaw_decode, 8))
    encoded = encode(pcm)
    sender = _sender()
    try:
        for data in _packets(encoded, pt):
            sender.sendto(data, ("127.0.0.1", stream.port))
        yield consumer.wait_samples(len(pcm))
        assert np.array_equal(consumer.audio, decode(encoded))
        s = stream.stats()
        assert (s["packets"], s["lost"], s["duplicates"], s["malformed"]) == (150, 0, 0, 0)
        assert s["port"] == stream.port and stream.port % 2 == 0
    finally:
        sender.close()
        yield t.stopService()
    assert consumer.events[-1] == ("end", len(pcm), {"reason": "shutdown"})


@pytest_twisted.inlineCallbacks
def test_sockets_get_the_configured_receive_buffer_and_rtcp_is_read():
    from twisted.internet import reactor

    t = _transport(reactor, receive_buffer=2 * 1024 * 1024)
    consumer = Waiting(reactor)
    stream = t.open_stream("agent", consumer, "PCMU")
    sender = _sender()
    try:
        for listener in (stream.rtp_listener, stream.rtcp_listener):
            got = listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            assert got >= 2 * 1024 * 1024
        assert stream.rtcp_listener.getHost().port == stream.port + 1
        block = struct.pack("!IIIIII", 1, (10 << 24) | 3, 1000, 80, 0, 0)
        sr = struct.pack("!BBH", 0x81, 200, 12) + struct.pack("!IQIII", 0xCAFE, 1, 2, 42, 6720) + block
        sender.sendto(sr, ("127.0.0.1", stream.port + 1))
        yield until(reactor, lambda: stream.receiver.counters["rtcp_packets"] == 1)
        rtcp = stream.stats()["rtcp"]
        assert (rtcp["sender_packets"], rtcp["sender_octets"], rtcp["jitter_ms"]) == (42, 6720, 10.0)
    finally:
        sender.close()
        yield t.stopService()


def test_set_receive_buffer_reports_what_the_kernel_gave():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert set_receive_buffer(s, 256 * 1024) >= 128 * 1024
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def test_check_source_drops_other_hosts():
    from twisted.internet import reactor

    t = _transport(reactor, check_source=True)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU", remote_host="127.0.0.1")
    encoded = ulaw_encode(np.arange(-8000, 8000, 10, dtype=np.int16))
    packets = _packets(encoded, 0)
    stranger, friend = _sender("127.0.0.2"), _sender("127.0.0.1")
    try:
        for data in packets[:5]:
            stranger.sendto(data, ("127.0.0.1", stream.port))
        stranger.sendto(b"\x81\xc8\x00\x01" + bytes(4), ("127.0.0.1", stream.port + 1))
        for data in packets:
            friend.sendto(data, ("127.0.0.1", stream.port))
        yield consumer.wait_samples(len(encoded))
        assert np.array_equal(consumer.audio, ulaw_decode(encoded))
        assert stream.stats()["source_rejected"] == 6
        # A re-INVITE moves the source: the old host is refused from now on.
        stream.set_remote("127.0.0.2")
        friend.sendto(build_rtp(0, 1, 2, 0xCAFE, b"\xff" * 160), ("127.0.0.1", stream.port))
        yield until(reactor, lambda: stream.stats()["source_rejected"] == 7)
    finally:
        stranger.close()
        friend.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_close_ends_the_stream_and_gives_the_port_back():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")
    port = stream.port
    assert t.allocator.in_use == 1
    try:
        yield stream.close("bye")
        assert consumer.events == [("end", 0, {"reason": "bye"})]
        assert t.allocator.in_use == 0 and not t.streams
        # The sockets are gone: the port can be bound again at once.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))
        probe.close()
        yield stream.close("again")  # closing twice is harmless
        assert len(consumer.events) == 1
    finally:
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_rtp_timeout_ends_an_idle_stream_but_not_one_on_hold():
    from twisted.internet import reactor

    t = _transport(reactor, rtp_timeout=1)
    idle, held = Waiting(reactor), Waiting(reactor)
    s1 = t.open_stream("idle", idle, "PCMU")
    s2 = t.open_stream("held", held, "PCMU")
    s2.hold()
    try:
        yield idle.wait_event("end")
        assert idle.events[-1][2] == {"reason": "timeout"}
        yield until(reactor, lambda: s1 not in t.streams)
        assert s2 in t.streams
        assert [e[0] for e in held.events] == ["hold"]
    finally:
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_a_busy_port_is_skipped():
    from twisted.internet import reactor

    first = random.randrange(30000, 39000, 2)
    t = MediaTransport(reactor, Media(host="127.0.0.1"),
                       allocator=RangePortAllocator(reactor, first, first + 20))
    t.startService()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        blocker.bind(("127.0.0.1", first + 1))  # the RTCP half of the first pair
        stream = t.open_stream("s", Waiting(reactor), "PCMU")
        assert stream.port != first and first < stream.port < first + 20
    finally:
        blocker.close()
        yield t.stopService()


@pytest_twisted.inlineCallbacks
def test_garbage_on_the_sockets_never_reaches_the_reactor():
    from twisted.internet import reactor

    t = _transport(reactor)
    consumer = Waiting(reactor)
    stream = t.open_stream("s", consumer, "PCMU")
    rnd = random.Random(3)
    sender = _sender()
    try:
        for _ in range(300):
            junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300)))
            sender.sendto(junk, ("127.0.0.1", stream.port))
            sender.sendto(junk, ("127.0.0.1", stream.port + 1))
        encoded = ulaw_encode(np.zeros(1600, np.int16) + 1000)
        for data in _packets(encoded, 0, seq=rnd.randrange(65536)):
            sender.sendto(data, ("127.0.0.1", stream.port))
        yield consumer.wait_samples(1600)
        assert stream.stats()["malformed"] + stream.stats()["unknown_payload_type"] > 0
    finally:
        sender.close()
        yield t.stopService()


def test_source_hosts_are_compared_as_the_socket_layer_spells_them():
    from siprecd.media.transport import _normal_host

    assert _normal_host("0:0::1") == "::1"
    assert _normal_host("192.0.2.1") == "192.0.2.1"
    assert _normal_host("0.0.0.0") is None and _normal_host("::") is None and _normal_host(None) is None
    assert _normal_host("sbc.example.com") == "sbc.example.com"
