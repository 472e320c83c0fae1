"""Drill: the daemon is killed (SIGKILL) while an SBC streams a call to it
over UDP (so the SBC notices nothing), and started again.

Promise: the restarted node sends the SBC a BYE for the call it had (from
the dialog stored when the call was answered), in-dialog requests for it
are answered 481 at once, and no new call gets the killed call's RTP
ports while stale packets may still reach them: a stale stream that goes
on (an SBC that never got the BYE) puts no audio into a new call.
"""

import re
import socket
import time

import numpy as np
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import DatagramProtocol

from harness import drills
from harness.api import ApiClient, create_app
from harness.daemon import write_config
from siprecd.media.codecs import ulaw_encode
from siprecd.media.rtp import build_rtp
from siprecd.simulator import CallSpec, Target, place_calls

RECEIVING = r"receiving RTP for guid {guid} stream (\S+) on port (\d+)"


class StaleStream(DatagramProtocol):
    """An SBC that was never told: bursts of tone to the killed call's
    ports, 20 ms a packet, for as long as the drill lasts."""

    def __init__(self, ports):
        self.ports = ports
        encoded = ulaw_encode(drills.bursts(4.0, frequency=880.0))
        self.frames = [encoded[i:i + 160] for i in range(0, len(encoded) - 159, 160)]
        self.sent = 0
        self.loop = task.LoopingCall(self._send)
        self.loop.clock = reactor

    def _send(self):
        frame = self.frames[self.sent % len(self.frames)]
        for port in self.ports:
            packet = build_rtp(0, self.sent & 0xFFFF, 160 * self.sent, 0x57A1E000 + port, frame)
            self.transport.write(packet, ("127.0.0.1", port))
        self.sent += 1


def in_dialog_status(sip_port, call_id, deadline=5.0):
    """An INFO in the killed call's dialog; the status and seconds taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
        request = (f"INFO sip:srs@127.0.0.1:{sip_port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKorphan{local};rport\r\n"
                   f"From: <sip:src@127.0.0.1>;tag=gone\r\nTo: <sip:srs@127.0.0.1>;tag=old\r\n"
                   f"Call-ID: {call_id}\r\nCSeq: 900 INFO\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        started = time.monotonic()
        s.sendto(request, ("127.0.0.1", sip_port))
        s.settimeout(deadline)
        from siprecd.sip.message import parse_message

        return parse_message(s.recvfrom(65536)[0]).status, time.monotonic() - started


async def _ports_of(daemon, guid):
    lines = await threads.deferToThread(
        daemon.wait_for_count, RECEIVING.format(guid=re.escape(guid)), 2, 15)
    return {int(re.search(r"on port (\d+)", line).group(1)) for line in lines}


@pytest_twisted.ensureDeferred
async def test_sigkill_with_an_sbc_streaming_then_restart(tmp_path, asr_plugin):
    path, cfg = write_config(tmp_path, asr={"backend": "drill"}, media=drills.media_ports(),
                             logging={"level": "debug"})
    udp = cfg["sip"]["udp"]["port"]
    daemon = drills.DrillDaemon(path).start()
    stale_port = placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 60)
        api_id, secret = await threads.deferToThread(create_app, path)
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        guid, placed = await drills.place_call(reactor, udp, 90.0, transport="udp")
        old_ports = await _ports_of(daemon, guid)
        started = await threads.deferToThread(api.start, guid, "cust-1", "agent-1")
        assert started.status == 200, started.body
        await threads.deferToThread(daemon.wait_for_count,
                                    r"utterance \d+ of stream \S+ stored", 2, 30)
        daemon.proc.kill()
        daemon.proc.wait(10)
    except BaseException:
        daemon.kill()
        if placed is not None:
            placed.cancel()
        raise

    # The SBC goes on streaming; so does a stale one that will never stop.
    stale = StaleStream(sorted(old_ports | {p + 1 for p in old_ports}))
    stale_port = reactor.listenUDP(0, stale, interface="127.0.0.1")
    stale.loop.start(0.02)
    again = drills.DrillDaemon(path).start()
    second = None
    try:
        restarted = time.monotonic()
        await threads.deferToThread(again.wait_ready, 60)
        # The SBC is told: the simulator's call ends with the SRS's BYE.
        summary = await placed.addTimeout(30, reactor)
        placed = None
        bye_after = time.monotonic() - restarted
        first = summary.calls[0]
        bye_lines = await threads.deferToThread(
            again.wait_for_count, r"sent BYE for call \S+ .*node restarted", 1, 10)
        status, took = await threads.deferToThread(in_dialog_status, udp, first.call_id)

        # A new call, its agent silent, while the stale stream goes on.
        said = drills.bursts(12.0)
        answered = defer.Deferred()
        second = place_calls(
            reactor, Target("127.0.0.1", udp), [CallSpec(
                customer=said, agent=np.zeros(8000, dtype=np.int16), duration=12.0)],
            local_host="127.0.0.1", media_host="127.0.0.1", seed=2,
            on_call_answered=lambda r: answered.called or answered.callback(r.guid))
        new_guid = await answered.addTimeout(30, reactor)
        new_ports = await _ports_of(again, new_guid)
        started = await threads.deferToThread(api.start, new_guid, "cust-2", "agent-2")
        assert started.status == 200, started.body
        new_summary = await second.addTimeout(40, reactor)
        second = None
        await threads.deferToThread(
            again.wait_for, rf"recording session ended: guid {re.escape(new_guid)}", 30)
        messages = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={new_guid}")
        ).body["items"]
        held = again.matching(r"RTP port\(s\) were in use when this node last stopped")
        code, _ = await threads.deferToThread(again.terminate, 30)
    finally:
        stale.loop.stop()
        await stale_port.stopListening()
        for d in (placed, second):
            if d is not None:
                d.cancel()
        again.kill()

    agent = [m for m in messages if m["sender"]["role"] == "agent"]
    customer = [m for m in messages if m["sender"]["role"] == "customer"]
    drills.record(
        "SIGKILL with an SBC streaming over UDP, then restart",
        f"the restarted node sent {len(bye_lines)} BYE ('{bye_lines[0].split('] ', 1)[-1]}'); "
        f"the SBC's call ended by the SRS's BYE {bye_after:.1f}s after the restart began "
        f"(ended_by {first.ended_by}); an in-dialog INFO for it answered {status} in "
        f"{took * 1000:.0f} ms; the killed call's ports {sorted(old_ports)} held back "
        f"('{held[0].split('] ', 1)[-1] if held else 'not logged'}'), the next call got "
        f"{sorted(new_ports)}; a stale stream sent {stale.sent} packets to the old ports "
        f"meanwhile: {len(agent)} agent utterances in the new call (its agent was silent), "
        f"{len(customer)} customer utterances",
        "nothing reached another call")
    assert first.ended_by == "srs", first.problems
    assert len(bye_lines) == 1
    assert status == 481 and took < 1.0
    assert not new_ports & old_ports, (new_ports, old_ports)
    assert agent == [] and customer
    assert new_summary.calls[0].answered and code == 0
