"""TranscriptionService with the FakeAsrBackend test double and real SQLite
storage: gating, legs, roles, errors, summaries, segmentation, ordering.

Audio here is tones (the double "recognises" each loud stretch as one
word) fed straight into the service as the media plane would; the real
recogniser and the real SIPREC path are in test_transcribe_vosk.py and
test_transcribe_siprec.py.
"""

import attrs
import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from siprecd.interfaces import ICallListener, IDrainable, IStreamConsumer, StorageError
from siprecd.media.manager import StreamId
from siprecd.simulator.samples import sample_metadata
from siprecd.siprec.guid import CallIdentifier
from siprecd.siprec.metadata import parse_metadata
from siprecd.siprec.sdp import Codec
from siprecd.siprec.session import RecordedStream, RecordingSession
from siprecd.storage.sqlite import SqliteStorage
from siprecd.testing.asr import FakeAsrBackend
from siprecd.transcribe import StartRequest, no_redaction
from siprecd.transcribe import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, NoSuchCall, NotAllowed,
    RequestInProgress, TranscriptionService,
)

RATE = 8000
GUID = "00002542391662063156"
PCMU = Codec(0, "PCMU", 8000, None, None)


# -- helpers (also used by the other test_transcribe_* modules) --------------------------


def tone(seconds, amplitude=8000, frequency=440.0):
    n = int(round(seconds * RATE))
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(n) / RATE)).astype(np.int16)


def silence(seconds):
    return np.zeros(int(round(seconds * RATE)), dtype=np.int16)


def make_session(call_id="call-1@sbc.example", guid=GUID, streams=2, metadata=True,
                 started_at=1_700_000_000.0):
    labels = [str(i + 1) for i in range(streams)]
    ident = CallIdentifier("x-ucid", guid, guid)
    recorded = [
        RecordedStream(index=i, audio_index=i, label=label, codec=PCMU, telephone_event=None,
                       local_port=20000 + 2 * i, remote_host="127.0.0.1",
                       remote_port=30000 + 2 * i)
        for i, label in enumerate(labels)
    ]
    meta = parse_metadata(sample_metadata(labels=tuple(labels))) if metadata else None
    return RecordingSession(
        call_id, ident, [ident, CallIdentifier("call-id", call_id, call_id)], meta, started_at,
        "UDP", ("192.0.2.10", 5060), streams=recorded)


class Line:
    """One stream of a call as the media plane hands it over: positions
    continue from one play() to the next."""

    def __init__(self, consumer, session, audio_index):
        stream = next(s for s in session.streams if s.audio_index == audio_index)
        self.consumer = consumer
        self.stream = StreamId(session.guid.value, session.call_id, stream.label,
                               stream.audio_index, session.mixed)
        self.position = 0

    def play(self, audio, chunk=160):
        for i in range(0, len(audio), chunk):
            piece = audio[i:i + chunk]
            self.consumer.pcm(self.stream, self.position, piece)
            self.position += len(piece)

    def end(self):
        self.consumer.event(self.stream, "end", self.position, {"reason": "bye"})


@pytest_twisted.async_yield_fixture
async def storage(tmp_path):
    s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await s.open()
    yield s
    await s.close()


def fake_backend(**options):
    backend = FakeAsrBackend(languages=("en-us", "es-us", "ko"), **options)
    backend.start()
    return backend


def make_service(storage, backend=None, clock=None, **options):
    service = TranscriptionService(storage, backend or fake_backend(),
                                   clock if clock is not None else task.Clock(), node="node-a",
                                   **options)
    return service


async def offered(service, session=None, **kw):
    session = session or make_session(**kw)
    await service.call_offered(session)
    return session


def start(service, guid=GUID, customer="cust-1", agent="agent-1", webhook_target=None,
          app_id=None, **kw):
    """start-streaming as the API makes it: the request checked first."""
    try:
        request = StartRequest.make(guid, customer, agent, **kw)
    except Exception:
        return defer.fail()
    return service.start(request, app_id=app_id, webhook_target=webhook_target)


async def messages(storage, guid=GUID):
    return await storage.messages_for_guid(guid)


def spans(found):
    return [(m.start_ms, m.end_ms) for m in found]


# -- the interfaces ----------------------------------------------------------------------


def test_implements_its_interfaces(tmp_path):
    service = make_service(SqliteStorage(reactor, tmp_path / "x.sqlite"))
    verifyObject(IStreamConsumer, service)
    verifyObject(ICallListener, service)
    verifyObject(IDrainable, service)


# -- calls in storage --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_offered_call_is_stored_with_identifiers_and_participants(storage):
    service = make_service(storage)
    session = await offered(service)
    call = await storage.get_call_by_guid(GUID)
    assert call.state == "active" and call.node == "node-a" and not call.mixed
    assert call.call_id == session.call_id
    assert {(i["source"], i["value"]) for i in call.identifiers} == {
        ("x-ucid", GUID), ("call-id", session.call_id)}
    assert [p["name"] for p in call.participants] == ["Caller", "Agent 2001"]
    assert [p["labels"] for p in call.participants] == [["1"], ["2"]]
    assert call.started_ms == 1_700_000_000_000
    assert call.sip["transport"] == "UDP"


class HeldStorage:
    """Test double around real storage: upsert_call waits for the test."""

    def __init__(self, storage, fail=False):
        self.storage = storage
        self.fail = fail
        self.held = []

    def upsert_call(self, call, now=None):
        d = defer.Deferred()
        self.held.append(d)
        if self.fail:
            return d.addCallback(lambda _: defer.fail(StorageError("database is read-only")))
        return d.addCallback(lambda _: self.storage.upsert_call(call, now))

    def __getattr__(self, name):
        return getattr(self.storage, name)


@pytest_twisted.ensureDeferred
async def test_the_offer_is_answered_only_once_the_call_is_stored(storage):
    held = HeldStorage(storage)
    service = make_service(held)
    d = service.call_offered(make_session())
    assert not d.called
    # A start while the call is being stored waits for it.
    started = start(service)
    held.held[0].callback(None)
    await d
    assert (await storage.get_call_by_guid(GUID)) is not None
    assert set(await started) == {"customer", "agent", "streams", "settings", "legId"}


@pytest_twisted.ensureDeferred
async def test_a_call_that_cannot_be_stored_is_refused(storage):
    held = HeldStorage(storage, fail=True)
    service = make_service(held)
    session = make_session()
    d = service.call_offered(session)
    held.held[0].callback(None)
    with pytest.raises(StorageError):
        await d
    service.call_ended(session, "refused")
    with pytest.raises(NoSuchCall):
        await start(service)


@pytest_twisted.ensureDeferred
async def test_updates_and_the_end_reach_storage(storage):
    service = make_service(storage)
    session = await offered(service)
    session.update_metadata(parse_metadata(sample_metadata(
        labels=("1", "2"), callee=("sip:agent3003@cc.example.com", "Agent 3003"))))
    service.call_updated(session)
    service.call_ended(session, "BYE from SRC")
    await service.drain()
    call = await storage.get_call_by_guid(GUID)
    assert call.state == "ended" and call.end_reason == "BYE from SRC"
    assert "Agent 3003" in [p["name"] for p in call.participants]


# -- gating ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_only_audio_between_start_and_stop_is_transcribed(storage):
    backend = fake_backend()
    service = make_service(storage, backend)
    session = await offered(service)
    customer, agent = Line(service, session, 0), Line(service, session, 1)
    # Each stretch of speech has its own length, so which one was
    # transcribed shows in the message's span.
    customer.play(np.concatenate([tone(0.3), silence(1.0)]))              # before: 0.3 s
    await start(service)
    customer.play(np.concatenate([tone(0.6), silence(1.0)]))              # in: 0.6 s
    await service.stop(GUID)
    customer.play(np.concatenate([tone(0.4), silence(1.0)]))              # between: 0.4 s
    await start(service)
    customer.play(np.concatenate([tone(0.8), silence(1.0)]))              # in: 0.8 s
    await service.stop(GUID)
    customer.play(np.concatenate([tone(0.5), silence(1.0)]))              # after: 0.5 s
    agent.play(np.concatenate([tone(2.0), silence(1.0)]))                 # after too
    found = await messages(storage)
    assert spans(found) == [(1300, 1900), (4300, 5100)]
    assert [m.role for m in found] == ["customer", "customer"]
    # The recognisers were given nothing from outside the windows.
    fed = sum(len(r.fed) for r in backend.recognizers) // 2
    assert fed == int(1.6 * RATE) + int(1.8 * RATE)
    assert all(r.closed for r in backend.recognizers)


@pytest_twisted.ensureDeferred
async def test_stop_finishes_the_open_utterance(storage):
    service = make_service(storage, fake_backend(endpoint=30.0))
    session = await offered(service)
    customer = Line(service, session, 0)
    await start(service)
    customer.play(tone(0.7))           # still speaking when stop comes
    result = await service.stop(GUID)
    assert spans(await messages(storage)) == [(0, 700)]
    assert result["customer"]["summary"]["transcripts"] == 1


@pytest_twisted.ensureDeferred
async def test_the_end_of_the_call_finishes_the_open_utterance(storage):
    service = make_service(storage, fake_backend(endpoint=30.0))
    session = await offered(service)
    customer = Line(service, session, 0)
    await start(service)
    customer.play(tone(0.7))
    service.call_ended(session, "BYE from SRC")
    with pytest.raises(CallEnding):
        await service.stop(GUID)
    await service.drain()
    assert spans(await messages(storage)) == [(0, 700)]
    assert (await storage.get_call_by_guid(GUID)).state == "ended"
    with pytest.raises(NoSuchCall):
        await service.stop(GUID)
    streams = await storage.streams_for_guid(GUID)
    assert {s.role: s.stats["transcripts"] for s in streams} == {"customer": 1, "agent": 0}


@pytest_twisted.ensureDeferred
async def test_a_stream_that_ends_is_finished(storage):
    service = make_service(storage, fake_backend(endpoint=30.0))
    session = await offered(service)
    customer = Line(service, session, 0)
    await start(service)
    customer.play(tone(0.5))
    customer.end()
    await service.drain()
    assert spans(await messages(storage)) == [(0, 500)]


# -- legs, streamIds, roles --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stream_ids_are_stable_within_a_leg_and_new_for_a_new_agent(storage):
    service = make_service(storage)
    await offered(service)
    first = await start(service, agent="agent-1")
    stopped = await service.stop(GUID)
    again = await start(service, agent="agent-1")
    await service.stop(GUID)
    transferred = await start(service, agent="agent-2")
    ids = lambda r: {role: r[role]["streamId"] for role in ("customer", "agent")}  # noqa: E731
    assert ids(first) == ids(again) == ids(stopped)
    assert set(ids(transferred).values()).isdisjoint(ids(first).values())
    assert all(first[role]["status"] == {"code": 1000, "description": "OK"}
               for role in ("customer", "agent"))
    # Every stream is listed too, with its label, Call-ID and sender.
    assert [(s["role"], s["label"], s["primary"]) for s in first["streams"]] == [
        ("customer", "1", True), ("agent", "2", True)]
    assert {s["streamId"] for s in first["streams"]} == set(ids(first).values())
    assert first["streams"][0]["participant"]["aor"] == "sip:+15551230001@carrier.example.net"
    legs = await storage.legs_for_guid(GUID)
    assert [(leg.number, leg.agent_id) for leg in legs] == [(1, "agent-1"), (2, "agent-2")]
    assert legs[0].params["language"] == "en-us"
    streams = await storage.streams_for_guid(GUID)
    assert [(s.role, s.external_id) for s in streams] == [
        ("agent", "agent-1"), ("customer", "cust-1"), ("agent", "agent-2"), ("customer", "cust-1")]


@pytest_twisted.ensureDeferred
async def test_media_line_order_decides_the_roles(storage):
    service = make_service(storage)
    session = await offered(service)
    first, second = Line(service, session, 0), Line(service, session, 1)
    ids = await start(service, media_line_order="AGENT_FIRST")
    first.play(np.concatenate([tone(0.3), silence(1.0)]))
    second.play(np.concatenate([silence(0.2), tone(0.5), silence(1.0)]))
    await service.stop(GUID)
    found = await messages(storage)
    by_role = {m.role: m for m in found}
    assert by_role["agent"].start_ms == 0 and by_role["agent"].external_id == "agent-1"
    assert by_role["customer"].start_ms == 200 and by_role["customer"].external_id == "cust-1"
    assert by_role["agent"].stream_id == ids["agent"]["streamId"]
    assert by_role["customer"].stream_id == ids["customer"]["streamId"]


@pytest_twisted.ensureDeferred
async def test_customer_first_is_the_default_and_case_does_not_matter(storage):
    service = make_service(storage)
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service, media_line_order="customer_first", language="EN-us")
    line.play(np.concatenate([tone(0.3), silence(1.0)]))
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.role == "customer" and m.language == "en-us"


@pytest.mark.parametrize("mixed_role", ["customer", "agent"])
@pytest_twisted.ensureDeferred
async def test_a_mixed_call_is_one_stream_in_the_configured_role(storage, mixed_role):
    service = make_service(storage, mixed_role=mixed_role)
    session = await offered(service, streams=1)
    line = Line(service, session, 0)
    result = await start(service, media_line_order="AGENT_FIRST")
    assert list(result) == [mixed_role, "streams", "settings", "legId"]
    line.play(np.concatenate([tone(0.3), silence(1.0)]))
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.role == mixed_role and m.stream_id == result[mixed_role]["streamId"]
    assert (await storage.get_call_by_guid(GUID)).mixed


# -- errors ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_error_codes(storage):
    backend = fake_backend()
    service = make_service(storage, backend)
    session = await offered(service)

    async def code_of(d):
        with pytest.raises(Exception) as info:
            await d
        return type(info.value), info.value.code, info.value.status

    assert await code_of(start(service, guid="nope")) == (NoSuchCall, "400-203", 400)
    assert await code_of(service.stop(GUID)) == (AlreadyInState, "409-201", 409)
    assert (await code_of(start(service, language="fr-FR")))[:2] == (NotAllowed, "400-202")
    assert (await code_of(start(service, redaction_output="some")))[:2] == (NotAllowed, "400-202")
    assert (await code_of(start(service, customer="")))[:2] == (BadParameter, "400-201")
    assert (await code_of(start(service, agent=None)))[:2] == (BadParameter, "400-201")
    assert (await code_of(start(service, detailed_token="yes")))[:2] == (BadParameter, "400-201")
    assert (await code_of(start(service, media_line_order="LEFT")))[:2] == (BadParameter,
                                                                             "400-201")
    # Two requests at once for one guid.
    first = start(service)
    assert (await code_of(start(service)))[:2] == (RequestInProgress, "409-202")
    assert (await code_of(service.stop(GUID)))[:2] == (RequestInProgress, "409-202")
    await first
    assert (await code_of(start(service)))[:2] == (AlreadyInState, "409-201")
    stopping = service.stop(GUID)
    assert (await code_of(start(service)))[:2] == (RequestInProgress, "409-202")
    await stopping
    # ASR not ready.
    backend.ready = False
    assert await code_of(start(service)) == (AsrUnavailable, "500-201", 500)
    backend.ready = True
    # The BYE is being processed, then the call is gone.
    service.call_ended(session, "BYE from SRC")
    assert (await code_of(start(service)))[:2] == (CallEnding, "409-203")
    assert (await code_of(service.stop(GUID)))[:2] == (CallEnding, "409-203")
    await service.drain()
    assert (await code_of(start(service)))[:2] == (NoSuchCall, "400-203")
    # Draining for shutdown.
    await offered(service, make_session(call_id="call-2@sbc.example"))
    service.stop_accepting()
    assert (await code_of(start(service)))[:2] == (AsrUnavailable, "500-201")


@pytest_twisted.ensureDeferred
async def test_a_recogniser_that_cannot_be_made_is_500_201(storage):
    backend = fake_backend()
    service = make_service(storage, backend)
    await offered(service)

    def broken(language, sample_rate=8000):
        raise RuntimeError("the ASR farm is unreachable")

    backend.new_recognizer = broken
    with pytest.raises(AsrUnavailable):
        await start(service)
    assert not service.is_streaming(GUID)


# -- summaries ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_summary_and_stream_statistics(storage):
    clock = task.Clock()
    service = make_service(storage, clock=clock)
    session = await offered(service)
    customer, agent = Line(service, session, 0), Line(service, session, 1)
    customer.play(tone(1.0))                     # before start: not counted
    await start(service)
    customer.play(np.concatenate([tone(0.5), silence(0.7), tone(0.5), silence(0.8)]))
    agent.play(silence(2.5))
    clock.advance(12.4)
    first = await service.stop(GUID)
    assert first["customer"]["summary"] == {
        "totalAudioBytes": 2.5 * RATE * 2, "audioDurationMs": 2500, "streamingSeconds": 12,
        "transcripts": 2, "pending": False}
    assert first["agent"]["summary"] == {
        "totalAudioBytes": 2.5 * RATE * 2, "audioDurationMs": 2500, "streamingSeconds": 12,
        "transcripts": 0, "pending": False}
    clock.advance(100)                           # stopped: not counted
    await start(service)
    customer.play(np.concatenate([tone(0.5), silence(1.0)]))
    clock.advance(3.0)
    second = await service.stop(GUID)
    assert second["customer"]["summary"] == {
        "totalAudioBytes": 4.0 * RATE * 2, "audioDurationMs": 4000, "streamingSeconds": 15,
        "transcripts": 3, "pending": False}
    stats = {s.role: s.stats for s in await storage.streams_for_guid(GUID)}
    assert stats["customer"]["transcripts"] == 3 and stats["customer"]["windows"] == 2
    assert stats["customer"]["audioDurationMs"] == 4000
    assert stats["agent"]["recognizedAudioMs"] + stats["agent"]["skippedSilenceMs"] <= 2500


# -- segmentation ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_trailing_silence_ends_utterances(storage):
    # The double's own endpointing is off: only the service's can end one.
    service = make_service(storage, fake_backend(endpoint=30.0))
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service)
    # asr.endpoint_silence is 0.3 s by default: a 0.2 s pause does not
    # end an utterance, 0.7 s does.
    line.play(np.concatenate([tone(1.0), silence(0.7), tone(1.0), silence(0.2), tone(0.5),
                              silence(1.0)]))
    await service.stop(GUID)
    found = await messages(storage)
    assert [(m.text, m.start_ms, m.end_ms) for m in found] == [
        ("w1", 0, 1000), ("w2 w3", 1700, 3400)]


@pytest_twisted.ensureDeferred
async def test_endpoint_silence_setting(storage):
    service = make_service(storage, fake_backend(endpoint=30.0), endpoint_silence=1.0)
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service)
    line.play(np.concatenate([tone(1.0), silence(0.7), tone(1.0), silence(1.5)]))
    await service.stop(GUID)
    assert [m.text for m in await messages(storage)] == ["w1 w2"]


@pytest_twisted.ensureDeferred
async def test_max_utterance_ends_long_speech(storage):
    service = make_service(storage, fake_backend(endpoint=30.0), max_utterance=1.0)
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service)
    line.play(tone(2.5))
    await service.stop(GUID)
    assert spans(await messages(storage)) == [(0, 1000), (1000, 2000), (2000, 2500)]


def pin_audio():
    """Seven bursts 0.2 s apart: seven words, one utterance."""
    burst = np.concatenate([tone(0.2), silence(0.2)])
    return np.concatenate([np.tile(burst, 7), silence(1.0)])


PIN_WORDS = ["my", "pin", "is", "one", "two", "three", "four"]


@pytest.mark.parametrize("language,format_numbers,text", [
    ("en-US", True, "my pin is 1234"),
    ("es-us", True, "my pin is one two three four"),     # Spanish rules: English words stay
    ("en-us", False, "my pin is one two three four"),
    ("ko", True, "my pin is one two three four"),
])
@pytest_twisted.ensureDeferred
async def test_number_formatting(storage, language, format_numbers, text):
    # Formatting on its own: the redaction policy would mask the PIN.
    service = make_service(storage, fake_backend(words=PIN_WORDS),
                           format_numbers=format_numbers, redact=no_redaction)
    session = await offered(service)
    await start(service, language=language, detailed_token=True)
    Line(service, session, 0).play(pin_audio())
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.text == text
    assert [t["content"] for t in m.tokens] == text.split()
    if text.endswith("1234"):
        assert m.tokens[-1]["start"] == 1200 and m.tokens[-1]["end"] == 2600


@pytest_twisted.ensureDeferred
async def test_tokens_only_with_detailed_token(storage):
    service = make_service(storage, fake_backend(words=PIN_WORDS))
    session = await offered(service)
    await start(service)
    Line(service, session, 0).play(pin_audio())
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.tokens is None


@pytest.mark.parametrize("output,unredacted", [
    ("redacted", None), ("redacted_and_unredacted", "my pin is 1234"),
    ("unredacted", "my pin is 1234"),
])
@pytest_twisted.ensureDeferred
async def test_redaction_hook_and_output(storage, output, unredacted):
    def redact(text, tokens):
        return (text.replace("1234", "####"),
                [attrs.evolve(t, content="####") if t.content == "1234" else t for t in tokens])

    service = make_service(storage, fake_backend(words=PIN_WORDS), redact=redact)
    session = await offered(service)
    await start(service, redaction_output=output, detailed_token=True)
    Line(service, session, 0).play(pin_audio())
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.text == "my pin is ####"
    assert m.unredacted_text == unredacted
    shown = "1234" if output == "unredacted" else "####"
    assert m.tokens[-1]["content"] == shown


@pytest_twisted.ensureDeferred
async def test_stored_with_outbox_rows_then_handed_on_in_order(storage):
    handed = []

    async def on_utterance(message):
        # Already stored when it arrives here (the order is the order of
        # the calls, not of these reads finishing).
        entry = [message, None]
        handed.append(entry)
        entry[1] = message.id in {m.id for m in await storage.messages_for_guid(GUID)}

    service = make_service(storage, on_utterance=(on_utterance,))
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service, webhook_target="crm")
    for _ in range(4):
        line.play(np.concatenate([tone(0.3), silence(0.7)]))
    await service.stop(GUID)
    await service.drain()
    assert [(m.sequence, ok) for m, ok in handed] == [(1, True), (2, True), (3, True), (4, True)]
    assert all(m.guid == GUID and m.role == "customer" and m.external_id == "cust-1"
               for m, _ in handed)
    items = await storage.claim_due("node-a", 10)
    assert [(i.target, i.message.sequence) for i in items] == [("crm", 1)]


@pytest_twisted.ensureDeferred
async def test_a_store_that_fails_is_retried_with_the_same_message(storage):
    clock = task.Clock()

    class Flaky:
        def __init__(self):
            self.failures = 2

        def add_message(self, message, outbox_targets=()):
            if self.failures:
                self.failures -= 1
                return defer.fail(StorageError("database is locked"))
            return storage.add_message(message, outbox_targets)

        def __getattr__(self, name):
            return getattr(storage, name)

    service = make_service(Flaky(), clock=clock)
    session = await offered(service)
    await start(service)
    Line(service, session, 0).play(np.concatenate([tone(0.3), silence(1.0)]))
    stopping = service.stop(GUID)
    clock.advance(0.5)
    clock.advance(1.0)
    result = await stopping
    assert result["customer"]["summary"]["transcripts"] == 1
    assert len(await messages(storage)) == 1


# -- timeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [True, False])
@pytest_twisted.ensureDeferred
async def test_times_stay_on_the_timeline_across_holds_and_skipped_silence(storage, skip):
    backend = fake_backend()
    service = make_service(storage, backend, skip_silence=skip)
    session = await offered(service)
    line = Line(service, session, 0)
    line.play(silence(1.5))
    await start(service)
    line.play(np.concatenate([silence(2.0), tone(0.5), silence(1.0)]))
    service.event(line.stream, "hold", line.position, None)
    line.play(silence(20.0))        # the media plane fills the hold with silence
    service.event(line.stream, "resume", line.position, None)
    line.play(np.concatenate([silence(0.25), tone(0.75), silence(3.0), tone(0.3), silence(1.0)]))
    result = await service.stop(GUID)
    found = await messages(storage)
    assert spans(found) == [(3500, 4000), (25250, 26000), (29000, 29300)]
    fed = sum(len(r.fed) for r in backend.recognizers) // 2
    skipped_ms = (await storage.streams_for_guid(GUID))[1].stats["skippedSilenceMs"]
    if skip:
        assert fed < 8 * RATE and skipped_ms > 20000
    else:
        assert fed == result["customer"]["summary"]["audioDurationMs"] * 8 and skipped_ms == 0


# -- order and back-pressure -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_slow_recognisers_keep_order_one_call_at_a_time(storage):
    # Each call takes 5 ms of real time; the double raises RecognizerBusy
    # if a second call comes before the first has answered.
    backend = fake_backend(clock=reactor, latency=0.005)
    service = make_service(storage, backend)
    session = await offered(service)
    customer, agent = Line(service, session, 0), Line(service, session, 1)
    await start(service)
    speech = np.concatenate([np.concatenate([tone(0.2 + 0.1 * k), silence(0.6)])
                             for k in range(8)])
    customer.play(speech)
    agent.play(speech)
    window = next(iter(service.calls.conversation(GUID).sessions[0].windows.values()))
    assert window.pipeline.backlog > 0        # all of it is queued, none lost
    await service.stop(GUID)
    found = await messages(storage)
    for role in ("customer", "agent"):
        mine = [m for m in found if m.role == role]
        assert [m.sequence for m in mine] == list(range(1, 9))
        assert [m.end_ms - m.start_ms for m in mine] == [200 + 100 * k for k in range(8)]
        assert [m.start_ms for m in mine] == sorted(m.start_ms for m in mine)
    assert all(r.calls.count(("finish", None)) >= 8 for r in backend.recognizers)


@pytest_twisted.ensureDeferred
async def test_a_stop_answers_within_stop_wait_and_what_it_let_through_is_stored_after(storage):
    # Each recogniser call takes 1 s of the clock: 8 utterances of speech
    # are queued far behind when the stop comes.
    clock = task.Clock()
    backend = fake_backend(clock=clock, latency=1.0)
    service = make_service(storage, backend, clock=clock, stop_wait=2.0)
    session = await offered(service)
    customer = Line(service, session, 0)
    await start(service)
    customer.play(np.concatenate([np.concatenate([tone(0.3), silence(0.7)])
                                  for _ in range(8)]))
    stopping = service.stop(GUID)
    clock.advance(1.9)
    assert not stopping.called                   # waiting for the speech...
    clock.advance(0.2)
    result = await stopping                      # ... no longer than stop_wait
    summary = result["customer"]["summary"]
    assert summary["pending"] is True and summary["audioDurationMs"] == 8000
    assert summary["transcripts"] < 8
    customer.play(tone(0.5))                     # after the stop: never transcribed
    for _ in range(200):
        clock.advance(1.0)
    await service.drain()
    found = [m for m in await messages(storage) if m.role == "customer"]
    assert [m.sequence for m in found] == list(range(1, 9))
    assert max(m.end_ms for m in found) <= 8000


@pytest_twisted.ensureDeferred
async def test_a_recogniser_far_behind_drops_audio_and_says_so(storage):
    backend = fake_backend(clock=reactor, latency=0.005)
    service = make_service(storage, backend, warn_backlog=1.0, max_backlog=2.0)
    session = await offered(service)
    line = Line(service, session, 0)
    await start(service)
    warnings = []

    def observe(event):
        if event["log_level"] == LogLevel.warn:
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        line.play(np.concatenate([np.concatenate([tone(0.3), silence(0.7)]) for _ in range(6)]))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any("falling behind" in w for w in warnings)
    assert any("dropping audio" in w for w in warnings)
    result = await service.stop(GUID)
    stats = (await storage.streams_for_guid(GUID))[1].stats
    assert stats["droppedAudioMs"] > 0
    assert result["customer"]["summary"]["audioDurationMs"] == 6000
    found = await messages(storage)
    # What was kept is still in order, at its true place on the timeline.
    # What was kept is in order at its true place on the timeline; an
    # utterance cut by the drop ends where the audio kept ends.
    assert found and spans(found)[0] == (0, 300)
    assert all(m.start_ms % 1000 == 0 and 0 < m.end_ms - m.start_ms <= 300 for m in found)
    assert [m.sequence for m in found] == list(range(1, len(found) + 1))


@pytest_twisted.ensureDeferred
async def test_shutdown_finishes_calls_in_progress(storage):
    service = make_service(storage, fake_backend(endpoint=30.0))
    session = await offered(service)
    await start(service)
    Line(service, session, 0).play(tone(0.4))
    await service.stopService()
    assert spans(await messages(storage)) == [(0, 400)]
    assert (await storage.get_call_by_guid(GUID)).state == "ended"


# -- the redaction policy (siprecd.redact) in the pipeline ------------------------------


def bursts(count):
    burst = np.concatenate([tone(0.2), silence(0.2)])
    return np.tile(burst, count)


@pytest_twisted.ensureDeferred
async def test_the_default_policy_masks_a_pin_and_keeps_nothing_unredacted(storage):
    service = make_service(storage, fake_backend(words=PIN_WORDS))
    session = await offered(service)
    await start(service, detailed_token=True)
    Line(service, session, 0).play(pin_audio())
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.text == "my pin is ####"
    assert m.unredacted_text is None
    assert [t["content"] for t in m.tokens] == ["my", "pin", "is", "####"]


@pytest_twisted.ensureDeferred
async def test_a_card_number_split_over_two_utterances_is_masked_in_both(storage):
    # "my card number is 4111 1111" -- a pause that ends the utterance --
    # "1111 1111": the first utterance ends in a number, so it is held back
    # until the next one of the stream shows the whole card number.
    words = ["my", "card", "number", "is", "4111", "1111", "1111", "1111"]
    service = make_service(storage, fake_backend(words=words))
    session = await offered(service)
    await start(service, redaction_output="redacted_and_unredacted")
    line = Line(service, session, 0)
    line.play(np.concatenate([bursts(6), silence(1.5)]))
    line.play(np.concatenate([bursts(2), silence(1.5)]))
    await service.stop(GUID)
    first, second = await messages(storage)
    assert first.text == "my card number is #### ####"
    assert second.text == "#### ####"
    assert first.unredacted_text == "my card number is 4111 1111"
    assert first.sequence == 1 and second.sequence == 2


@pytest_twisted.ensureDeferred
async def test_a_held_utterance_is_released_when_its_hold_back_runs_out(storage):
    clock = task.Clock()
    stored = defer.Deferred()
    words = ["my", "zip", "is", "1234"]
    service = make_service(storage, fake_backend(words=words), clock=clock,
                           on_utterance=(stored.callback,))
    session = await offered(service)
    await start(service)
    Line(service, session, 0).play(np.concatenate([bursts(4), silence(1.5)]))
    # It ends in a number that might go on: held, not stored yet.
    assert not stored.called
    clock.advance(service.utterances.redaction.hold_back)
    message = await stored.addTimeout(10, reactor)
    assert message.text.startswith("my zip is")
    await service.stop(GUID)


@pytest_twisted.ensureDeferred
async def test_unredacted_text_reaches_no_log_and_no_storage_when_redacted_only(storage):
    handed = []
    service = make_service(storage, fake_backend(words=PIN_WORDS), on_utterance=(handed.append,))
    session = await offered(service)
    events = []

    def observe(event):
        events.append(formatEvent(event) + repr(sorted(map(str, event.values()))))

    globalLogPublisher.addObserver(observe)
    try:
        await start(service, detailed_token=True)
        Line(service, session, 0).play(pin_audio())
        await service.stop(GUID)
        service.call_ended(session, "bye")
        await service.drain()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert events and not any("1234" in e for e in events)
    (m,) = await messages(storage)
    assert "1234" not in repr(m) and "1234" not in repr(handed)


# -- fail closed: nothing between the recogniser and storage loses an utterance ----------


@pytest.mark.parametrize("what", ["formatting", "redaction"])
@pytest_twisted.ensureDeferred
async def test_an_utterance_that_made_formatting_or_redaction_raise_is_kept_masked(
        storage, monkeypatch, what):
    # The formatter raising (as an IndexError on "two three oh one..." did)
    # or a redaction hook raising: the utterance is still stored and handed
    # on, every word masked, nothing unredacted kept, one error line
    # without the words.
    handed, logged = [], []

    def broken(*args):
        raise IndexError("list index out of range")

    if what == "formatting":
        monkeypatch.setattr("siprecd.transcribe.utterances.format_spoken_numbers", broken)
        service = make_service(storage, fake_backend(words=PIN_WORDS),
                               on_utterance=(handed.append,))
    else:
        service = make_service(storage, fake_backend(words=PIN_WORDS), redact=broken,
                               on_utterance=(handed.append,))
    session = await offered(service)
    await start(service, detailed_token=True, redaction_output="redacted_and_unredacted")
    globalLogPublisher.addObserver(logged.append)
    try:
        Line(service, session, 0).play(pin_audio())
        await service.stop(GUID)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    (m,) = await messages(storage)
    assert m.text == "#### #### #### #### #### #### ####"
    assert m.unredacted_text is None
    assert [t["content"] for t in m.tokens] == ["####"] * 7
    assert [h.id for h in handed] == [m.id] and handed[0].text == m.text
    errors = [formatEvent(e) for e in logged if e.get("log_level") == LogLevel.error]
    assert len(errors) == 1 and "IndexError" in errors[0] and "every word masked" in errors[0]
    assert not any(w in formatEvent(e) for e in logged for w in ("pin", "one two"))


# -- every stream, several sessions per guid, wideband --------------------------------


@pytest_twisted.ensureDeferred
async def test_two_sessions_of_one_guid_are_one_conversation_kept_apart(storage):
    service = make_service(storage)
    near = await offered(service, call_id="near@sbc.example")
    far = await offered(service, call_id="far@sbc.example")
    result = await start(service)
    assert {s["callId"] for s in result["streams"]} == {"near@sbc.example", "far@sbc.example"}
    assert len({s["streamId"] for s in result["streams"]}) == 4
    # The first session's streams are the roles' main ones.
    assert [s["primary"] for s in result["streams"]] == [True, True, False, False]
    lines = [Line(service, near, 0), Line(service, far, 0), Line(service, far, 1)]
    lines[0].play(np.concatenate([tone(0.3), silence(1.0)]))
    lines[1].play(np.concatenate([tone(0.3), silence(1.0)]))
    # The first session ends: the second goes on, transcribed, and the
    # conversation stays active.
    service.call_ended(near, "bye from SRC")
    await service.drain()
    assert service.is_active(GUID) and service.is_streaming(GUID)
    assert (await storage.get_call_by_guid(GUID)).state == "active"
    lines[2].play(np.concatenate([tone(0.3), silence(1.0)]))
    stopped = await service.stop(GUID)
    # Stop reaches the sessions still up.
    assert {s["callId"] for s in stopped["streams"]} == {"far@sbc.example"}
    found = await messages(storage)
    far_ids = {s["streamId"] for s in result["streams"] if s["callId"] == "far@sbc.example"}
    assert len(found) == 3 and len({m.stream_id for m in found} & far_ids) == 2
    service.call_ended(far, "bye from SRC")
    await service.drain()
    assert (await storage.get_call_by_guid(GUID)).state == "ended"
    stored = await storage.get_call_by_guid(GUID)
    assert [s["callId"] for s in stored.sip["sessions"]] == ["near@sbc.example",
                                                            "far@sbc.example"]


@pytest.mark.parametrize("extra_role", ["agent", "customer"])
@pytest_twisted.ensureDeferred
async def test_a_third_stream_is_transcribed_in_the_extra_role(storage, extra_role):
    service = make_service(storage, extra_role=extra_role)
    session = await offered(service, streams=3)
    result = await start(service)
    assert [(s["label"], s["role"]) for s in result["streams"]] == [
        ("1", "customer"), ("2", "agent"), ("3", extra_role)]
    assert result["streams"][2]["participant"]["aor"] == "sip:party3@cc.example.com"
    Line(service, session, 2).play(np.concatenate([tone(0.3), silence(1.0)]))
    await service.stop(GUID)
    (m,) = await messages(storage)
    assert m.role == extra_role and m.stream_id == result["streams"][2]["streamId"]
    assert m.stream_params["participant"]["aor"] == "sip:party3@cc.example.com"


@pytest_twisted.ensureDeferred
async def test_wideband_pcm_keeps_true_times(storage):
    """16 kHz PCM (G.722) on its own timeline: the utterance's times in ms
    are those of the audio, whatever the rate."""
    service = make_service(storage)
    session = await offered(service)
    await start(service)
    line = Line(service, session, 0)
    audio = np.concatenate([silence(0.5), tone(0.4), silence(1.0)])
    wide = np.repeat(audio, 2)                     # the same audio at 16 kHz
    for i in range(0, len(wide), 320):
        service.pcm(line.stream, i, wide[i:i + 320], 16000)
    stopped = await service.stop(GUID)
    (m,) = await messages(storage)
    assert abs(m.start_ms - 500) <= 40
    assert stopped["customer"]["summary"]["audioDurationMs"] == 1900
