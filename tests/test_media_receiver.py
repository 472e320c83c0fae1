"""The per-stream RTP receiver, without sockets, on a fake clock."""

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from siprecd.interfaces import IStreamConsumer
from siprecd.media import codecs
from siprecd.media.codecs import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from siprecd.media.receiver import ReceiverGroup, StreamReceiver
from siprecd.media.rtp import build_rtp

DTMF_PT = 101
SPP = 160  # samples per 20 ms packet


@implementer(IStreamConsumer)
class Recorder:
    """Keeps all PCM and events; checks that PCM positions are contiguous."""

    def __init__(self):
        self.chunks = []
        self.events = []
        self.end = 0

    def pcm(self, stream, position, samples, rate=8000):
        assert position == self.end, f"PCM at {position}, expected {self.end}"
        assert samples.dtype == np.int16
        self.end += len(samples)
        self.chunks.append(np.array(samples))

    def event(self, stream, kind, position, detail):
        self.events.append((kind, position, detail))

    @property
    def audio(self):
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def kinds(self, kind):
        return [e for e in self.events if e[0] == kind]


def noise(samples, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, samples).astype(np.int16)


class Source:
    """An RTP sender: *count* 20 ms packets of one codec."""

    def __init__(self, count, seq=1000, ts=5000, ssrc=0x11223344, codec="PCMU", seed=1,
                 samples_per_packet=SPP):
        self.codec = codec
        self.spp = samples_per_packet
        self.pt = {"PCMU": 0, "PCMA": 8}[codec]
        encode = ulaw_encode if codec == "PCMU" else alaw_encode
        self.encoded = encode(noise(count * self.spp, seed))
        self.seq, self.ts, self.ssrc = seq, ts, ssrc
        self.count = count

    def payload(self, i):
        return self.encoded[i * self.spp:(i + 1) * self.spp]

    def packet(self, i, **kw):
        args = dict(payload_type=self.pt, sequence=self.seq + i, timestamp=self.ts + i * self.spp,
                    ssrc=self.ssrc, payload=self.payload(i))
        args.update(kw)
        return build_rtp(args.pop("payload_type"), args.pop("sequence"), args.pop("timestamp"),
                         args.pop("ssrc"), args.pop("payload"), **args)

    def decoded(self, indices=None):
        decode = ulaw_decode if self.codec == "PCMU" else alaw_decode
        if indices is None:
            return decode(self.encoded)
        return np.concatenate([decode(self.payload(i)) for i in indices])


def make(codec="PCMU", window=0.06, **kw):
    clock = Clock()
    clock.advance(1000)
    rec = Recorder()
    r = StreamReceiver("s1", rec, clock, codec=codec, jitter_window=window,
                       dtmf_payload_type=DTMF_PT, **kw)
    return r, rec, clock


def play(receiver, clock, schedule, group=None, tick=0.02, end=True):
    """Deliver (time offset, datagram) pairs in time order, ticking as time goes."""
    start = clock.seconds()
    for at, data in sorted(schedule, key=lambda x: x[0]):
        while clock.seconds() + tick < start + at:
            clock.advance(tick)
            (group.tick if group else receiver.poll)()
        clock.advance(max(0.0, start + at - clock.seconds()))
        receiver.receive(data)
    clock.advance(0.2)
    (group.tick if group else receiver.poll)()
    if end:
        receiver.end("test")


def in_order(source, indices=None, spacing=0.02, offset=0.0):
    indices = range(source.count) if indices is None else indices
    return [(offset + i * spacing, source.packet(i)) for i in indices]


def test_recorder_is_a_stream_consumer():
    verifyObject(IStreamConsumer, Recorder())


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_in_order_is_sample_exact(codec):
    r, rec, clock = make(codec)
    src = Source(100, codec=codec)
    play(r, clock, in_order(src))
    assert np.array_equal(rec.audio, src.decoded())
    s = r.stats()
    assert (s["packets"], s["bytes"], s["lost"], s["late"], s["duplicates"]) == (100, 16000, 0, 0, 0)
    assert s["ssrc"] == src.ssrc and s["position"] == 16000 and s["audio_ms"] == 2000
    assert rec.events == [("end", 16000, {"reason": "test"})]
    # The steady state went through the fast path.
    assert r._fast_count > 80


def test_in_order_through_a_group_tick():
    clock = Clock()
    group = ReceiverGroup(clock)
    rec = Recorder()
    r = StreamReceiver("s", rec, clock)
    group.add(r)
    src = Source(200)
    play(r, clock, in_order(src), group=group, tick=0.1)
    assert np.array_equal(rec.audio, src.decoded())
    assert r._fast_count > 150


def test_sequence_wrap_and_timestamp_wrap():
    r, rec, clock = make()
    src = Source(100, seq=65500, ts=2**32 - 50 * SPP - 7)
    play(r, clock, in_order(src))
    assert np.array_equal(rec.audio, src.decoded())
    assert r.stats()["lost"] == 0


def test_reordering_inside_the_window_is_restored():
    r, rec, clock = make()
    src = Source(60)
    schedule = in_order(src)
    for i in (10, 30, 31, 45):  # each arrives 30 ms late, after its successor
        schedule[i] = (schedule[i][0] + 0.03, schedule[i][1])
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, src.decoded())
    s = r.stats()
    assert (s["lost"], s["late"], s["duplicates"]) == (0, 0, 0)


def test_first_packets_reordered_still_start_at_the_first_sequence_number():
    r, rec, clock = make()
    src = Source(20)
    schedule = in_order(src)
    schedule[0] = (0.03, schedule[0][1])  # packet 0 after packet 1
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, src.decoded())


def test_late_packet_is_concealed_and_counted():
    r, rec, clock = make()
    src = Source(40)
    schedule = in_order(src)
    schedule[10] = (schedule[10][0] + 0.2, schedule[10][1])  # beyond the 60 ms window
    play(r, clock, schedule)
    s = r.stats()
    assert (s["lost"], s["late"]) == (1, 1)
    out = rec.audio
    assert len(out) == 40 * SPP
    expected = src.decoded()
    expected[10 * SPP:11 * SPP] = 0  # G.711 concealment is silence
    assert np.array_equal(out, expected)
    assert s["concealed_samples"] == SPP


def test_loss_concealment_keeps_the_exact_length():
    r, rec, clock = make()
    src = Source(100)
    lost = {3, 4, 5, 50, 98}
    play(r, clock, [p for p in in_order(src) if round(p[0] / 0.02) not in lost])
    out = rec.audio
    assert len(out) == 100 * SPP
    expected = src.decoded()
    for i in lost:
        expected[i * SPP:(i + 1) * SPP] = 0
    assert np.array_equal(out, expected)
    assert r.stats()["lost"] == 5


def test_duplicates_are_dropped_and_counted():
    r, rec, clock = make()
    src = Source(50)
    schedule = in_order(src)
    schedule += [(0.015 + i * 0.02, src.packet(i)) for i in (0, 7, 8, 30)]
    schedule += [(2.0, src.packet(20))]
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, src.decoded())
    assert r.stats()["duplicates"] == 5


def test_ssrc_change_reanchors_on_arrival_time():
    r, rec, clock = make()
    a = Source(10, seed=1)
    b = Source(10, seq=40000, ts=123456789, ssrc=0x5555, seed=2)
    # B takes over 20 ms after A's last packet, exactly where A stopped.
    play(r, clock, in_order(a) + in_order(b, offset=0.2))
    assert rec.kinds("ssrc") == [("ssrc", 1600, {"ssrc": 0x5555, "previous": a.ssrc})]
    assert np.array_equal(rec.audio, np.concatenate([a.decoded(), b.decoded()]))
    assert r.stats()["ssrc_changes"] == 1 and r.ssrc == 0x5555


def test_ssrc_change_after_a_gap_fills_the_gap():
    r, rec, clock = make()
    a = Source(10, seed=1)
    b = Source(10, seq=7, ts=99, ssrc=0x5555, seed=2)
    play(r, clock, in_order(a) + in_order(b, offset=1.2))
    assert rec.kinds("ssrc")[0][1] == 9600
    out = rec.audio
    assert len(out) == 9600 + 1600
    assert np.array_equal(out[:1600], a.decoded())
    assert not out[1600:9600].any()
    assert np.array_equal(out[9600:], b.decoded())


def test_a_stray_packet_of_another_ssrc_changes_nothing():
    r, rec, clock = make()
    a = Source(30)
    schedule = in_order(a) + [(0.101, build_rtp(0, 5, 5, 0x999, b"\xff" * 160))]
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, a.decoded())
    assert r.stats()["other_ssrc"] == 1 and not rec.kinds("ssrc")


def test_old_ssrc_reordered_around_a_switch_does_not_switch_back():
    r, rec, clock = make()
    a = Source(12, seed=1)
    b = Source(10, seq=300, ts=7, ssrc=0x5555, seed=2)
    schedule = in_order(a, range(10)) + in_order(b, offset=0.2)
    # A's last two packets arrive among B's first ones.
    schedule += [(0.245, a.packet(10)), (0.25, a.packet(11))]
    play(r, clock, schedule)
    assert len(rec.kinds("ssrc")) == 1
    assert len(rec.audio) == 3200


def _event(digit, end, duration, volume=10):
    return bytes([digit, (0x80 if end else 0) | volume]) + struct.pack("!H", duration)


def dtmf_call(end_repeats_same_seq=False):
    """10 audio packets, key 5 for 80 ms (RFC 4733 updates, end sent 3 times),
    then 10 more audio packets whose timestamps continue after the event."""
    src = Source(20)
    schedule = []
    seq, t = src.seq, 0.0
    for i in range(10):
        schedule.append((t, src.packet(i, sequence=seq)))
        seq += 1
        t += 0.02
    event_ts = src.ts + 10 * SPP
    for k, duration in enumerate((160, 320, 480)):
        schedule.append((t, build_rtp(DTMF_PT, seq, event_ts, src.ssrc, _event(5, False, duration),
                                      marker=k == 0)))
        seq += 1
        t += 0.02
    for k in range(3):
        schedule.append((t, build_rtp(DTMF_PT, seq, event_ts, src.ssrc, _event(5, True, 640))))
        if not end_repeats_same_seq or k == 2:
            seq += 1
        t += 0.02
    for i in range(10, 20):
        schedule.append((t, src.packet(i, sequence=seq, timestamp=src.ts + i * SPP + 640)))
        seq += 1
        t += 0.02
    return src, schedule


@pytest.mark.parametrize("same_seq", [False, True])
def test_dtmf_is_reported_once_and_never_decoded(same_seq):
    r, rec, clock = make()
    src, schedule = dtmf_call(same_seq)
    play(r, clock, schedule)
    assert rec.kinds("dtmf") == [("dtmf", 1600, {"digit": "5", "duration": 640})]
    out = rec.audio
    assert len(out) == 20 * SPP + 640
    assert np.array_equal(out[:1600], src.decoded(range(10)))
    assert not out[1600:2240].any()
    assert np.array_equal(out[2240:], src.decoded(range(10, 20)))
    s = r.stats()
    assert (s["dtmf_events"], s["lost"], s["duplicates"], s["unknown_payload_type"]) == (1, 0, 0, 0)


def test_dtmf_whose_end_packets_were_all_lost_is_reported_at_the_next_event():
    r, rec, clock = make()
    src = Source(2)
    ssrc = src.ssrc
    schedule = [(0.0, src.packet(0)), (0.02, src.packet(1))]
    schedule += [(0.04, build_rtp(DTMF_PT, src.seq + 2, src.ts + 320, ssrc, _event(1, False, 160)))]
    schedule += [(0.06, build_rtp(DTMF_PT, src.seq + 3, src.ts + 1000, ssrc, _event(2, True, 400)))]
    play(r, clock, schedule)
    assert [e[2]["digit"] for e in rec.kinds("dtmf")] == ["1", "2"]


def test_comfort_noise_becomes_silence_for_the_time_it_covers():
    r, rec, clock = make()
    src = Source(10)
    schedule = in_order(src, range(5))
    schedule.append((0.1, build_rtp(13, src.seq + 5, src.ts + 800, src.ssrc, b"\x40")))
    # Speech resumes a second later, timestamps and sequence continuing.
    for k, i in enumerate(range(5, 10)):
        schedule.append((1.1 + 0.02 * k, src.packet(i, sequence=src.seq + 6 + k,
                                                   timestamp=src.ts + 800 + 8000 + k * SPP,
                                                   marker=k == 0)))
    play(r, clock, schedule)
    out = rec.audio
    assert len(out) == 800 + 8000 + 800
    assert np.array_equal(out[:800], src.decoded(range(5)))
    assert not out[800:8800].any()
    assert np.array_equal(out[8800:], src.decoded(range(5, 10)))
    s = r.stats()
    assert (s["comfort_noise"], s["lost"], s["silence_samples"]) == (1, 0, 8000)


def test_unknown_payload_types_and_malformed_packets_are_counted():
    r, rec, clock = make()
    src = Source(20)
    schedule = in_order(src)
    schedule += [(0.101, build_rtp(96, src.seq + 5, src.ts, src.ssrc, b"video")),
                 (0.102, b"\x80\x00\x01"), (0.103, b"\x40" + bytes(20)),
                 (0.104, bytes([0xA0]) + bytes(11) + b"\x00"),
                 (0.105, build_rtp(DTMF_PT, src.seq + 6, src.ts, src.ssrc, b"\x01"))]
    play(r, clock, schedule)
    s = r.stats()
    assert s["unknown_payload_type"] == 1
    assert s["malformed"] >= 4
    assert s["malformed_kinds"]["short"] == 1 and s["malformed_kinds"]["version"] == 1
    assert s["malformed_kinds"]["padding"] == 1
    assert len(rec.audio) == 20 * SPP


def test_padding_extension_and_csrc_packets_take_the_general_path():
    r, rec, clock = make()
    src = Source(30)
    schedule = [(i * 0.02, src.packet(i, padding=3 if i % 3 == 0 else 0,
                                      extension=(0xBEDE, b"\x10\x01\x00\x00") if i % 3 == 1 else None,
                                      csrcs=(1, 2) if i % 5 == 0 else ()))
                for i in range(30)]
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, src.decoded())


def test_hold_and_resume_fill_the_hold_with_silence():
    clock = Clock()
    clock.advance(50)
    group = ReceiverGroup(clock, rtp_timeout=2.0)
    rec = Recorder()
    r = StreamReceiver("s", rec, clock)
    group.add(r)
    src = Source(100)
    start = clock.seconds()
    # One second of audio, then a 5 s hold with no RTP at all.
    play(r, clock, in_order(src, range(50)), group=group, end=False)
    clock.advance(0.8)
    r.hold()
    while clock.seconds() < start + 5.9:
        clock.advance(0.1)
        group.tick()
    clock.advance(start + 6.0 - clock.seconds())
    assert not r.ended and not rec.kinds("end")
    assert r.idle_since is None
    r.resume()  # 6 s after the stream started
    resumed = [((i - 50) * 0.02, src.packet(i)) for i in range(50, 100)]
    play(r, clock, resumed, group=group, end=False)
    assert rec.kinds("hold") == [("hold", 8000, None)]
    assert rec.kinds("resume") == [("resume", 48000, None)]
    out = rec.audio
    assert len(out) == 48000 + 50 * SPP
    assert np.array_equal(out[:8000], src.decoded(range(50)))
    assert not out[8000:48000].any()
    assert np.array_equal(out[48000:], src.decoded(range(50, 100)))
    # Off hold, RTP silence ends the stream after rtp_timeout.
    for _ in range(40):
        clock.advance(0.1)
        group.tick()
    assert rec.events[-1] == ("end", len(out), {"reason": "timeout"})
    assert r not in group.receivers


def test_hold_resume_when_the_sender_keeps_its_timestamps_running():
    r, rec, clock = make()
    src = Source(100)
    start = clock.seconds()
    play(r, clock, in_order(src, range(50)), end=False)
    r.hold()
    clock.advance(start + 6.0 - clock.seconds())
    r.resume()
    # This sender's timestamps kept counting through the hold.
    resumed = [((i - 50) * 0.02, src.packet(i, timestamp=src.ts + i * SPP + 40000))
               for i in range(50, 100)]
    play(r, clock, resumed)
    assert len(rec.audio) == 48000 + 50 * SPP


def test_idle_since_and_timeout_without_hold():
    r, rec, clock = make()
    src = Source(5)
    play(r, clock, in_order(src), end=False)
    since = r.idle_since
    assert since == clock.seconds() - 0.2 or since <= clock.seconds()
    assert not r.check_idle(60)
    clock.advance(60)
    assert r.check_idle(60)
    assert rec.events[-1][0] == "end" and rec.events[-1][2] == {"reason": "timeout"}
    assert r.idle_since is None


def test_a_stream_that_never_sent_anything_times_out_but_not_on_hold():
    r, rec, clock = make()
    r.hold()
    clock.advance(100)
    assert not r.check_idle(60)
    r.resume()
    clock.advance(59)
    assert not r.check_idle(60)
    clock.advance(2)
    assert r.check_idle(60)
    assert [e[0] for e in rec.events] == ["hold", "resume", "end"]
    assert rec.audio.size == 0


def test_jitter_per_rfc3550():
    r, rec, clock = make()
    src = Source(400)
    # Extension headers keep every packet on the general path, where each is
    # timed; transit alternates 0 and 10 ms, so |D| = 80 timestamp units.
    schedule = [(i * 0.02 + (0.01 if i % 2 else 0.0), src.packet(i, extension=(1, b"abcd")))
                for i in range(400)]
    play(r, clock, schedule)
    assert r.stats()["jitter_ms"] == pytest.approx(10.0, rel=0.02)


def test_jitter_is_sampled_on_the_fast_path():
    r, rec, clock = make()
    src = Source(1500)
    rng = random.Random(4)
    schedule = [(i * 0.02 + rng.uniform(0, 0.004), src.packet(i)) for i in range(1500)]
    play(r, clock, schedule)
    jitter = r.stats()["jitter_ms"]
    assert 0.3 < jitter < 3.0  # |D| of two uniform(0, 4 ms) delays averages 1.33 ms
    assert r._fast_count > 1000


def test_rtcp_reports_land_in_stats():
    r, rec, clock = make()
    block = struct.pack("!IIIIII", 1, (25 << 24) | 12, 1000, 160, 0, 0)
    sr = struct.pack("!BBH", 0x81, 200, 12) + struct.pack("!IQIII", 7, 1, 2, 500, 80000) + block
    r.receive_rtcp(sr)
    r.receive_rtcp(b"junk")
    # Multiplexed on the RTP port (RFC 5761) it is recognised too.
    r.receive(struct.pack("!BBH", 0x80, 201, 1) + struct.pack("!I", 9))
    s = r.stats()
    assert s["rtcp"] == {"sender_ssrc": 7, "sender_packets": 500, "sender_octets": 80000,
                         "fraction_lost": 25 / 256, "cumulative_lost": 12, "jitter_ms": 20.0}
    assert (s["rtcp_packets"], s["rtcp_malformed"], s["malformed"]) == (2, 1, 0)


def test_end_releases_what_waits_for_a_gap():
    r, rec, clock = make(window=1.0)
    src = Source(10)
    schedule = [p for p in in_order(src) if p[0] != 0.1]  # packet 5 never comes
    for at, data in schedule:
        clock.advance(0.02)
        r.receive(data)
    r.end("bye")
    assert len(rec.audio) == 10 * SPP
    assert rec.events == [("end", 1600, {"reason": "bye"})]
    r.receive(src.packet(5))
    assert r.stats()["after_end"] == 1


def test_sequence_restart_of_the_same_ssrc():
    r, rec, clock = make()
    src = Source(20)
    schedule = in_order(src, range(10))
    schedule += [(0.2 + 0.02 * k, src.packet(10 + k, sequence=20000 + k, timestamp=9 + k * SPP))
                 for k in range(10)]
    play(r, clock, schedule)
    assert len(rec.audio) == 20 * SPP
    assert np.array_equal(rec.audio, src.decoded())
    assert r.stats()["sequence_restarts"] == 1


def test_timestamp_jump_ahead_of_the_wall_clock_is_not_believed():
    r, rec, clock = make()
    src = Source(20)
    schedule = in_order(src, range(10))
    schedule += [(0.2 + 0.02 * k, src.packet(10 + k, timestamp=src.ts + 10**8 + k * SPP))
                 for k in range(10)]
    play(r, clock, schedule)
    assert len(rec.audio) == 20 * SPP
    assert r.stats()["timestamp_jumps"] == 1


def test_silence_suppression_without_marker_inside_a_batch():
    clock = Clock()
    group = ReceiverGroup(clock)
    rec = Recorder()
    r = StreamReceiver("s", rec, clock)
    group.add(r)
    src = Source(40)
    # Packets 20.. carry timestamps 400 ms later (no marker bit, sequence
    # continuous): the fast path batches them, the tick must notice.
    schedule = [(i * 0.02 + (0.4 if i >= 20 else 0),
                 src.packet(i, timestamp=src.ts + i * SPP + (3200 if i >= 20 else 0)))
                for i in range(40)]
    play(r, clock, schedule, group=group, tick=0.1)
    out = rec.audio
    assert len(out) == 40 * SPP + 3200
    assert np.array_equal(out[:3200], src.decoded(range(20)))
    assert not out[3200:6400].any()
    assert np.array_equal(out[6400:], src.decoded(range(20, 40)))


def test_group_serves_many_streams_of_mixed_codecs_and_sizes():
    clock = Clock()
    group = ReceiverGroup(clock)
    streams = []
    for k in range(12):
        codec = "PCMU" if k % 2 else "PCMA"
        spp = 240 if k % 3 == 0 else 160
        src = Source(50, codec=codec, seed=k, ssrc=k + 1, seq=k * 5000, samples_per_packet=spp)
        rec = Recorder()
        r = StreamReceiver(k, rec, clock, codec=codec)
        group.add(r)
        streams.append((src, rec, r))
    schedule = []
    for src, rec, r in streams:
        schedule += [(i * src.spp / 8000 + 0.001 * src.ssrc, r, src.packet(i)) for i in range(50)]
    schedule.sort(key=lambda x: x[0])
    start = clock.seconds()
    for at, r, data in schedule:
        while clock.seconds() + 0.1 < start + at:
            clock.advance(0.1)
            group.tick()
        r.receive(data)
    clock.advance(0.5)
    group.tick()
    for src, rec, r in streams:
        assert np.array_equal(rec.audio, src.decoded()), src.ssrc
        assert r._fast_count > 30


def test_consumer_failures_do_not_stop_the_stream():
    class Broken(Recorder):
        def pcm(self, stream, position, samples, rate=8000):
            super().pcm(stream, position, samples, rate)
            raise RuntimeError("consumer bug")

    clock = Clock()
    group = ReceiverGroup(clock)
    rec = Broken()
    r = StreamReceiver("s", rec, clock)
    group.add(r)
    src = Source(50)
    play(r, clock, in_order(src), group=group, tick=0.1)
    assert np.array_equal(rec.audio, src.decoded())


# -- properties ----------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.data())
def test_output_length_is_the_span_sent(data):
    count = data.draw(st.integers(5, 80))
    src = Source(count, seq=data.draw(st.integers(0, 65535)), ts=data.draw(st.integers(0, 2**32 - 1)))
    lost = data.draw(st.sets(st.integers(1, count - 2), max_size=count // 3))
    schedule = []
    for i in range(count):
        if i in lost:
            continue
        delay = data.draw(st.sampled_from([0.0, 0.0, 0.005, 0.015, 0.035]))
        schedule.append((i * 0.02 + delay, src.packet(i)))
        if data.draw(st.integers(0, 9)) == 0:  # a duplicate, up to 100 ms later
            schedule.append((i * 0.02 + data.draw(st.floats(0, 0.1)), src.packet(i)))
    use_group = data.draw(st.booleans())
    clock = Clock()
    rec = Recorder()
    r = StreamReceiver("s", rec, clock)
    group = None
    if use_group:
        group = ReceiverGroup(clock)
        group.add(r)
    play(r, clock, schedule, group=group, tick=data.draw(st.sampled_from([0.02, 0.1])))
    assert abs(len(rec.audio) - count * SPP) <= SPP
    # Whatever was played is the right audio in the right place.
    out = rec.audio
    if len(out) == count * SPP:
        expected = src.decoded()
        for i in range(count):
            chunk = out[i * SPP:(i + 1) * SPP]
            assert np.array_equal(chunk, expected[i * SPP:(i + 1) * SPP]) or not chunk.any()


def test_loss_jitter_and_reordering_keep_a_minute_within_20_ms():
    """5% loss, 20 ms jitter, 2% reordering, one minute of audio."""
    count = 3000
    src = Source(count, seq=60000)
    rng = random.Random(2024)
    schedule = []
    dropped = 0
    for i in range(count):
        if rng.random() < 0.05:
            dropped += 1
            continue
        at = i * 0.02 + 0.03 + max(-0.03, rng.gauss(0, 0.02))
        if rng.random() < 0.02:
            at += 0.03  # overtaken by the next packet
        schedule.append((at, src.packet(i)))
    clock = Clock()
    group = ReceiverGroup(clock)
    rec = Recorder()
    r = StreamReceiver("s", rec, clock)
    group.add(r)
    play(r, clock, schedule, group=group, tick=0.1)
    assert abs(len(rec.audio) - count * SPP) <= 160
    s = r.stats()
    assert dropped > 100 and s["lost"] == dropped + s["late"]
    assert s["packets"] == count - dropped
    assert s["jitter_ms"] > 5


# -- G.729 -------------------------------------------------------------------

g729 = pytest.mark.skipif(not codecs.g729_available(), reason="libbcg729 is not installed")


@g729
def test_g729_through_fast_path_and_loss():
    encoder = codecs.make_encoder("G729")
    pcm = (np.sin(np.arange(8000 * 2) * 0.05) * 6000).astype(np.int16)
    payloads = [encoder.encode(pcm[i:i + 160]) for i in range(0, len(pcm), 160)]
    clock = Clock()
    group = ReceiverGroup(clock)
    rec = Recorder()
    r = StreamReceiver("s", rec, clock, codec="G729")
    group.add(r)
    schedule = [(i * 0.02, build_rtp(18, 100 + i, 5000 + 160 * i, 9, p))
                for i, p in enumerate(payloads) if i != 40]
    play(r, clock, schedule, group=group, tick=0.1)
    reference = codecs.make_decoder("G729")
    expected_head = reference.decode_many(payloads[:40])
    out = rec.audio
    assert len(out) == len(payloads) * 160
    assert np.array_equal(out[:40 * 160], expected_head)
    assert r.stats()["lost"] == 1
    assert r._fast_count > 50


@g729
def test_g729_annex_b_sid_is_silence_until_speech_resumes():
    encoder = codecs.make_encoder("G729")
    speech = encoder.encode((np.sin(np.arange(1600) * 0.05) * 6000).astype(np.int16))
    r, rec, clock = make("G729")
    schedule = [(i * 0.02, build_rtp(18, i, 160 * i, 9, speech[i * 20:(i + 1) * 20])) for i in range(10)]
    # A SID frame ends a payload; nothing is sent for 500 ms afterwards.
    schedule.append((0.2, build_rtp(18, 10, 1600, 9, speech[:10] + b"\x12\x34")))
    schedule.append((0.7, build_rtp(18, 11, 1600 + 4000, 9, speech[:20], marker=True)))
    play(r, clock, schedule)
    assert len(rec.audio) == 1600 + 4000 + 160
    assert not rec.audio[1680:5600].any()
    assert r.stats()["lost"] == 0


def test_renegotiated_codec_and_payload_types():
    r, rec, clock = make()
    a = Source(10, codec="PCMU", seed=1)
    b = Source(10, codec="PCMA", seq=a.seq + 10, ts=a.ts + 1600, ssrc=a.ssrc, seed=2)
    play(r, clock, in_order(a), end=False)
    r.renegotiate("PCMA", dtmf_payload_type=-1)
    schedule = in_order(b)
    schedule.append((0.05, build_rtp(DTMF_PT, 1, 2, a.ssrc, _event(1, True, 100))))
    play(r, clock, schedule)
    assert np.array_equal(rec.audio, np.concatenate([a.decoded(), b.decoded()]))
    s = r.stats()
    assert (s["unknown_payload_type"], s["dtmf_events"], s["lost"]) == (1, 0, 0)


# -- wideband: G.722 (16 kHz audio on an 8 kHz clock) and Opus (48 kHz) ---------------

needs_g722 = pytest.mark.skipif(codecs.unavailable_reason("G722") is not None,
                                reason=str(codecs.unavailable_reason("G722")))
needs_opus = pytest.mark.skipif(codecs.unavailable_reason("OPUS") is not None,
                                reason=str(codecs.unavailable_reason("OPUS")))


class RateRecorder(Recorder):
    def __init__(self):
        super().__init__()
        self.rates = []

    def pcm(self, stream, position, samples, rate=8000):
        if self.rates and rate != self.rates[-1]:
            # A rate change converts the position: the same time in new samples.
            assert position == self.end * rate // self.rates[-1]
            self.end = position
        super().pcm(stream, position, samples, rate)
        self.rates.append(rate)


def _g722_packets(count, lose=()):
    encoder = codecs.make_encoder("G722")
    pcm = noise(count * 320, seed=7)
    payloads = [encoder.encode(pcm[i * 320:(i + 1) * 320]) for i in range(count)]
    packets = [build_rtp(9, 100 + i, 8000 + i * 160, 0xABCD, payloads[i])
               for i in range(count) if i not in lose]
    return payloads, packets


@needs_g722
def test_g722_is_handed_up_at_16_khz_and_a_loss_keeps_the_timeline():
    clock, out = Clock(), RateRecorder()
    r = StreamReceiver("s", out, clock, codec="G722")
    payloads, packets = _g722_packets(20, lose={5})
    for data in packets:
        r.datagram_received(data)
        clock.advance(0.02)
    r.end()
    assert set(out.rates) == {16000}
    assert len(out.audio) == 20 * 320            # the lost packet filled: time stays true
    assert r.stats()["audio_ms"] == 400 and r.stats()["rate"] == 16000
    # The audio before the loss is the decoder's, sample for sample.
    reference = codecs.make_decoder("G722")
    expected = np.concatenate([reference.decode(p) for p in payloads[:5]])
    assert np.array_equal(out.audio[:5 * 320], expected)


@needs_opus
def test_opus_is_handed_up_at_48_khz_on_its_own_payload_type():
    clock, out = Clock(), RateRecorder()
    r = StreamReceiver("s", out, clock, codec="OPUS", payload_type=111)
    encoder = codecs.make_encoder("OPUS")
    pcm = noise(10 * 960, seed=3)
    payloads = [encoder.encode(pcm[i * 960:(i + 1) * 960]) for i in range(10)]
    for i, p in enumerate(payloads):
        r.datagram_received(build_rtp(111, 7 + i, 1000 + i * 960, 0x5151, p))
        clock.advance(0.02)
    r.end()
    reference = codecs.make_decoder("OPUS", 111)
    assert set(out.rates) == {48000}
    assert np.array_equal(out.audio, np.concatenate([reference.decode(p) for p in payloads]))
    with pytest.raises(ValueError, match="payload type"):
        StreamReceiver("s", out, clock, codec="OPUS")


@needs_g722
def test_a_codec_switch_to_a_wider_codec_keeps_the_stream_and_its_time():
    clock, out = Clock(), RateRecorder()
    r = StreamReceiver("s", out, clock, codec="PCMU")
    source = Source(25)
    for i in range(25):
        r.datagram_received(source.packet(i))
        clock.advance(0.02)
    r.renegotiate(codec="G722", payload_type=9)
    _, packets = _g722_packets(25)
    for data in packets:
        r.datagram_received(data)
        clock.advance(0.02)
    r.end()
    narrow = sum(1 for rate in out.rates if rate == 8000)
    assert out.rates[:narrow] == [8000] * narrow and set(out.rates[narrow:]) == {16000}
    # 0.5 s at 8 kHz, then (converted to 16 kHz positions) 0.5 s more.
    assert r.position >= 16000 and abs(r.stats()["audio_ms"] - 1000) <= 40
