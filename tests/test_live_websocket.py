"""The live WebSocket through real TLS on loopback: the API's routes (auth,
app isolation) in front of a LiveEndpoint, real SQLite, the transcription
service fed a call's audio as the media plane would, and real autobahn
clients. The recogniser is the FakeAsrBackend TEST DOUBLE (words from a
script, for exact expectations); the real model's partials through the
whole daemon are in test_live_daemon.py.

Covered: events of a call in order (partials before their final, whose
body is the transcript webhook's), credentials and isolation, a client
that reconnects gets every final exactly once (also when a final is
published while its replay is read), a client that stops reading is cut
off with 4008 and a bounded queue, connection limits, node stop.
"""

import json

import numpy as np
import pytest_twisted
from twisted.internet import defer, reactor, task

from siprecd import tls
from siprecd.api.app import ControlApi
from siprecd.api.control import LocalCalls
from siprecd.api.http import make_site
from siprecd.live import LiveHub
from siprecd.live.client import connect
from siprecd.live.session import TOO_SLOW
from siprecd.live.websocket import GOING_AWAY, LiveEndpoint
from siprecd.messages import webhook_payload
from siprecd.service import Readiness
from siprecd.storage.sqlite import SqliteStorage
from siprecd.transcribe import TranscriptionService
from siprecd.transcribe.partials import LivePartial
from test_transcribe_service import GUID, Line, fake_backend, make_session, start
from test_live_partials import words_audio

TIMEOUT = 30


class EventQueue:
    """A client's events, waited for one by one with a bounded timeout."""

    def __init__(self):
        self.all = []
        self._queue = defer.DeferredQueue()

    def __call__(self, event):
        self.all.append(event)
        self._queue.put(event)

    async def next(self):
        return await self._queue.get().addTimeout(TIMEOUT, reactor)

    async def until(self, kind, **match):
        while True:
            event = await self.next()
            if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event


class Rig:
    """API + live endpoint + transcription on real TLS and SQLite."""

    async def start(self, tmp_path, isolation=True, words=None, **live_options):
        self.storage = SqliteStorage(reactor, tmp_path / "siprecd.sqlite")
        await self.storage.open()
        self.hub = LiveHub(reactor, isolation=isolation)
        self.backend = fake_backend(words=words)
        self.service = TranscriptionService(
            self.storage, self.backend, reactor, node="node-a",
            on_utterance=(self.hub.final,), on_partial=(self.hub.partial,),
            on_call_event=(self.hub.call_event,), partial_interval=0.1,
            partials_wanted=lambda guid, app, target: self.hub.wants(guid, app))
        self.service.startService()
        self.live = LiveEndpoint(self.hub, self.storage, reactor, **live_options)
        self.live.startService()
        self.requests = defer.DeferredQueue()
        api = ControlApi(self.storage, LocalCalls(self.service, self.storage, {}, isolation),
                         Readiness(), reactor, "node-a", app_isolation=isolation,
                         live=self.live, on_request=(self._request,))
        cert, key, _ = tls.ensure_self_signed(tmp_path / "tls")
        self.cafile = str(cert)
        self.port = reactor.listenSSL(0, make_site(api.resource(), 64 * 1024),
                                      tls.server_options(cert, key), interface="127.0.0.1")
        self.apps = [await self.storage.create_app(None, label=f"app-{n}") for n in (1, 2)]
        self.clients = []
        return self

    def _request(self, request, route):
        # As siprecd.metrics does: the request's end, once it comes.
        request.notifyFinish().addBoth(lambda _: self.requests.put((route, request.code)))

    def connect(self, app=0, **options):
        api, secret = self.apps[app]
        events = EventQueue()

        async def run():
            client = await connect(reactor, "127.0.0.1", self.port.getHost().port, api.api_id,
                                   secret, on_event=events, cafile=self.cafile, **options)
            self.clients.append(client)
            client.queue = events
            return client

        return defer.ensureDeferred(run())

    async def stop(self):
        for client in self.clients:
            client.close()
        await defer.DeferredList([c.closed for c in self.clients])
        await defer.maybeDeferred(self.live.stopService)
        await self.service.stopService()
        await self.port.stopListening()
        await self.storage.close()


@pytest_twisted.async_yield_fixture
async def rig(tmp_path):
    made = []

    async def make(**options):
        r = await Rig().start(tmp_path / f"rig{len(made)}", **options)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.stop()


async def a_call(rig, app=0, utterances=2, session=None):
    session = session or make_session()
    await rig.service.call_offered(session)
    await start(rig.service, app_id=rig.apps[app][0].api_id, language="en-US")
    line = Line(rig.service, session, 0)
    for _ in range(utterances):
        line.play(words_audio(3))
    return session, line


@pytest_twisted.ensureDeferred
async def test_the_events_of_a_call_in_order(rig):
    rig = await rig(words=[f"word{n}" for n in range(100)])
    client = await rig.connect(guid=GUID)
    app_wide = await rig.connect()
    other_app = await rig.connect(app=1)
    for c in (client, app_wide, other_app):
        hello = await c.queue.until("subscribed")
        assert hello["calls"] == [] and hello["replayed"] == 0
    session, line = await a_call(rig)
    await rig.service.stop(GUID)
    rig.service.call_ended(session, "bye")
    await client.queue.until("call-ended")
    await app_wide.queue.until("call-ended")
    kinds = [e["event"] for e in client.queue.all]
    assert kinds[:3] == ["subscribed", "call-started", "streaming-started"]
    assert kinds[-2:] == ["streaming-stopped", "call-ended"]
    assert kinds.count("final") == 2 and kinds.count("partial") >= 2
    stored = await rig.storage.messages_for_guid(GUID)
    finals = [e for e in client.queue.all if e["event"] == "final"]
    # A final is the transcript webhook's body (and the event's name).
    assert [{k: v for k, v in e.items() if k != "event"} for e in finals] == [
        webhook_payload(m) for m in stored]
    for final in finals:
        at = client.queue.all.index(final)
        mine = [i for i, e in enumerate(client.queue.all)
                if e["event"] == "partial" and e["utteranceId"] == final["messageId"]]
        assert mine and max(mine) < at
    partial = next(e for e in client.queue.all if e["event"] == "partial")
    assert partial["type"] == "transcript-partial" and partial["revision"] == 1
    assert partial["sender"] == {"externalId": "cust-1", "role": "customer"}
    started = client.queue.all[2]
    assert {s["role"] for s in started["streams"]} == {"customer", "agent"}
    assert started["language"] == "en-us"
    # The app's own view starts with its start-streaming; another app sees nothing.
    assert [e["event"] for e in app_wide.queue.all][:2] == ["subscribed", "streaming-started"]
    assert [e["event"] for e in other_app.queue.all] == ["subscribed"]


@pytest_twisted.ensureDeferred
async def test_credentials_and_app_isolation(rig):
    rig = await rig()
    api, _ = rig.apps[0]
    refused = connect(reactor, "127.0.0.1", rig.port.getHost().port, api.api_id, "wrong",
                      cafile=rig.cafile)
    try:
        await refused
    except ConnectionError as e:
        assert "401" in str(e)
    else:
        raise AssertionError("a wrong secret was let in")
    session, _ = await a_call(rig, app=0, utterances=1)
    try:
        await rig.connect(app=1, guid=GUID)
    except ConnectionError as e:
        assert "403" in str(e)
    else:
        raise AssertionError("another app's call was let in")
    try:
        await rig.connect(app=1, after={"s": 1})
    except ConnectionError as e:
        assert "400" in str(e)
    else:
        raise AssertionError("after without externalId was accepted")


@pytest_twisted.ensureDeferred
async def test_a_subscriber_to_a_call_another_app_starts_is_cut_off(rig):
    rig = await rig()
    early = await rig.connect(app=1, guid=GUID)
    await early.queue.until("subscribed")
    await a_call(rig, app=0, utterances=1)
    code, reason = await early.closed.addTimeout(TIMEOUT, reactor)
    assert code == 4403 and "another app" in reason
    assert [e["event"] for e in early.queue.all] == ["subscribed", "call-started"]


def sequences(client, stream_id):
    return [e["sequence"] for e in client.queue.all
            if e["event"] == "final" and e["streamId"] == stream_id]


@pytest_twisted.ensureDeferred
async def test_a_client_that_reconnects_gets_every_final_exactly_once(rig):
    rig = await rig()
    first = await rig.connect(guid=GUID)
    await first.queue.until("subscribed")
    session, line = await a_call(rig, utterances=2)
    await first.queue.until("final", sequence=2)
    stream = first.queue.all[-1]["streamId"]
    first.close()
    await first.closed.addTimeout(TIMEOUT, reactor)
    # Said while the client was away.
    line.play(words_audio(2))
    line.play(words_audio(2))
    await _stored(rig, 4)
    second = await rig.connect(guid=GUID, after=first.positions)
    hello = await second.queue.until("subscribed")
    assert hello["replayed"] == 2 and hello["calls"][0]["streaming"]
    line.play(words_audio(2))
    await second.queue.until("final", sequence=5)
    assert sequences(first, stream) == [1, 2]
    assert sequences(second, stream) == [3, 4, 5]


class HeldReads:
    """Storage whose messages_for_guid answers only when the test says."""

    def __init__(self, storage):
        self.storage = storage
        self.asked = defer.Deferred()
        self.release = defer.Deferred()

    async def _read(self, guid, limit):
        self.asked.callback(None)
        await self.release
        return await self.storage.messages_for_guid(guid, limit=limit)

    def messages_for_guid(self, guid, limit=1000):
        return defer.ensureDeferred(self._read(guid, limit))


@pytest_twisted.ensureDeferred
async def test_a_final_published_while_the_replay_is_read_comes_once(rig):
    rig = await rig()
    session, line = await a_call(rig, utterances=1)
    await _stored(rig, 1)
    held = HeldReads(rig.storage)
    rig.live.storage = held
    client = await rig.connect(guid=GUID, replay=True)
    await held.asked.addTimeout(TIMEOUT, reactor)
    # Stored, and published to the subscription, before storage answers:
    # the replay will hold it as well.
    line.play(words_audio(2))
    await _stored(rig, 2)
    held.release.callback(None)
    hello = await client.queue.until("subscribed")
    assert hello["replayed"] == 2
    line.play(words_audio(2))
    await client.queue.until("final", sequence=3)
    stream = (await rig.storage.messages_for_guid(GUID))[0].stream_id
    assert sequences(client, stream) == [1, 2, 3]


async def _stored(rig, count):
    """Wait (bounded) until *count* messages of the call are stored."""
    for _ in range(TIMEOUT * 20):
        if len(await rig.storage.messages_for_guid(GUID)) >= count:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{count} messages were not stored in time")


def big_partial(n, app_id, size=8000):
    return LivePartial(guid=GUID, call_id="c1", leg_id="l1", stream_id="s1", role="customer",
                       external_id="cust-1", utterance_id=f"u{n}", revision=1, start_ms=0,
                       end_ms=1, text="x" * size, created_ms=0, app_id=app_id)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off_with_memory_bounded(rig):
    queue_bytes = 128 * 1024
    rig = await rig(max_bytes=queue_bytes, max_events=1000, close_timeout=60.0)
    client = await rig.connect()
    await client.queue.until("subscribed")
    [server] = list(rig.live.connections)
    client.stop_reading()
    app_id = rig.apps[0][0].api_id
    published = 0
    # Bounded: far more than the kernel's socket buffers hold.
    while server.session is not None and not server.session.closed and published < 20000:
        rig.hub.partial(big_partial(published, app_id))
        published += 1
        await task.deferLater(reactor, 0, lambda: None)   # the socket fills meanwhile
    assert server.session.closed, f"still open after {published} events"
    assert server.session.peak_bytes <= queue_bytes
    assert len(rig.hub) == 0                 # nothing more is made for it
    tcp = server.transport.transport         # under TLS
    assert len(tcp.dataBuffer) + tcp._tempDataLen <= 256 * 1024
    sent = server.session.sent_events
    client.start_reading()
    code, reason = await client.closed.addTimeout(TIMEOUT, reactor)
    assert code == TOO_SLOW and "too slow" in reason
    # It got what was written before it fell behind, nothing after.
    assert client.events == sent
    await _gone(rig, server)


async def _gone(rig, protocol):
    for _ in range(TIMEOUT * 20):
        if protocol not in rig.live.connections:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("the connection was not forgotten")


@pytest_twisted.ensureDeferred
async def test_connection_limits_and_stopping_the_node(rig):
    rig = await rig(max_per_app=1)
    first = await rig.connect()
    await first.queue.until("subscribed")
    try:
        await rig.connect()
    except ConnectionError as e:
        assert "429" in str(e)
    else:
        raise AssertionError("a second connection of the app was let in")
    other = await rig.connect(app=1)
    await other.queue.until("subscribed")
    await defer.maybeDeferred(rig.live.stopService)
    for client in (first, other):
        code, reason = await client.closed.addTimeout(TIMEOUT, reactor)
        assert code == GOING_AWAY and "stopping" in reason


@pytest_twisted.ensureDeferred
async def test_the_upgraded_request_ends_for_those_who_wait_on_it(rig):
    rig = await rig()
    client = await rig.connect()
    await client.queue.until("subscribed")
    # The WebSocket lives on; the HTTP request that became it is over.
    assert await rig.requests.get().addTimeout(TIMEOUT, reactor) == ("live_transcripts", 101)
    assert client.state == client.STATE_OPEN


@pytest_twisted.ensureDeferred
async def test_clients_cannot_send_large_frames(rig):
    rig = await rig()
    client = await rig.connect()
    await client.queue.until("subscribed")
    client.sendMessage(json.dumps({"x": "y" * 10000}).encode(), isBinary=False)
    code, _ = await client.closed.addTimeout(TIMEOUT, reactor)
    assert code == 1009          # message too big
    await _gone(rig, next(iter(rig.live.connections), None))
    assert len(rig.hub) == 0


def test_audio_helper_is_long_enough():
    assert len(words_audio(3)) > 8000 and words_audio(1).dtype == np.int16
