"""The SIPREC call simulator (siprecd-src) against a real siprecd daemon.

Two daemons serve these tests: ``srs`` with default settings and TLS on,
and ``capture_srs``, which allows one call at a time, takes PCMU only,
picks the Call-ID as guid, ends calls after one second, and advertises
127.0.0.2 as its media address over a two-stream port range. The tests
listen on 127.0.0.2 at those ports, so what the simulator puts on the
wire can be read back packet by packet (the daemon's own RTP sockets, on
127.0.0.1, are left alone).

Calls run at 20x real time; waits are on daemon log lines and Deferreds,
with bounded timeouts.
"""

import json
import random
import re
import socket
import struct
import subprocess
import sys
import wave

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import protocol

from harness.daemon import Daemon, free_port, write_config
from siprecd.media.codecs import g729_available, ulaw_encode
from siprecd.simulator import CallSpec, Impairments, Target, place_calls, prepare
from siprecd.simulator import rtp
from siprecd.simulator.invite import FLAVOURS
from siprecd.simulator.wav import WavError, read_wav, write_wav
from siprecd.tls import make_self_signed

SPEED = 20
SECONDS = 2.5
FRAMES = int(SECONDS / rtp.FRAME_SECONDS)        # 125 packets of 20 ms
PCMU_PACKET = 12 + 160


def _no_tracebacks(daemon):
    assert not [line for line in daemon.lines if "Traceback" in line or "Unhandled" in line]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(1)
    t = np.arange(int(SECONDS * 8000)) / 8000
    customer = (np.sin(2 * np.pi * 300 * t) * 8000 + rng.normal(0, 800, len(t))).astype(np.int16)
    agent = (np.sin(2 * np.pi * 523 * t) * 9000).astype(np.int16)
    return write_wav(tmp / "customer.wav", customer), write_wav(tmp / "agent.wav", agent)


@pytest.fixture(scope="module")
def srs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srs")
    cert, key = make_self_signed("siprecd.test", ("127.0.0.1",))
    (tmp / "sip.crt").write_bytes(cert)
    (tmp / "sip.key").write_bytes(key)
    tls_port = free_port()
    path, cfg = write_config(tmp, sip={"tls": {
        "enabled": True, "host": "127.0.0.1", "port": tls_port,
        "certificate": str(tmp / "sip.crt"), "private_key": str(tmp / "sip.key")}})
    daemon = Daemon(path).start()
    daemon.ports = {"udp": cfg["sip"]["udp"]["port"], "tcp": cfg["sip"]["tcp"]["port"],
                    "tls": tls_port}
    daemon.ca = str(tmp / "sip.crt")
    yield from _running(daemon)


def _running(daemon):
    try:
        daemon.wait_ready()
        yield daemon
        code, _ = daemon.terminate()
        assert code == 0
        _no_tracebacks(daemon)
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def capture_srs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    base = _free_media_block()
    path, cfg = write_config(
        tmp,
        sip={"max_calls": 1, "max_call_duration": "1s", "guid_sources": ["call-id"]},
        # Four RTP/RTCP pairs: a call's two pairs may still be closing when
        # the next INVITE comes (sockets close on the next reactor turn).
        media={"advertised_host": "127.0.0.2", "port_min": base, "port_max": base + 7,
               "port_quarantine": 0, "codecs": ["PCMU"]},
    )
    daemon = Daemon(path).start()
    daemon.port = cfg["sip"]["udp"]["port"]
    daemon.media_ports = (base, base + 2, base + 4, base + 6)
    yield from _running(daemon)


def _free_media_block():
    """An even port P with P..P+7 free for UDP (four RTP/RTCP pairs)."""
    for _ in range(100):
        base = random.randrange(30000, 39000, 2)
        sockets = []
        try:
            for host in ("127.0.0.1", "127.0.0.2"):
                for port in range(base, base + 8):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets.append(s)
                    s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free block of 4 UDP ports on 127.0.0.2")


def _descents(seqs):
    """How many packets arrived after one with a later sequence number (mod 2**16)."""
    return sum(((b - a) & 0xFFFF) > 0x8000 for a, b in zip(seqs, seqs[1:]))


class _Capture(protocol.DatagramProtocol):
    def __init__(self):
        self.packets = []

    def datagramReceived(self, data, addr):
        self.packets.append(data)


def _listen_media(reactor, ports):
    """Capture what arrives at the SRS's advertised RTP ports: {port: capture}."""
    captures = {p: _Capture() for p in ports}
    listening = [reactor.listenUDP(p, c, interface="127.0.0.2") for p, c in captures.items()]
    return captures, listening


def _captured(captures, stream):
    """The capture of what *stream* sent, found by the address the SRS answered."""
    host, port = stream.destination.rsplit(":", 1)
    assert host == "127.0.0.2"
    return captures[int(port)].packets


def _rtp(data):
    first, second, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
    return {"marker": bool(second & 0x80), "pt": second & 0x7F, "seq": seq, "ts": ts,
            "ssrc": ssrc, "payload": data[12:]}


def _run(reactor, target, specs, **kw):
    kw.setdefault("speed", SPEED)
    kw.setdefault("answer_timeout", 10.0)
    d = place_calls(reactor, target, specs, **kw)
    return d.addTimeout(60, reactor)


# -- against the default daemon --------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest_twisted.inlineCallbacks
def test_one_call_per_transport(srs, audio, transport):
    from twisted.internet import reactor

    target = Target("127.0.0.1", srs.ports[transport], transport,
                    ca_file=srs.ca if transport == "tls" else None)
    summary = yield _run(reactor, target, [CallSpec(*audio)], seed=1)
    assert summary.ok, summary.format()
    (call,) = summary.calls
    assert call.status == 200 and call.bye_status == 200 and call.ended_by == "src"
    assert [s.label for s in call.streams] == ["1", "2"]
    for stream in call.streams:
        assert stream.packets == stream.audio_packets == FRAMES
        assert stream.bytes == FRAMES * PCMU_PACKET
        assert stream.destination.startswith("127.0.0.1:")
    srs.wait_for(rf"recording session offered: guid {call.guid} .*\(2 stream\(s\)\)", timeout=10)
    srs.wait_for(rf"recording session ended: guid {call.guid} \(bye from SRC\)", timeout=10)
    assert summary.format().endswith("result: OK")


@pytest.mark.parametrize("codec, payload", [("PCMA", 160), ("G729", 20)])
@pytest_twisted.inlineCallbacks
def test_other_codecs(srs, audio, codec, payload):
    from twisted.internet import reactor

    if codec == "G729" and not g729_available():
        pytest.skip("libbcg729 is not installed")
    target = Target("127.0.0.1", srs.ports["udp"], "udp")
    summary = yield _run(reactor, target, [CallSpec(*audio, codec=codec)])
    assert summary.ok, summary.format()
    for stream in summary.calls[0].streams:
        assert stream.codec == codec and stream.bytes == FRAMES * (12 + payload)


_SOURCE_OF = {
    "rfc7865": ("metadata-session", r"[0-9a-f]{32}"),
    "ribbon": ("metadata-session", r"[0-9a-f]{32}"),
    "cisco": ("cisco-guid", r"[0-9]{10}(-[0-9]{10}){3}"),
    "oracle": ("oracle-ucid", r"[0-9]{20}"),
    "audiocodes": ("audiocodes-ucid", r"[0-9]{20}"),
    "avaya-sbce": ("avaya-uui", r"[0-9]{20}"),
    "genesys": ("genesys-uuid", r"[0-9A-F]{32}"),
    "broadworks": ("broadworks-tracking-id", r"[0-9]{1,7}:1"),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest_twisted.inlineCallbacks
def test_each_vendor_flavour_is_answered_with_the_expected_guid(srs, audio, flavour):
    from twisted.internet import reactor

    target = Target("127.0.0.1", srs.ports["tcp"], "tcp")
    summary = yield _run(reactor, target, [CallSpec(*audio, flavour=flavour, duration=0.5)])
    assert summary.ok, summary.format()
    (call,) = summary.calls
    source, shape = _SOURCE_OF[flavour]
    assert call.guid_source == source and re.fullmatch(shape, call.guid), call.guid
    srs.wait_for(rf"recording session offered: guid {re.escape(call.guid)} ", timeout=10)


@pytest.mark.parametrize("style, source", [
    ("avaya-uui", "avaya-uui"), ("x-ucid", "x-ucid"), ("x-isr-ucid", "x-isr-ucid"),
    ("cisco-guid", "cisco-guid"), ("genesys", "genesys-uuid"), ("session-id", "metadata-session"),
])
@pytest_twisted.inlineCallbacks
def test_guid_styles(srs, audio, style, source):
    from twisted.internet import reactor

    target = Target("127.0.0.1", srs.ports["udp"], "udp")
    summary = yield _run(reactor, target, [CallSpec(*audio, guid_style=style, duration=0.5)])
    assert summary.ok, summary.format()
    (call,) = summary.calls
    assert call.guid_source == source
    srs.wait_for(rf"recording session offered: guid {call.guid} ", timeout=10)


@pytest_twisted.inlineCallbacks
def test_several_concurrent_calls(srs, audio):
    from twisted.internet import reactor

    started = []
    specs = [CallSpec(*audio, flavour=f) for f in ("rfc7865", "avaya-sbce", "cisco")] * 2
    summary = yield _run(reactor, Target("127.0.0.1", srs.ports["tcp"], "tcp"), specs,
                         concurrency=3, rate=50, on_call_done=started.append)
    assert summary.ok, summary.format()
    assert len(started) == 6 and summary.totals()["clean"] == 6
    assert len({c.guid for c in summary.calls}) == 6
    assert len({c.call_id for c in summary.calls}) == 6
    assert summary.totals()["packets"] == 6 * 2 * FRAMES
    for call in summary.calls:
        srs.wait_for(rf"recording session ended: guid {call.guid} \(bye from SRC\)", timeout=10)

    def line_of(what, call):
        return next(i for i, line in enumerate(srs.lines)
                    if f"recording session {what}: guid {call.guid} " in line)

    # Three at a time: the third call was offered before the first ended.
    assert line_of("offered", summary.calls[2]) < line_of("ended", summary.calls[0])


@pytest_twisted.inlineCallbacks
def test_tls_with_the_wrong_ca_is_a_clear_failure(srs, audio, tmp_path):
    from twisted.internet import reactor

    other, _ = make_self_signed("someone.else", ("127.0.0.1",))
    (tmp_path / "other.crt").write_bytes(other)
    target = Target("127.0.0.1", srs.ports["tls"], "tls", ca_file=str(tmp_path / "other.crt"))
    summary = yield _run(reactor, target, [CallSpec(*audio)])
    assert not summary.ok
    (problem,) = summary.calls[0].problems
    assert f"cannot connect to 127.0.0.1:{srs.ports['tls']} over TLS" in problem
    assert "certificate verify failed" in problem
    # --insecure takes the same certificate without checking it.
    insecure = Target("127.0.0.1", srs.ports["tls"], "tls", insecure=True)
    summary = yield _run(reactor, insecure, [CallSpec(*audio, duration=0.5)])
    assert summary.ok, summary.format()


@pytest_twisted.inlineCallbacks
def test_no_answer_times_out_after_udp_retransmissions(audio):
    from twisted.internet import reactor

    silent = _Capture()
    port = reactor.listenUDP(0, silent, interface="127.0.0.1")
    try:
        target = Target("127.0.0.1", port.getHost().port, "udp")
        summary = yield _run(reactor, target, [CallSpec(*audio)], answer_timeout=1.2)
    finally:
        yield port.stopListening()
    (call,) = summary.calls
    assert not call.answered and call.outcome == "timeout"
    assert "no final answer to the INVITE within 1.2 s" in call.problems[0]
    invites = [p for p in silent.packets if p.startswith(b"INVITE ")]
    # Timer A: sent at 0, 0.5 and 1.5 s... cut short by the 1.2 s timeout.
    assert len(invites) == 2 and invites[0] == invites[1]
    assert "result: FAILED" in summary.format()


# -- what goes on the wire ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_hold_and_dtmf_on_the_wire(capture_srs, audio):
    from twisted.internet import reactor

    captures, listening = _listen_media(reactor, capture_srs.media_ports)
    try:
        spec = CallSpec(*audio, hold=(0.5, 0.4), dtmf=[(1.2, "5#")], dtmf_duration=0.1,
                        guid_style="call-id")
        summary = yield _run(reactor, Target("127.0.0.1", capture_srs.port), [spec],
                             guid_order=["call-id"])
    finally:
        for p in listening:
            yield p.stopListening()
    assert summary.ok, summary.format()
    (call,) = summary.calls
    assert call.hold == [("hold", 200), ("resume", 200)]
    assert call.guid == call.call_id and call.guid_source == "call-id"  # as this SRS is set up
    capture_srs.wait_for(rf"recording session offered: guid {re.escape(call.guid)} ", timeout=10)
    capture_srs.wait_for(rf"recording session updated: guid {re.escape(call.guid)}", timeout=10)

    customer, agent = call.streams
    # Each digit: 5 packets of 20 ms, the last one (E bit) sent 3 times.
    assert customer.dtmf_packets == 2 * 7 and customer.dtmf_digits == "5#"
    assert customer.audio_packets == FRAMES - 2 * 7 and agent.audio_packets == FRAMES
    assert agent.dtmf_packets == 0

    sent = [_rtp(p) for p in _captured(captures, customer)]
    assert len(sent) == customer.packets
    assert [p["seq"] for p in sent] == [(sent[0]["seq"] + i) & 0xFFFF for i in range(len(sent))]
    assert len({p["ssrc"] for p in sent}) == 1
    ts0 = sent[0]["ts"]
    # Hold: nothing from 0.5 s for 0.4 s; the timestamp keeps the call's time.
    audio_ts = [(p["ts"] - ts0) & 0xFFFFFFFF for p in sent if p["pt"] == 0]
    assert 25 * 160 not in audio_ts and 24 * 160 in audio_ts and 45 * 160 in audio_ts
    after_hold = next(p for p in sent if p["pt"] == 0 and (p["ts"] - ts0) & 0xFFFFFFFF == 45 * 160)
    assert after_hold["marker"] and sent[0]["marker"]

    events = [p for p in sent if p["pt"] == 101]
    for i, digit in enumerate((5, 11)):
        packets = events[7 * i:7 * i + 7]
        start_ts = (60 + 12 * i) * 160  # 1.2 s, then 7 slots + 5 of gap later
        assert {(p["ts"] - ts0) & 0xFFFFFFFF for p in packets} == {start_ts}
        fields = [struct.unpack("!BBH", p["payload"]) for p in packets]
        assert [f[0] for f in fields] == [digit] * 7
        assert [f[2] for f in fields] == [160, 320, 480, 640, 800, 800, 800]
        assert [bool(f[1] & 0x80) for f in fields] == [False] * 4 + [True] * 3
        assert [p["marker"] for p in packets] == [True] + [False] * 6
    # No audio while a digit plays.
    assert (60 * 160) not in audio_ts and (66 * 160) not in audio_ts and (67 * 160) in audio_ts
    assert len(_captured(captures, agent)) == agent.packets == FRAMES
    # The customer's file on the first m-line, the agent's on the second, µ-law encoded.
    for stream, wav in zip(call.streams, audio):
        first = _rtp(_captured(captures, stream)[0])["payload"]
        assert first == ulaw_encode(read_wav(wav)[:160])


@pytest_twisted.inlineCallbacks
def test_impairment_counts_follow_the_seed(capture_srs, audio):
    from twisted.internet import reactor

    spec = CallSpec(*audio, impairments=Impairments(loss=10, reorder=5))
    runs = []
    for seed in (11, 11, 12):
        captures, listening = _listen_media(reactor, capture_srs.media_ports)
        try:
            summary = yield _run(reactor, Target("127.0.0.1", capture_srs.port), [spec], seed=seed)
        finally:
            for p in listening:
                yield p.stopListening()
        assert summary.ok, summary.format()
        assert summary.seed == seed
        streams = summary.calls[0].streams
        for stream in streams:
            i = stream.impairments
            seqs = [_rtp(p)["seq"] for p in _captured(captures, stream)]
            # What arrived is what the counters say was sent, lost and swapped.
            assert len(seqs) == stream.packets == FRAMES - i.lost
            assert i.planned == FRAMES and i.lost > 0 and i.reordered > 0
            assert _descents(seqs) == i.reordered
        runs.append([(s.impairments.lost, s.impairments.reordered, s.packets) for s in streams])
        assert f"seed {seed}" in summary.format()
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest_twisted.inlineCallbacks
def test_over_the_call_limit_gets_503(capture_srs, audio):
    from twisted.internet import reactor

    summary = yield _run(reactor, Target("127.0.0.1", capture_srs.port),
                         [CallSpec(*audio), CallSpec(*audio)], concurrency=2)
    assert not summary.ok
    answered = [c for c in summary.calls if c.answered]
    refused = [c for c in summary.calls if not c.answered]
    assert len(answered) == 1 and answered[0].clean
    assert len(refused) == 1 and refused[0].status == 503
    assert "Retry-After" in refused[0].detail
    text = summary.format()
    assert "FAILED  503 Too Many Calls" in text and "at its call limit" in text
    assert "1 answered, 1 ended cleanly, 1 failed (503 x1)" in text


@pytest_twisted.inlineCallbacks
def test_srs_hanging_up_is_answered_and_reported(capture_srs, audio):
    from twisted.internet import reactor

    # Real time, 3 s of audio: the SRS's max_call_duration (1 s) ends it first.
    summary = yield _run(reactor, Target("127.0.0.1", capture_srs.port, "tcp"),
                         [CallSpec(*audio, duration=3.0)], speed=1.0, guid_order=["call-id"])
    (call,) = summary.calls
    assert call.answered and call.ended_by == "srs" and not summary.ok
    assert 0.5 < call.call_seconds < 2.5
    assert "the SRS ended the call with a BYE" in call.problems[0]
    capture_srs.wait_for(
        rf"recording session ended: guid {re.escape(call.guid)} \(maximum call length\)", timeout=10)


# -- the command line ---------------------------------------------------------------


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "siprecd.simulator.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_prints_the_summary_and_exits_0(srs, audio):
    customer, agent = audio
    result = _cli(f"127.0.0.1:{srs.ports['tcp']}", "-t", "tcp", "--customer", str(customer),
                  "--agent", str(agent), "--speed", "20", "--flavour", "cisco", "-n", "2",
                  "--concurrency", "2", "--loss", "3", "--seed", "5", "--rtcp")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "result: OK"
    assert any("2 answered, 2 ended cleanly, 0 failed" in line for line in lines)
    assert any("impairments: loss 3%, jitter 0 ms, reorder 0%" in line and "seed 5" in line
               for line in lines)
    for line in lines:
        if line.startswith("call "):
            guid = line.split("guid ")[1].split()[0]
            srs.wait_for(rf"recording session offered: guid {guid} ", timeout=10)
    assert "call 2/2 done: ok" in result.stderr


def test_cli_json_output(srs):
    result = _cli(f"127.0.0.1:{srs.ports['udp']}", "--speed", "20", "--duration", "0.4",
                  "--dtmf", "0.1:1", "--json", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["totals"]["clean"] == 1 and data["totals"]["dtmf_packets"] == 7
    assert data["calls"][0]["streams"][0]["dtmf_digits"] == "1"
    assert result.stderr == ""


def test_cli_refused_codec_exits_1_with_a_clear_line(capture_srs):
    result = _cli(f"127.0.0.1:{capture_srs.port}", "--codec", "PCMA", "--speed", "20",
                  "--duration", "0.4")
    assert result.returncode == 1
    assert "FAILED  488 Not Acceptable Here" in result.stdout
    assert "the SRS refused the call: 488 Not Acceptable Here (offered PCMA)" in result.stdout
    assert "check the codec against its media.codecs" in result.stdout
    assert result.stdout.splitlines()[-1] == "result: FAILED"


def test_cli_usage_errors_exit_2(tmp_path):
    (tmp_path / "float.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad_wav = _cli("127.0.0.1:9", "--customer", str(tmp_path / "float.wav"))
    assert bad_wav.returncode == 2 and "float.wav" in bad_wav.stderr
    overlap = _cli("127.0.0.1:9", "--hold", "1:1", "--dtmf", "1.5:1")
    assert overlap.returncode == 2 and "falls in the hold" in overlap.stderr
    usage = _cli("127.0.0.1:9", "--codec", "GSM")
    assert usage.returncode == 2 and "usage: siprecd-src" in usage.stderr


# -- pieces without a network ------------------------------------------------------------


def test_wav_conversion(tmp_path):
    t = np.arange(16000) / 16000
    left = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    stereo = np.stack([left, left], axis=1)
    with wave.open(str(tmp_path / "s16k.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(stereo.astype("<i2").tobytes())
    samples = read_wav(tmp_path / "s16k.wav")
    assert samples.dtype == np.int16 and len(samples) == 8000
    spectrum = np.abs(np.fft.rfft(samples.astype(float)))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over 1 s
    with wave.open(str(tmp_path / "u8.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128, 255, 0]))
    assert read_wav(tmp_path / "u8.wav").tolist() == [0, 127 << 8, -128 << 8]
    with pytest.raises(WavError, match="no such file"):
        read_wav(tmp_path / "missing.wav")


def test_plan_and_impairments_are_pure_functions_of_the_seed():
    spec = CallSpec(duration=2.0, hold=(0.4, 0.2), dtmf=[(1.0, "9")])
    prepared = prepare(spec)
    assert prepared.slots == 100 + 10 and prepared.hold == (20, 10)
    plan = rtp.plan_stream(prepared.frames[0], payload_type=0, ssrc=1, first_seq=65530,
                           first_timestamp=2**32 - 160, hold=prepared.hold, dtmf=prepared.dtmf)
    assert [p.seq & 0xFFFF for p in plan] == [(65530 + i) & 0xFFFF for i in range(100)]
    assert [p.kind for p in plan].count("dtmf") == 7
    assert struct.unpack("!I", plan[1].data[4:8])[0] == 0  # the timestamp wraps
    imp = Impairments(loss=20, jitter_ms=30, reorder=10)
    a = rtp.impair(plan, imp, random.Random("x"))
    b = rtp.impair(plan, imp, random.Random("x"))
    assert a == b and a[1].lost + len(a[0]) == len(plan)
    assert max(t for t, _ in a[0]) <= 109 * rtp.FRAME_SECONDS + 0.030
    # Loss decisions do not depend on whether jitter is on.
    lossy = rtp.impair(plan, Impairments(loss=20), random.Random("x"))
    assert {p.seq for _, p in lossy[0]} == {p.seq for _, p in a[0]}


def test_rtcp_sender_report_layout():
    data = rtp.rtcp_bye(0x01020304, 1_700_000_000.5, 12345, 10, 1600, "src-test")
    v, pt, length, ssrc, msw, lsw, ts, packets, octets = struct.unpack("!BBHIIIIII", data[:28])
    assert (v, pt, length, ssrc) == (0x80, 200, 6, 0x01020304)
    assert msw == 1_700_000_000 + 2208988800 and lsw == 1 << 31
    assert (ts, packets, octets) == (12345, 10, 1600)
    sdes_len = struct.unpack("!H", data[30:32])[0]
    assert data[29] == 202 and len(data) == 28 + 4 * (sdes_len + 1) + 8
    assert data[-8:] == struct.pack("!BBHI", 0x81, 203, 1, 0x01020304)


@pytest_twisted.inlineCallbacks
def test_bad_arguments_fail_the_deferred():
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="no calls"):
        yield place_calls(reactor, Target("127.0.0.1", 9), [])
    with pytest.raises(ValueError, match="DTMF digit"):
        yield place_calls(reactor, Target("127.0.0.1", 9), [CallSpec(dtmf=[(1.0, "X")])])
    with pytest.raises(ValueError, match="flavour"):
        CallSpec(flavour="nortel")
