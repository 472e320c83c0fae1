"""Live call events follow conversations: every SIPREC session of one guid
(two sessions sharing a guid, a session with a third stream) through the
transcription service and the LiveHub, with real SQLite storage.

The recogniser is the FakeAsrBackend TEST DOUBLE (each loud stretch is a
word), so the utterances of each stream are known exactly.
"""

import json

import pytest_twisted

from siprecd.live import LiveHub
from siprecd.live.hub import Subscription
from test_live_partials import words_audio
from test_transcribe_service import (  # noqa: F401 (storage is a fixture)
    GUID, Line, fake_backend, make_service, make_session, offered, start, storage,
)


class Watcher:
    """A subscription to the call: every event the hub hands it, decoded."""

    def __init__(self, hub, guid=GUID):
        self.events = []
        hub.subscribe(Subscription(None, guid, self._deliver, lambda code, reason: None))

    def _deliver(self, event):
        self.events.append(json.loads(event.payload))

    def kinds(self):
        return [e["event"] for e in self.events]

    def of(self, kind):
        return [e for e in self.events if e["event"] == kind]


def live_service(storage):
    hub = LiveHub(None, isolation=False)
    service = make_service(storage, fake_backend(), on_utterance=(hub.final,),
                           on_partial=(hub.partial,), on_call_event=(hub.call_event,),
                           partial_interval=0.1,
                           partials_wanted=lambda guid, app, target: hub.wants(guid, app))
    return service, hub


@pytest_twisted.ensureDeferred
async def test_two_sessions_of_one_guid_are_one_live_conversation(storage):
    service, hub = live_service(storage)
    watcher = Watcher(hub)
    one = await offered(service, make_session("near@sbc.example"))
    two = await offered(service, make_session("far@sbc.example"))
    started = await start(service, language="en-US")
    Line(service, one, 0).play(words_audio(2))
    Line(service, two, 1).play(words_audio(3))
    # The first session ends: the conversation goes on.
    service.call_ended(one, "BYE from SRC")
    await service.drain()
    assert "call-ended" not in watcher.kinds()
    Line(service, two, 0).play(words_audio(2))
    service.call_ended(two, "BYE from SRC")
    await service.drain()
    kinds = watcher.kinds()
    assert kinds.count("call-started") == 1 and kinds[0] == "call-started"
    assert kinds.count("call-ended") == 1 and kinds[-1] == "call-ended"
    [streaming] = watcher.of("streaming-started")
    assert {s["callId"] for s in streaming["streams"]} == {"near@sbc.example",
                                                           "far@sbc.example"}
    assert sorted(s["streamId"] for s in streaming["streams"]) == sorted(
        s["streamId"] for s in started["streams"])
    assert [s["primary"] for s in streaming["streams"]].count(True) == 2
    # Every stream's finals, each after its partials.
    finals = watcher.of("final")
    assert len(finals) == 3
    listed = {s["streamId"] for s in streaming["streams"]}
    assert {f["streamId"] for f in finals} <= listed
    for final in finals:
        at = watcher.events.index(final)
        assert all(i < at for i, e in enumerate(watcher.events)
                   if e["event"] == "partial" and e["utteranceId"] == final["messageId"])
    assert len({e["utteranceId"] for e in watcher.of("partial")}) >= 3


@pytest_twisted.ensureDeferred
async def test_a_third_stream_is_listed_with_its_role_and_its_participant(storage):
    service, hub = live_service(storage)
    watcher = Watcher(hub)
    session = await offered(service, make_session(streams=3))
    await start(service, language="en-US")
    Line(service, session, 2).play(words_audio(2))
    service.call_ended(session, "BYE from SRC")
    await service.drain()
    [streaming] = watcher.of("streaming-started")
    assert len(streaming["streams"]) == 3
    [third] = [s for s in streaming["streams"] if not s["primary"]]
    [final] = watcher.of("final")
    assert final["streamId"] == third["streamId"]
    assert final["sender"]["role"] == third["role"]
    assert third["participant"]["aor"] == "sip:party3@cc.example.com"
    assert final["participant"] == third["participant"]
    partials = [p for p in watcher.of("partial") if p["utteranceId"] == final["messageId"]]
    assert partials and all(p["streamId"] == third["streamId"] for p in partials)
    assert all(p["participant"] == third["participant"] for p in partials)
