"""Drills: the wall clock jumps (an NTP step) under the daemon's timers.

Every siprecd component with a timer takes an injected ``IReactorTime``;
here it is a ``task.Clock`` that the test steps forward and backward,
which is exactly what a real step does to Twisted's reactor: the reactor
keeps its timers on ``time.time()`` (absolute wall-clock seconds), so a
step forward by S fires at once every timer due within S, and a step back
by S postpones every pending timer (LoopingCalls included) by S. The
last test records what that means for a real node (see its docstring).

A promise the code does not keep yet is an ``xfail(strict=True)`` drill
naming the place to fix: the table says what happens today, and the
drill turns red once it is fixed, so that the marker is removed.
"""

import itertools
import time

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from harness import drills
from harness.receiver import Reply, add_utterances, seed_streams, until, webhook_config
from siprecd import config as configmod
from siprecd.ratelimit import RateLimiter
from siprecd.calls import CallRegistry
from siprecd.media.receiver import ReceiverGroup, StreamReceiver
from siprecd.media.ports import RangePortAllocator
from siprecd.media.codecs import ulaw_encode
from siprecd.media.rtp import build_rtp
from siprecd.service import Readiness
from siprecd.simulator.samples import sample_invite
from siprecd.sip.endpoint import SipEndpoint, Source
from siprecd.siprec.server import RecordingServer
from siprecd.storage.sqlite import SqliteStorage
from siprecd.testing.doubles import SentMessages
from siprecd.webhooks import WebhookService

HOUR = 3600.0
T0 = 1_700_000_000.0


class SteppingClock(task.Clock):
    """A task.Clock whose wall time can also *step* (as NTP steps the
    system clock); ``monotonic()`` counts only real time passing."""

    def __init__(self):
        super().__init__()
        self.stepped = 0.0

    def step(self, seconds):
        self.stepped += seconds
        self.advance(seconds)

    def monotonic(self):
        return self.seconds() - self.stepped


def clock_at(seconds=T0):
    clock = SteppingClock()
    clock.advance(seconds)
    return clock


def next_timer(clock):
    """Seconds until the clock's next pending timer (None: none)."""
    times = [c.getTime() for c in clock.getDelayedCalls() if c.active()]
    return None if not times else min(times) - clock.seconds()


# -- session timers ----------------------------------------------------------------------

SRC = Source("UDP", "192.0.2.10", 5060, None, "192.0.2.1", 5070)
_branches = itertools.count(1)


class Srs:
    """The recording server behind its SIP endpoint, on a task.Clock,
    without sockets (as tests/test_siprec_server.py drives it)."""

    def __init__(self, **sections):
        self.clock = clock_at()
        self.config = configmod.from_dict(
            {"media": {"port_min": 30000, "port_max": 30099}, **sections})
        self.wire = SentMessages()
        self.endpoint = SipEndpoint(self.clock, self.wire)
        self.listener = CallRegistry()
        self.server = RecordingServer(
            self.endpoint, self.clock, self.config, self.listener,
            RangePortAllocator(self.clock, 30000, 30099, 5.0), Readiness())
        # As a real reactor's time.monotonic: steps do not count.
        self.server.monotonic = self.clock.monotonic

    def call(self, n, session_expires=1800):
        sample = sample_invite("rfc7865", call_key=f"clock-{n}")
        headers = [("Require", "siprec"), *sample.headers, ("Supported", "timer"),
                   ("Session-Expires", f"{session_expires};refresher=uac")]
        lines = [
            "INVITE sip:srs@192.0.2.1:5070 SIP/2.0",
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{next(_branches)};rport",
            f"From: <sip:src@192.0.2.10>;tag=src{n}", "To: <sip:srs@192.0.2.1>",
            f"Call-ID: {sample.call_id}", "CSeq: 1 INVITE",
            "Contact: <sip:src@192.0.2.10:5060>;+sip.src", "Max-Forwards: 70",
            *[f"{k}: {v}" for k, v in headers],
            f"Content-Type: {sample.content_type}", f"Content-Length: {len(sample.body)}",
        ]
        self.endpoint.datagram_received(("\r\n".join(lines) + "\r\n\r\n").encode()
                                        + sample.body, SRC)
        ok = self.wire.pop()[-1]
        assert ok.status == 200, ok
        ack = (f"ACK sip:srs@192.0.2.1:5070 SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{next(_branches)};rport\r\n"
               f"From: <sip:src@192.0.2.10>;tag=src{n}\r\nTo: {ok.headers.get('To')}\r\n"
               f"Call-ID: {sample.call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        self.endpoint.datagram_received(ack, SRC)
        return sample.call_id

    def byes(self):
        return [m for m in self.wire.pop() if getattr(m, "method", None) == "BYE"]


def test_session_timers_and_a_step_back():
    """Promise (backward step): a step back never fires a session timer or
    the max-call-duration timer early and never asks for a negative wait;
    what it costs is recorded: each pending timer comes S seconds late."""
    srs = Srs()
    calls = [srs.call(n) for n in range(3)]
    srs.clock.advance(600)
    srs.clock.advance(-HOUR)
    waits = [c.getTime() - srs.clock.seconds() for c in srs.clock.getDelayedCalls()]
    srs.clock.advance(1800)              # past the expiry, had there been no step
    early = srs.byes()
    srs.clock.advance(HOUR)
    late = srs.byes()
    drills.record(
        "clock step back 1 h under SIP session timers (3 calls, Session-Expires 1800, "
        "refresher uac, no refresh)",
        f"no timer fired early ({len(early)} BYEs when the expiry was due); every pending "
        f"timer waits the step out: the {len(late)} expiry BYEs came 1 h late; smallest wait "
        f"asked of the clock {min(waits):.0f} s (none negative)",
        "nothing; a call whose SRC is gone stays up (and its ports held) 1 h longer")
    assert early == [] and len(late) == len(calls) and min(waits) >= 0


def test_session_timers_and_a_step_forward():
    """Promise (forward step): a wall clock stepped forward by more than
    the session interval does not end calls whose SRC keeps refreshing:
    no storm of session-timer BYEs."""
    srs = Srs()
    calls = [srs.call(n) for n in range(3)]
    srs.clock.advance(600)               # the SRC would refresh at 900 s
    srs.clock.step(HOUR)                 # the step
    byes = srs.byes()
    drills.record(
        "clock step forward 1 h under SIP session timers (3 calls, Session-Expires 1800, "
        "the SRC refreshing at half time)",
        f"{len(byes)} of {len(calls)} calls hung up at the step: timers that fire early "
        "(Twisted's follow the wall clock) wait out the rest measured on the monotonic clock",
        "nothing" if not byes else f"{len(byes)} calls cut short", ok=not byes)
    assert byes == []


# -- RTP timeout ---------------------------------------------------------------------------


class Pcm:
    def __init__(self):
        self.samples = 0
        self.events = []

    def pcm(self, stream, position, samples, rate=8000):
        self.samples += len(samples)

    def event(self, stream, kind, position, detail):
        self.events.append((kind, detail))

    @property
    def ended(self):
        return [detail for kind, detail in self.events if kind == "end"]


class RtpFlow:
    """Streams of 20 ms µ-law packets into a ReceiverGroup ticked every
    0.1 s, as MediaTransport does (its tick is a LoopingCall)."""

    TICK = 0.1

    def __init__(self, clock, count=2, rtp_timeout=60.0):
        self.clock = clock
        self.group = ReceiverGroup(clock, rtp_timeout=rtp_timeout)
        self.group.monotonic = clock.monotonic
        self.outputs = [Pcm() for _ in range(count)]
        self.receivers = [StreamReceiver(f"s{n}", out, clock)
                          for n, out in enumerate(self.outputs)]
        for r in self.receivers:
            self.group.add(r)
        self.sent = [0] * count
        self.payload = ulaw_encode(
            np.random.default_rng(1).integers(-8000, 8000, 160).astype(np.int16))
        self._since_tick = 0.0

    def run(self, seconds, sending=None):
        """*seconds* of time; streams whose index is in *sending* (default
        all) send a packet every 20 ms."""
        sending = range(len(self.receivers)) if sending is None else sending
        for _ in range(int(round(seconds / 0.02))):
            self.clock.advance(0.02)
            self._since_tick += 0.02
            if self._since_tick >= self.TICK - 1e-9:
                self._since_tick = 0.0
                self.group.tick()
            for n in sending:
                i = self.sent[n]
                self.sent[n] += 1
                self.receivers[n].datagram_received(
                    build_rtp(0, 1000 + i, 5000 + 160 * i, 0x1000 + n, self.payload))

    def step(self, seconds):
        """The clock steps; the media tick is the first timer to run after it."""
        self.clock.step(seconds)
        self._since_tick = 0.0
        self.group.tick()


def test_rtp_timeout_and_a_step_forward():
    """Promise: a forward step of the wall clock larger than
    media.rtp_timeout times out no stream that is sending RTP: neither one
    sending every 20 ms nor one in a short pause (an SBC sending no RTP
    during silence for half a second). No storm of RTP timeouts."""
    flow = RtpFlow(clock_at())
    flow.run(2.0)
    flow.run(0.5, sending=[0])           # stream 1 pauses (silence suppression)
    flow.step(120)
    flow.run(2.0)
    ended = [out.ended for out in flow.outputs]
    drills.record(
        "clock step forward 120 s under RTP (media.rtp_timeout 60 s; stream A sending every "
        "20 ms, stream B in a 0.5 s silence-suppression pause)",
        f"after the step: A {ended[0] or 'went on'}, B {ended[1] or 'went on'}: the idle "
        "check sees the wall clock move more than the monotonic one, logs the step and does "
        "not count it as silence",
        "nothing" if ended == [[], []] else "the rest of those calls' audio and transcripts",
        ok=ended == [[], []])
    assert ended == [[], []]


def test_rtp_and_a_step_back():
    """Promise (backward step): RTP keeps flowing into the same stream and
    timeline after a step back; the idle check never fires early."""
    flow = RtpFlow(clock_at(), count=1)
    flow.run(2.0)
    flow.step(-120)
    flow.run(2.0)
    flow.receivers[0].end("test")
    out = flow.outputs[0]
    drills.record(
        "clock step back 120 s under RTP",
        f"the stream went on: {out.samples} samples of {flow.sent[0] * 160} sent, on one "
        f"timeline, ended only by the test ({out.ended}); note: the media tick itself is a "
        "LoopingCall, so in the daemon decoding stops for the length of the step (last row)",
        "nothing")
    assert out.ended == [{"reason": "test"}] and out.samples == flow.sent[0] * 160


# -- webhook backoff -----------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def storage(tmp_path):
    s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await s.open()
    yield s
    await s.close()


def webhook_service(tmp_path, storage, receiver, clock, **settings):
    config = webhook_config(tmp_path / "state", {"crm": {
        "url": receiver.url(), "ca_bundle": str(tmp_path / "pki" / "ca.pem"), "timeout": "5s"}},
        **settings)
    return WebhookService.from_config(config, storage, reactor, clock=clock)


@pytest_twisted.ensureDeferred
async def test_webhook_backoff_and_clock_steps(tmp_path, storage, authority, receiver):
    """Promise: a step back never makes a retry wait a negative time nor
    fire early; a step forward retries each waiting message once (at most
    ``concurrency`` at a time), never a storm of attempts."""
    clock = clock_at(time.time())
    service = webhook_service(tmp_path, storage, receiver, clock, backoff_initial="1s",
                              backoff_max="300s", poll_interval="1s")
    # Step back: one message, refused with Retry-After 30 s.
    receiver.script = [Reply(503, {"Retry-After": "30"})]
    streams = await seed_streams(storage, 1, now_ms=int(clock.seconds() * 1000))
    await add_utterances(storage, streams, 1, ["crm"], created_ms=int(clock.seconds() * 1000))
    await service.startService()
    try:
        await until(service, lambda s: s.stats["retries"] == 1)
        clock.advance(-HOUR)
        frozen = next_timer(clock)
        clock.advance(31)                # when the retry was due, had there been no step
        early = len(receiver.received)
        clock.advance(HOUR)
        await until(service, lambda s: s.stats["delivered"] == 1)

        # Step forward: five streams, each refused once (Retry-After 300 s).
        receiver.script = [Reply(503, {"Retry-After": "300"}) for _ in range(5)]
        before = len(receiver.received)
        now_ms = int(clock.seconds() * 1000)
        five = await seed_streams(storage, 5, now_ms=now_ms, prefix="fwd")
        await add_utterances(storage, five, 3, ["crm"], created_ms=now_ms)
        service.notify()
        await until(service, lambda s: s.stats["retries"] == 6)
        clock.advance(HOUR)
        await until(service, lambda s: s.stats["delivered"] == 1 + 15)
        attempts = len(receiver.received) - before
    finally:
        await service.stopService()
    drills.record(
        "clock step back 1 h / forward 1 h under webhook retries (Retry-After 30 s / 300 s)",
        f"back: no attempt before the due time ({early - 1} early), no negative wait (next "
        f"timer {frozen:.0f} s away), the retry came 1 h late (the poll and the wake-up are "
        f"both timers); forward: each of 5 waiting heads retried once at the step, then "
        f"their streams in order ({attempts} requests for 15 messages with 5 refusals: no "
        f"storm)",
        "nothing (delivery delayed by the length of a backward step)")
    assert early == 1 and frozen > HOUR - 60
    assert attempts == 15 + 5


# -- API rate limits -----------------------------------------------------------------------


def test_rate_limiter_and_clock_steps():
    """Promise: a clock step never locks an app (or a client address) out
    of the API: after a step back the bucket keeps its tokens, after a step
    forward it is full, never fuller than its burst."""
    clock = clock_at()
    limits = RateLimiter(clock, rate=50.0, burst=100)
    for _ in range(100):
        assert limits.take("app") == 0.0
    clock.advance(-HOUR)
    after_back = [limits.take("app") for _ in range(3)]
    clock.advance(1.0)
    refilled = sum(1 for _ in range(60) if limits.take("app") == 0.0)
    clock.advance(HOUR)
    after_forward = sum(1 for _ in range(200) if limits.take("app") == 0.0)
    drills.record(
        "clock step back 1 h / forward 1 h under the API rate limiter (50/s, burst 100)",
        f"back: next waits {[round(w, 3) for w in after_back]} s, {refilled} requests "
        f"allowed one second later; forward: {after_forward} allowed at once (the burst)",
        "nothing")
    assert max(after_back) <= 1.0
    assert refilled >= 49
    assert after_forward == 100


# -- export schedule -----------------------------------------------------------------------


class CountingExporter:
    """TEST DOUBLE of siprecd.export.build.Exporter: counts the days built
    (which days is what the schedule decides; how is tested elsewhere)."""

    def __init__(self, storage):
        self.storage = storage
        self.node = "node-a"
        self.days = []

    async def export(self, day, should_stop=None):
        self.days.append(day)
        return type("Result", (), {"rows": 0, "files": [], "seconds": 0.0, "removed": []})()


@pytest_twisted.ensureDeferred
async def test_export_schedule_and_clock_steps(storage):
    """Promise: the daily export builds each day once, at 02:00 UTC by the
    wall clock, whatever steps the clock takes around that time."""
    from siprecd.export.service import ExportService

    clock = clock_at(1_656_378_000.0)    # 2022-06-28T01:00:00Z
    exporter = CountingExporter(storage)
    service = ExportService(exporter, clock, at="02:00")
    service.startService()
    try:
        await service.when_idle()
        clock.advance(2 * HOUR)          # step forward to 03:00, past 02:00
        await service.when_idle()
        first = list(exporter.days)
        clock.advance(-2 * HOUR)         # back to 01:00
        clock.advance(1.5 * HOUR)        # 02:30 again
        await service.when_idle()
        again = list(exporter.days)
        clock.advance(24 * HOUR)
        await service.when_idle()
    finally:
        await service.stopService()
    drills.record(
        "clock steps around the daily export (02:00 UTC): forward over it, back, forward "
        "over it again",
        f"built {first} at the forward step, nothing more when 02:00 came round again "
        f"({again}), the next day on time ({exporter.days})",
        "nothing")
    assert first == ["2022-06-27"] and again == first
    assert exporter.days == ["2022-06-27", "2022-06-28"]


# -- several nodes ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cluster_reaper_and_a_step_forward(storage):
    """Promise: a node whose wall clock steps forward does not take the
    other, live nodes for dead: their active calls are not ended."""
    from siprecd.cluster import ClusterService
    from siprecd.storage.records import Call

    now = time.time()
    a = ClusterService(storage, "node-a", clock_at(now), "https://a.example", 2.0, 10.0)
    b_clock = clock_at(now)
    b = ClusterService(storage, "node-b", b_clock, "https://b.example", 2.0, 10.0)
    await a.startService()
    await b.startService()
    try:
        await storage.upsert_call(Call("on-node-a", "cid-a", "node-a", int(now * 1000)))
        # Node B holds the reaper lease (one node at a time looks for dead
        # nodes) when its clock steps; A is alive and has just beaten.
        b_clock.advance(60)
        await b.beat()
        call = await storage.get_call_by_guid("on-node-a")
    finally:
        await defer.maybeDeferred(a.stopService)
        await defer.maybeDeferred(b.stopService)
    drills.record(
        "clock step forward 60 s on the node holding the reaper lease, of two sharing the "
        "database (cluster.dead_after 10 s)",
        f"node A's call stays {call.state}: liveness is judged by how long a node's heartbeat "
        f"has not changed, on the judge's monotonic clock, never by comparing clocks",
        "nothing", ok=call.state == "active")
    assert call.state == "active"


# -- what a real step does --------------------------------------------------------------------


def test_what_a_real_ntp_step_does_to_the_reactor():
    """Not a promise but the mechanism, checked: Twisted's reactor keeps
    its timers (callLater, LoopingCall) on time.time(), absolute wall
    seconds, like task.Clock. A step back by S stops every LoopingCall for
    S seconds -- in the daemon that includes the media tick (decoding RTP
    into PCM for transcription), the webhook poll, heartbeats and SIP
    retransmissions -- and a step forward by S runs, at once, every timer
    due within S."""
    from twisted.internet import base
    from twisted.python import runtime

    assert base.ReactorBase.seconds is runtime.seconds
    assert runtime.seconds() == pytest.approx(time.time(), abs=1.0)
    clock = clock_at()
    ticks = []
    loop = task.LoopingCall(lambda: ticks.append(clock.seconds()))
    loop.clock = clock
    loop.start(0.02)
    clock.advance(0.1)
    before = len(ticks)
    clock.advance(-60)
    for _ in range(50):                  # a second of (wall) time after the step
        clock.advance(0.02)
    frozen = len(ticks) - before
    clock.advance(60)
    resumed = len(ticks) - before
    loop.stop()
    drills.record(
        "a real NTP step (mechanism; chronyd/ntpd step only at start-up or past their step "
        "threshold, otherwise they slew, which is harmless)",
        f"Twisted {__import__('twisted').__version__} runs every timer on time.time(): after "
        f"a step back of 60 s a 20 ms LoopingCall (like the media tick) ran {frozen} times in "
        f"the next second, then {resumed} once the clock caught up; a step forward runs every "
        "timer due within the step at once (rows above)",
        "a step back freezes RTP decoding, transcription, webhook polling, heartbeats and SIP "
        "retransmissions for its length (audio waits in socket buffers and is dropped when "
        "they fill); a step forward fires every timer due within it at once (session timers and RTP timeouts then wait out the rest, rows above); run nodes with slewing time "
        "sync (chrony without makestep after start), or move timers to a monotonic clock")
    assert frozen == 0 and resumed >= 1
