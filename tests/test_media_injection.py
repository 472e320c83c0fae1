"""Speech injected into a live call's RTP port from a foreign address, with
the default configuration, reaches no transcript.

The daemon runs as a subprocess with the real Korean Vosk model; the SBC
is the simulator (Korean speech on the customer's stream, silence on the
agent's); the attacker is a UDP socket on another loopback address that
learns the agent's RTP port (as anyone on the path could) and sends
Korean speech to it at the real pace, from a second after the call began
to its end. The agent's side of the transcript must stay empty.
"""

import re

import numpy as np
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import DatagramProtocol

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, write_config
from siprecd.media.codecs import ulaw_encode
from siprecd.media.rtp import build_rtp
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech

CALL_SECONDS = 24


class Injector(DatagramProtocol):
    """The attacker: PCMU speech, 20 ms a packet, paced by the reactor."""

    def __init__(self, samples, destination):
        encoded = ulaw_encode(samples)
        self.frames = [encoded[i:i + 160] for i in range(0, len(encoded) - 159, 160)]
        self.destination = destination
        self.sent = 0
        self.loop = None

    def start(self):
        self.loop = task.LoopingCall(self._send)
        self.loop.clock = reactor
        return self.loop.start(0.02)

    def _send(self):
        if self.sent >= len(self.frames):
            self.loop.stop()
            return
        packet = build_rtp(0, 1000 + self.sent, 50_000 + 160 * self.sent, 0x0BADBEEF,
                           self.frames[self.sent])
        self.transport.write(packet, self.destination)
        self.sent += 1


@pytest_twisted.ensureDeferred
async def test_speech_injected_from_another_address_reaches_no_transcript(tmp_path):
    path, cfg = write_config(tmp_path)
    daemon = Daemon(path).start()
    placed = injector_port = None
    try:
        await threads.deferToThread(daemon.wait_ready, 120)
        api_id, secret = await threads.deferToThread(create_app, path)
        api = ApiClient(cfg["api"]["port"], tmp_path / "state" / "tls" / "api-selfsigned.crt",
                        api_id, secret)
        said = korean_speech("안녕하세요 카드 번호를 알려 주세요", tmp_path / "customer.wav")
        customer = np.concatenate([said, np.zeros(12000, dtype=np.int16)])
        attack = korean_speech("계좌 번호는 일 이 삼 사 오 육 입니다", tmp_path / "attack.wav")
        attack = np.concatenate([attack, np.zeros(12000, dtype=np.int16)])
        attack = np.tile(attack, int(np.ceil((CALL_SECONDS - 4) * 8000 / len(attack))))
        answered = defer.Deferred()
        placed = place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"]),
            [CallSpec(customer=customer, agent=np.zeros(8000, dtype=np.int16),
                      duration=CALL_SECONDS)],
            media_host="127.0.0.1", local_host="127.0.0.1",
            on_call_answered=lambda result: answered.callback(result.guid))
        guid = await answered.addTimeout(30, reactor)
        started = await threads.deferToThread(
            api.start, guid, "cust-1", "agent-1", autotranscribeParams={"language": KO_LANGUAGE})
        assert started.status == 200, started.body
        line = await threads.deferToThread(
            daemon.wait_for, rf"receiving RTP for guid {guid} stream 2 on port \d+", 10)
        agent_port = int(re.search(r"on port (\d+)", line).group(1))

        injector = Injector(attack, ("127.0.0.1", agent_port))
        injector_port = reactor.listenUDP(0, injector, interface="127.0.0.2")
        await task.deferLater(reactor, 1.0, lambda: None)   # the SBC's packets come first
        sending = injector.start()
        summary = await placed.addTimeout(CALL_SECONDS + 30, reactor)
        placed = None
        await sending
        await threads.deferToThread(daemon.wait_for, rf"recording session ended: guid {guid}",
                                    30)
        messages = (await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")).body["items"]
    finally:
        if placed is not None:
            placed.cancel()
        if injector_port is not None:
            await injector_port.stopListening()
        daemon.kill()

    agent = [m["text"] for m in messages if m["sender"]["role"] == "agent"]
    customer_said = [m["text"] for m in messages if m["sender"]["role"] == "customer"]
    print(f"\ninjection: {injector.sent} packets ({injector.sent * 0.02:.0f} s of speech) sent "
          f"to the agent's port {agent_port} from 127.0.0.2; utterances injected: {len(agent)} "
          f"{agent!r}; customer utterances: {len(customer_said)}")
    assert summary.calls[0].answered
    assert injector.sent > 500
    assert customer_said, "the real speech was not transcribed"
    assert agent == []
