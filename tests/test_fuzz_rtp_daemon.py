"""Hostile datagrams at the RTP and RTCP ports of a call in progress on a
running daemon: the call goes on to its own end with both streams
transcribed, the daemon still answers OPTIONS, and nothing unhandled (no
traceback, no critical line) is logged."""

import random
import re
import socket
import struct

import pytest_twisted
from twisted.internet import reactor, threads

from harness import drills
from harness.api import ApiClient, create_app
from harness.daemon import write_config
from siprecd.media.rtp import build_rtp

CALL_SECONDS = 8.0
DATAGRAMS = 4000
RECEIVING = re.compile(r"receiving S?RTP.* for guid (\S+) stream (\S+) on port (\d+)")


def hostile_datagrams(count, seed):
    """Seeded: headers that lie (CSRC counts, extension and padding
    lengths past the end, versions), forged sequence numbers and
    timestamps, new SSRCs, telephone-events, random bytes, RTCP whose
    lengths and counts do not fit."""
    rnd = random.Random(seed)
    payload = lambda n: bytes(rnd.randrange(256) for _ in range(n))  # noqa: E731
    for n in range(count):
        kind = n % 6
        if kind == 0:
            b0 = rnd.choice([0x80, 0x8F, 0x9F, 0xBF, 0xA0, 0x40, 0xC0]) | rnd.randrange(16)
            data = struct.pack("!BBHII", b0, rnd.randrange(256), rnd.randrange(65536),
                               rnd.randrange(2**32), rnd.randrange(2**32))
            yield data + payload(rnd.randrange(0, 80)), "rtp"
        elif kind == 1:
            yield build_rtp(rnd.choice([0, 8, 18, 13, 101, 96]), rnd.randrange(65536),
                            rnd.randrange(2**32), rnd.randrange(4), payload(160),
                            marker=rnd.random() < 0.3), "rtp"
        elif kind == 2:
            yield build_rtp(101, rnd.randrange(65536), rnd.randrange(2**32), rnd.randrange(4),
                            payload(rnd.randrange(0, 12))), "rtp"
        elif kind == 3:
            yield payload(rnd.randrange(0, 1400)), rnd.choice(["rtp", "rtcp"])
        elif kind == 4:
            words = rnd.choice([0, 1, 6, 65535])
            yield struct.pack("!BBH", 0x80 | rnd.randrange(64), rnd.choice([200, 201, 203, 204]),
                              words) + payload(rnd.randrange(0, 60)), "rtcp"
        else:
            good = build_rtp(0, rnd.randrange(65536), rnd.randrange(2**32), 7, payload(160),
                             csrcs=(1, 2), extension=(0xBEDE, b"abcd"), padding=4)
            cut = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                cut[rnd.randrange(len(cut))] = rnd.randrange(256)
            yield bytes(cut[:rnd.randrange(1, len(cut) + 1)]), "rtp"


def blast(ports, count, seed):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for n, (data, kind) in enumerate(hostile_datagrams(count, seed)):
            port = ports[n % len(ports)] + (1 if kind == "rtcp" else 0)
            s.sendto(data, ("127.0.0.1", port))
    return count


@pytest_twisted.ensureDeferred
async def test_hostile_datagrams_at_a_live_call(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", drills.plugin_pythonpath(tmp_path / "plugins"))
    path, cfg = write_config(tmp_path, asr={"backend": "drill"}, media=drills.media_ports())
    daemon = drills.DrillDaemon(path).start()
    placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 60)
        api_id, secret = await threads.deferToThread(create_app, path)
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        guid, placed = await drills.place_call(reactor, cfg["sip"]["tcp"]["port"], CALL_SECONDS)
        started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
        assert started.status == 200, started.body
        lines = await threads.deferToThread(daemon.wait_for_count, RECEIVING.pattern, 2, 10)
        ports = [int(RECEIVING.search(line).group(3)) for line in lines]
        sent = await threads.deferToThread(blast, ports, DATAGRAMS, 1234)
        status = await threads.deferToThread(
            drills.sip_options, "127.0.0.1", cfg["sip"]["udp"]["port"])
        summary = await placed.addTimeout(CALL_SECONDS + 30, reactor)
        placed = None
        items = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
        code, _ = await threads.deferToThread(daemon.terminate, 30)
    finally:
        if placed is not None:
            placed.cancel()
        daemon.kill()
    assert sent == DATAGRAMS and status == 200 and code == 0
    (call,) = summary.calls
    assert call.answered and call.bye_status == 200 and not call.problems, summary.format()
    # Both streams were transcribed to the end: the real audio won over
    # the forged packets (new SSRCs, sequence and timestamp jumps).
    for role in ("customer", "agent"):
        ends = [m["end"] for m in items if m["sender"]["role"] == role]
        assert ends and max(ends) >= (CALL_SECONDS - 3) * 1000, (role, items)
    bad = [line for line in daemon.lines if re.search(r"Traceback|Unhandled|#critical\]", line)]
    assert bad == []
