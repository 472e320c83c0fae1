"""Live transcripts through the whole daemon: twistd as a subprocess, the
real Korean Vosk model, a SIPREC call from the simulator (espeak-ng
speech), start-streaming over HTTPS, and a live WebSocket client.

A call in turns: partials arrive before the final of their utterance
(under its messageId), finals are what GET messages returns, and the
call's events come in order. The customer reads a card number (in Korean,
as espeak-ng says it): with redaction on (the default) no digit of it is
ever in a partial.
"""

import re

import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from harness.api import ApiClient, create_app
from harness.daemon import Daemon, write_config
from harness.live import LiveRecorder, dialogue_plans
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE

CARD = "4111 1111 1111 1111"
TURNS = (
    f"제 카드 번호는 {CARD} 입니다",
    "네 확인해 보겠습니다 잠시만 기다려 주세요",
    f"다시 말씀드리면 {CARD} 입니다",
)


def text_of(event):
    return " ".join(u["text"] for u in event["autotranscribeResponse"]["utterance"])


@pytest_twisted.ensureDeferred
async def test_live_transcript_of_a_call_through_the_daemon(tmp_path):
    path, cfg = write_config(tmp_path)
    daemon = Daemon(path).start()
    placed = None
    try:
        await threads.deferToThread(daemon.wait_ready, 120)
        api_id, secret = await threads.deferToThread(create_app, path)
        cafile = tmp_path / "state" / "tls" / "api-selfsigned.crt"
        api = ApiClient(cfg["api"]["port"], cafile, api_id, secret)
        plans = dialogue_plans(tmp_path, TURNS, lead=1.5, gap=1.0)
        recorder = await LiveRecorder().connect(reactor, cfg["api"]["port"], api_id, secret,
                                                cafile)
        answered = defer.Deferred()
        seconds = len(plans["customer"].audio) / 8000 + 1.0
        placed = place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"]),
            [CallSpec(customer=plans["customer"].audio, agent=plans["agent"].audio,
                      duration=seconds)],
            media_host="127.0.0.1", local_host="127.0.0.1",
            on_call_answered=lambda result: answered.callback(result.guid))
        guid = await answered.addTimeout(30, reactor)
        started = await threads.deferToThread(
            api.start, guid, "cust-1", "agent-1", autotranscribeParams={"language": KO_LANGUAGE})
        assert started.status == 200, started.body
        await placed
        placed = None
        for _ in range(1200):      # at most 120 s for the last finals and the end
            if any(e["event"] == "call-ended" for _, e in recorder.of(guid)):
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        events = [e for _, e in recorder.of(guid)]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "streaming-started" and kinds[-1] == "call-ended"
        finals = [e for e in events if e["event"] == "final"]
        partials = [e for e in events if e["event"] == "partial"]
        assert finals and partials
        # The finals are what is stored, in order.
        stored = await threads.deferToThread(
            api.get, f"/conversation/v1/conversation/messages?externalId={guid}")
        assert sorted((m["messageId"], m["sequence"]) for m in stored.body["items"]) == sorted(
            (f["messageId"], f["sequence"]) for f in finals)
        # Every partial before the final of its utterance.
        position = {f["messageId"]: kinds.index("final", 0) for f in finals}
        for final in finals:
            position[final["messageId"]] = events.index(final)
        for i, p in enumerate(events):
            if p["event"] == "partial" and p["utteranceId"] in position:
                assert i < position[p["utteranceId"]]
        # No digit of the card the customer read in any partial (the model
        # turns some sounds into bracketed digits, "[4]": masked too). A
        # final shows a lone digit (the policy of finals), never a group.
        for event in partials:
            assert not re.search("[14]", text_of(event)), text_of(event)
        for event in finals:
            assert not re.search("[0-9]{2}", text_of(event)), text_of(event)
        recorder.connection.close()
    finally:
        if placed is not None:
            placed.cancel()
        await threads.deferToThread(daemon.terminate)
