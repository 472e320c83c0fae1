"""The live output without sockets: a client's session (replay exactly
once, back-pressure with a bounded queue) and the hub (who sees what)."""

import json
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.live.events import LiveEvent, encode, final_event
from siprecd.live.hub import FORBIDDEN_CLOSE, LiveHub, Subscription
from siprecd.live.request import MAX_AFTER, LiveRefused, LiveRequest
from siprecd.live.session import TOO_SLOW, LiveSession
from siprecd.storage.records import Message
from siprecd.transcribe.events import CallEvent, StreamInfo
from siprecd.transcribe.partials import LivePartial

GUID = "guid-1"


def message(sequence, stream="s1", guid=GUID, app="app-1"):
    return Message(id=f"{stream}-m{sequence}", stream_id=stream, text=f"words {sequence}",
                   start_ms=sequence * 1000, end_ms=sequence * 1000 + 500, created_ms=0,
                   sequence=sequence, guid=guid, leg_id="leg-1", role="customer",
                   external_id="cust-1", stream_params={"appId": app})


def partial(utterance_id, revision=1, stream="s1", guid=GUID, app="app-1", text="words"):
    return LivePartial(guid=guid, call_id="c1", leg_id="leg-1", stream_id=stream,
                       role="customer", external_id="cust-1", utterance_id=utterance_id,
                       revision=revision, start_ms=0, end_ms=100, text=text, created_ms=0,
                       app_id=app)


def call(kind, guid=GUID, app="app-1"):
    return CallEvent(kind, guid, "c1", 0, app_id=app, leg_id="leg-1",
                     streams=(StreamInfo("s1", "customer", "cust-1", "leg-1"),))


class Client:
    """What a session sent and how it was closed."""

    def __init__(self, **options):
        self.sent = []
        self.closed = None
        self.session = LiveSession(self.sent.append, self._close, **options)

    def _close(self, code, reason):
        self.closed = (code, reason)

    def events(self):
        return [json.loads(p) for p in self.sent]

    def final_sequences(self, stream="s1"):
        return [e["sequence"] for e in self.events()
                if e["event"] == "final" and e["streamId"] == stream]


def hello():
    return LiveEvent("subscribed", GUID, None, encode({"event": "subscribed"}))


# -- replay, exactly once ----------------------------------------------------------------


def test_the_finals_missed_then_the_held_ones_exactly_once():
    client = Client(positions={"s1": 2})
    session = client.session
    # Published while storage is being read: 4 and 5 are stored too.
    session.deliver(final_event(message(4)))
    session.deliver(LiveEvent("partial", GUID, "app-1", encode({"event": "partial"}),
                              stream_id="s1", utterance_id="s1-m5"))
    session.deliver(final_event(message(5)))
    session.deliver(final_event(message(6)))
    assert client.sent == []
    session.replayed([message(n) for n in range(1, 6)], then=[hello()])
    events = client.events()
    assert [e["event"] for e in events] == ["final"] * 3 + ["subscribed", "final"]
    assert client.final_sequences() == [3, 4, 5, 6]
    assert session.dropped_duplicates == 2
    # The body of a final is the transcript webhook's.
    assert events[0]["type"] == "transcript" and events[0]["messageId"] == "s1-m3"


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 30), stored=st.integers(0, 30), published_from=st.integers(1, 31),
       position=st.integers(0, 30))
def test_every_final_once_whatever_the_race(total, stored, published_from, position):
    """Finals 1..total of one stream: the first *stored* were in storage
    when it was read, those from *published_from* on were published live
    after the subscription (any that were published before it are in
    storage: they were stored first). The client had *position*."""
    stored = min(stored, total)
    position = min(position, total)
    published_from = min(published_from, stored + 1)
    client = Client(positions={"s1": position} if position else {}, replay=True)
    for n in range(published_from, stored + 1):
        client.session.deliver(final_event(message(n)))
    client.session.replayed([message(n) for n in range(1, stored + 1)])
    for n in range(stored + 1, total + 1):
        client.session.deliver(final_event(message(n)))
    assert client.final_sequences() == list(range(position + 1, total + 1))


def test_without_replay_only_live_events_after_subscribed():
    client = Client()
    client.session.deliver(final_event(message(7)))
    client.session.replayed([], then=[hello()])
    # Held until subscribed is sent: the client learns first what it follows.
    assert [e["event"] for e in client.events()] == ["subscribed", "final"]


# -- back-pressure -------------------------------------------------------------------------


def big_event(n, size=1000):
    return LiveEvent("partial", GUID, "app-1", b"x" * size, stream_id="s1",
                     utterance_id=f"u{n}")


def test_a_client_that_does_not_read_is_cut_off_with_a_reason_and_bounded_memory():
    client = Client(max_events=1000, max_bytes=10_000)
    session = client.session
    session.replayed([])
    session.deliver(big_event(0))
    assert len(client.sent) == 1
    session.pause()                      # the transport's buffer is full
    for n in range(1, 100):
        session.deliver(big_event(n))
    code, reason = client.closed
    assert code == TOO_SLOW and "too slow" in reason and "after=" in reason
    assert session.peak_bytes <= 10_000
    assert session.closed and len(client.sent) == 1
    session.resume()
    session.deliver(big_event(200))
    assert len(client.sent) == 1         # nothing more once cut off


def test_a_client_that_catches_up_gets_everything_in_order():
    client = Client(max_events=50, max_bytes=1 << 20)
    session = client.session
    session.replayed([])
    session.pause()
    for n in range(40):
        session.deliver(big_event(n, 10))
    assert client.sent == [] and client.closed is None
    session.resume()
    assert len(client.sent) == 40 and client.closed is None
    assert session.peak_bytes == 400


def test_too_many_events_cut_off_too():
    client = Client(max_events=10, max_bytes=1 << 20)
    client.session.replayed([])
    client.session.pause()
    for n in range(11):
        client.session.deliver(big_event(n, 10))
    assert client.closed[0] == TOO_SLOW


def test_a_replay_goes_at_the_pace_the_client_reads():
    client = Client(max_events=10, max_bytes=2000, replay=True)
    session = client.session
    sent = []

    def send(payload):
        sent.append(payload)
        if len(sent) % 3 == 0:
            session.pause()          # the transport fills after every third
    session.send = send
    session.replayed([message(n) for n in range(1, 101)])
    while session.paused:
        session.resume()
    assert client.closed is None
    assert [json.loads(p)["sequence"] for p in sent] == list(range(1, 101))


# -- the hub ---------------------------------------------------------------------------------


class Subscriber:
    def __init__(self, hub, app_id, guid=None):
        self.events = []
        self.revoked = None
        self.subscription = Subscription(app_id, guid, self.events.append, self._revoke)
        hub.subscribe(self.subscription)

    def _revoke(self, code, reason):
        self.revoked = (code, reason)

    def kinds(self):
        return [e.kind for e in self.events]


def test_an_app_sees_its_own_calls_and_a_call_subscriber_sees_that_call():
    hub = LiveHub(clock=None)
    mine = Subscriber(hub, "app-1")
    theirs = Subscriber(hub, "app-2")
    one_call = Subscriber(hub, "app-1", GUID)
    other_call = Subscriber(hub, "app-1", "guid-2")
    hub.call_event(call("call-started", app=None))
    hub.call_event(call("streaming-started"))
    hub.partial(partial("u1"))
    hub.final(message(1))
    hub.call_event(call("call-ended"))
    assert one_call.kinds() == ["call-started", "streaming-started", "partial", "final",
                                "call-ended"]
    # The app-wide view starts when the app's start-streaming does.
    assert mine.kinds() == ["streaming-started", "partial", "final", "call-ended"]
    assert theirs.kinds() == [] and other_call.kinds() == []


def test_without_isolation_an_app_sees_every_call():
    hub = LiveHub(clock=None, isolation=False)
    theirs = Subscriber(hub, "app-2")
    hub.call_event(call("call-started", app=None))
    hub.partial(partial("u1"))
    assert theirs.kinds() == ["call-started", "partial"]


def test_a_call_subscriber_of_another_app_is_cut_off_when_the_call_is_started():
    hub = LiveHub(clock=None)
    early = Subscriber(hub, "app-2", GUID)
    owner = Subscriber(hub, "app-1", GUID)
    hub.call_event(call("call-started", app=None))
    hub.call_event(call("streaming-started"))
    hub.final(message(1))
    assert early.revoked[0] == FORBIDDEN_CLOSE
    assert early.kinds() == ["call-started"]
    assert owner.kinds() == ["call-started", "streaming-started", "final"]


def test_partials_are_wanted_only_while_someone_would_get_them():
    hub = LiveHub(clock=None)
    assert not hub.wants(GUID, "app-1")
    s = Subscriber(hub, "app-1")
    assert hub.wants(GUID, "app-1") and not hub.wants(GUID, "app-2")
    hub.unsubscribe(s.subscription)
    assert not hub.wants(GUID, "app-1") and len(hub) == 0
    Subscriber(hub, "app-3", GUID)
    assert hub.wants(GUID, "app-1") and hub.count("app-3") == 1


def test_a_new_subscriber_is_told_of_the_calls_in_progress():
    hub = LiveHub(clock=None)
    hub.call_event(call("call-started", app=None))
    hub.call_event(call("streaming-started"))
    hub.call_event(call("call-started", guid="guid-2", app=None))
    app_wide = Subscription("app-1", None, None, None)
    assert [c.guid for c in hub.calls_for(app_wide)] == [GUID]
    assert [c.kind for c in hub.calls_for(Subscription("app-9", "guid-2", None, None))] == [
        "call-started"]
    hub.call_event(call("streaming-stopped"))
    assert [c.kind for c in hub.calls_for(app_wide)] == ["call-started"]
    hub.call_event(call("call-ended"))
    assert hub.calls_for(app_wide) == []


# -- requests ------------------------------------------------------------------------------


def test_what_a_client_may_ask_for():
    assert LiveRequest.from_args({}) == LiveRequest()
    wanted = LiveRequest.from_args({b"externalId": [b"g"], b"after": [b"s1:3,s2:7", b"s3:1"]})
    assert wanted.positions == {"s1": 3, "s2": 7, "s3": 1} and wanted.replay
    assert LiveRequest.from_args({b"externalId": [b"g"], b"replay": [b"true"]}).replay
    assert LiveRequest.from_args({b"externalId": [b"g"], b"after": [b""]}).replay
    # The most positions, with streamIds (uuids) and the longest sequences, fit.
    most = b",".join(b"%s:%s" % (str(uuid.uuid4()).encode(), b"9" * 12) for _ in range(64))
    assert len(most) <= MAX_AFTER
    assert len(LiveRequest.from_args({b"externalId": [b"g"], b"after": [most]}).positions) == 64
    for bad in ({b"after": [b"s1:3"]}, {b"externalId": [b"g"], b"after": [b"s1"]},
                {b"externalId": [b"g"], b"after": [b"s1:x"]},
                {b"externalId": [b"g", b"h"]}, {b"externalId": [b"\xff"]},
                {b"externalId": [b"g"], b"replay": [b"maybe"]},
                {b"externalId": [b"g"], b"after": [b",".join(
                    f"s{i}:1".encode() for i in range(100))]},
                {b"externalId": [b"g"], b"after": [b"," * (MAX_AFTER + 1)]}):
        try:
            LiveRequest.from_args(bad)
        except LiveRefused as e:
            assert e.status == 400 and str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


# -- siprecd watch's screen ----------------------------------------------------------------


def _utterance(kind, role, text, **more):
    body = {"event": kind, "sender": {"role": role, "externalId": "x"},
            "autotranscribeResponse": {"utterance": [{"text": text}]}, **more}
    return body


def test_watch_shows_partials_in_place_and_finals_as_lines():
    from siprecd.live.cli import Screen

    screen = Screen(terminal=True, width=80)
    out = screen.feed(_utterance("partial", "customer", "my card"))
    assert out == Screen.CLEAR + "… customer: my card"
    out = screen.feed(_utterance("partial", "agent", "okay"))
    assert out == Screen.CLEAR + "… agent: okay | customer: my card"
    out = screen.feed(_utterance("final", "customer", "my card is ####",
                                 timestamp="2024-05-02T14:03:11.482Z"))
    # The final as a line of its own, then what is still being said.
    assert out.startswith(Screen.CLEAR) and "customer: my card is ####\n" in out
    assert out.endswith("… agent: okay")
    assert screen.feed({"event": "call-ended", "timestamp": "t"}).startswith(Screen.CLEAR)
    assert screen.ended
    long = screen.feed(_utterance("partial", "agent", "word " * 100))
    assert len(long) <= len(Screen.CLEAR) + 80


def test_watch_without_a_terminal_prints_lines_only():
    from siprecd.live.cli import Screen

    screen = Screen(terminal=False)
    assert screen.feed(_utterance("partial", "customer", "my card")) == ""
    assert screen.feed(_utterance("final", "customer", "my card is ####",
                                  timestamp="2024-05-02T14:03:11.482Z")) == \
        "14:03:11 customer: my card is ####\n"
    chatty = Screen(terminal=False, partials=True)
    assert chatty.feed(_utterance("partial", "agent", "okay")) == "~  agent: okay\n"
