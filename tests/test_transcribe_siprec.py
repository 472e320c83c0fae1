"""Transcription through the whole SIPREC path: the simulator places a real
call (SIP over UDP, RTP in G.711 µ-law over loopback) to the daemon's
service tree running in this process; TranscriptionService is wired in
as the media plane's consumer and as a call listener, with the real
Korean Vosk model and SQLite storage.

What is compared, and why: the daemon receives the audio as G.711 µ-law,
which quantises every sample. The words are compared exactly with a bare
Vosk recogniser given the same µ-law-quantised audio directly (everything
between the simulator and the recogniser -- SIP, RTP, jitter buffer,
batching, decoding, the gate, the queue, the thread pool, the timeline map
-- must change nothing), with word times within 40 ms. Against the
original WAV, quantisation changes words: this small 16 kHz model does not
really understand espeak-ng's Korean through an 8 kHz telephone channel
and gives words that flip with the slightest change of input (even at
full bandwidth it mostly does), so the share of words that stay the same
at the same place is printed, and those must be within 40 ms.
"""

import numpy as np
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface import implementer

from harness.inprocess import start_service_tree
from siprecd.interfaces import ICallListener, IStreamConsumer
from siprecd.media import codecs
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, ko_model_dir
from siprecd.transcribe import StartRequest, TranscriptionService
from test_transcribe_service import silence
from test_transcribe_vosk import (  # noqa: F401 (backend, speech: fixtures)
    MAX_TIME_DIFFERENCE_MS, SENTENCES, backend, conversation, recognise_directly, speech,
)

SPEED = 2.0          # media twice as fast as real time


def g711(audio):
    return codecs.ulaw_decode(codecs.ulaw_encode(audio))


@implementer(ICallListener)
class StartOnOffer:
    """Calls start-streaming while the call is offered, so the 200 OK (and
    with it the first RTP packet) waits until transcription has started:
    the window begins at position 0 of each stream."""

    def __init__(self, service):
        self.service = service
        self.guids = []

    def call_offered(self, session):
        self.guids.append(session.guid.value)
        return self.service.start(StartRequest.make(
            session.guid.value, "cust-1", "agent-1", language=KO_LANGUAGE, detailed_token=True))

    def call_updated(self, session):
        pass

    def call_ended(self, session, reason):
        pass


@implementer(IStreamConsumer)
class StartStopAt:
    """Passes the media plane's output on, and calls start-streaming or
    stop-streaming when the customer's stream reaches given positions,
    as an API client watching the call would. Keeps the position each
    request was made at."""

    def __init__(self, service, schedule):
        self.service = service
        self.schedule = list(schedule)      # [(position, "start" | "stop"), ...]
        self.made = []                      # [(position, what), ...]
        # Where the customer's stream was when each request was sent and
        # when it was answered: a request waits for the answer to the one
        # before, so on a loaded machine it may take effect later than made.
        self.sent = []
        self.answered = []
        self.position = 0
        self.requests = []

    def pcm(self, stream, position, samples, rate=8000):
        if stream.audio_index == 0:
            self.position = position
            while self.schedule and position >= self.schedule[0][0]:
                _, what = self.schedule.pop(0)
                self.made.append((position, what))
                # As a client does, the next request waits for the answer to
                # the last one (a stop waits for the recogniser to finish,
                # which takes longer on a loaded machine).
                previous = self.requests[-1] if self.requests else defer.succeed(None)
                self.requests.append(self._after(previous, what, stream.guid))
        self.service.pcm(stream, position, samples, rate)

    def event(self, stream, kind, position, detail):
        self.service.event(stream, kind, position, detail)

    def _after(self, previous, what, guid):
        done = defer.Deferred()

        def send(_):
            self.sent.append(self.position)
            if what == "start":
                d = self.service.start(StartRequest.make(
                    guid, "cust-1", "agent-1", language=KO_LANGUAGE, detailed_token=True))
            else:
                d = self.service.stop(guid)
            d.addBoth(lambda r: (self.answered.append(self.position), r)[1])
            d.chainDeferred(done)

        # A second Deferred, so the result stays with the previous request.
        waiter = defer.Deferred()
        previous.addBoth(lambda r: (waiter.callback(None), r)[1])
        waiter.addCallback(send)
        return done


async def run_call(tmp_path, backend, spec, wire):
    """Start the daemon's tree, wire a TranscriptionService into it (as
    siprecd.tap will), place *spec*, wait for every utterance to be
    stored; returns (messages, storage streams, wiring, summary)."""
    root, cfg = await start_service_tree(
        tmp_path, reactor, asr={"models": {KO_LANGUAGE: str(ko_model_dir())}})
    try:
        # If the tree runs its own ASR stage, calls are refused (503) until
        # its model has loaded.
        for stage in root:
            if getattr(stage, "name", None) == "asr" and getattr(stage, "starting", None):
                await stage.starting
        service = TranscriptionService.from_config(root.config, root.node.storage, backend, reactor)
        consumer, listener = wire(service)
        root.node.media.consumer = consumer
        listeners = root.node.sip_server.listener.listeners
        listeners[:] = [x for x in listeners if not isinstance(x, TranscriptionService)]
        listeners += [service] + ([listener] if listener is not None else [])
        summary = await place_calls(
            reactor, Target("127.0.0.1", cfg["sip"]["udp"]["port"], "udp"), [spec],
            speed=SPEED, seed=1, local_host="127.0.0.1", media_host="127.0.0.1")
        assert summary.ok, summary.format()
        # The BYE has been answered; the service finalises and stores.
        await service.drain()
        (call,) = summary.calls
        guid = call.guid
        found = await root.node.storage.messages_for_guid(guid)
        streams = await root.node.storage.streams_for_guid(guid)
        stored_call = await root.node.storage.get_call_by_guid(guid)
        assert stored_call is not None and stored_call.state == "ended"
        return found, streams, summary
    finally:
        await root.stopService()


def words_of(found, role):
    return [(t["content"], t["start"], t["end"]) for m in found if m.role == role
            for t in m.tokens]


def time_difference(reference, got):
    return max((max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in zip(reference, got)),
               default=0.0)


@pytest_twisted.ensureDeferred
async def test_words_through_sip_rtp_and_g711(tmp_path, backend, speech):
    customer = conversation(speech, [0.5, 0.8, 3.0, 1.2, 0.9])
    agent = conversation(speech[::-1], [1.0, 1.0, 1.0, 2.5, 1.0])
    n = max(len(customer), len(agent))
    n += -n % 160
    customer = np.concatenate([customer, silence((n - len(customer)) / 8000)])
    agent = np.concatenate([agent, silence((n - len(agent)) / 8000)])
    spec = CallSpec(customer=customer, agent=agent, codec="PCMU")
    found, streams, _ = await run_call(tmp_path, backend, spec,
                                       lambda service: (service, StartOnOffer(service)))
    assert {s.role for s in streams} == {"customer", "agent"}
    for role, audio in (("customer", customer), ("agent", agent)):
        got = words_of(found, role)
        quantised = await recognise_directly(backend, g711(audio))
        original = await recognise_directly(backend, audio)
        assert [w[0] for w in got] == [w[0] for w in quantised]
        difference = time_difference(quantised, got)
        assert difference <= MAX_TIME_DIFFERENCE_MS
        same = same_words(original, got)
        print(f"{role}: {len(got)} words through SIPREC/RTP/G.711, all equal to the "
              f"quantised audio recognised directly (largest time difference "
              f"{difference:.1f} ms); {len(same)} of {len(got)} ({len(same) / len(got):.0%}) "
              f"also said where the original WAV's recognition says them, within "
              f"{max((time_difference([a], [b]) for a, b in same), default=0):.1f} ms")
        assert len(got) >= len(SENTENCES)
        assert all(time_difference([a], [b]) <= MAX_TIME_DIFFERENCE_MS for a, b in same)


def same_words(original, got):
    """Pairs (original word, word got) that are the same word at the same
    place: each word got is paired with the original word its time overlaps
    most, and kept when the two read the same."""
    pairs = []
    for word in got:
        overlaps = [(min(word[2], o[2]) - max(word[1], o[1]), o) for o in original]
        best = max(overlaps, default=(0, None))
        if best[0] > 0 and best[1][0] == word[0]:
            pairs.append((best[1], word))
    return pairs


@pytest_twisted.ensureDeferred
async def test_nothing_outside_the_windows_is_transcribed(tmp_path, backend, speech):
    # Customer and agent both speak five sentences, 3 s apart; the client
    # starts before the 2nd and 4th and stops after them, in the silences.
    gap = 3.0
    customer = conversation(speech, [gap] * 5)
    agent = conversation(speech[::-1], [gap] * 5)
    n = max(len(customer), len(agent))
    n += -n % 160
    customer = np.concatenate([customer, silence((n - len(customer)) / 8000)])
    agent = np.concatenate([agent, silence((n - len(agent)) / 8000)])
    bounds = {}
    for role, order in (("customer", speech), ("agent", speech[::-1])):
        position, spans = 0, []
        for sentence in order:
            position += int(gap * 8000)
            spans.append((position, position + len(sentence)))
            position += len(sentence)
        bounds[role] = spans

    def middle_of_gap_before(i):
        return bounds["customer"][i][0] - int(gap * 8000 / 2)

    schedule = [(middle_of_gap_before(1), "start"), (middle_of_gap_before(2), "stop"),
                (middle_of_gap_before(3), "start"), (middle_of_gap_before(4), "stop")]
    wiring = {}

    def wire(service):
        wiring["consumer"] = StartStopAt(service, schedule)
        return wiring["consumer"], None

    found, _, _ = await run_call(tmp_path, backend, CallSpec(customer=customer, agent=agent),
                                 wire)
    consumer = wiring["consumer"]
    results = await defer.gatherResults(consumer.requests)
    assert [what for _, what in consumer.made] == ["start", "stop", "start", "stop"]
    # A window opens at most when its start is answered and closes when
    # its stop is sent; nothing outside (start sent, stop sent) may be
    # transcribed, and a sentence wholly inside (start answered, stop sent)
    # must be.
    sent, answered = consumer.sent, consumer.answered
    windows = [(sent[0], sent[1]), (sent[2], sent[3])]
    surely_open = [(answered[0], sent[1]), (answered[2], sent[3])]
    assert results[1]["customer"]["summary"]["transcripts"] >= 1
    assert results[0]["customer"]["streamId"] == results[2]["customer"]["streamId"]

    for role in ("customer", "agent"):
        mine = [m for m in found if m.role == role]
        inside = [(m.start_ms * 8, m.end_ms * 8) for m in mine]
        # Every utterance lies in a window...
        assert all(any(a <= s and e <= b for a, b in windows) for s, e in inside), (role, inside)
        # ... on a sentence said in it (the 2nd or 4th), and each of those
        # sentences said while its window was surely open was transcribed;
        # the 1st, 3rd and 5th never were.
        said = bounds[role]
        for s, e in inside:
            assert any(a - 800 <= s and e <= b + 800 for a, b in (said[1], said[3])), (role, s, e)
        checked = [(a, b) for a, b in (said[1], said[3])
                   if any(lo <= a and b <= hi for lo, hi in surely_open)]
        assert checked, (role, said, surely_open)    # the first window is never late
        for a, b in checked:
            assert any(s < b and e > a for s, e in inside), (role, a, b, inside, surely_open)
        print(f"{role}: {len(mine)} utterances, all inside the two windows; "
              f"{len(checked)} of 2 sentences said while a window was surely open "
              f"{[(round(a / 8000, 2), round(b / 8000, 2)) for a, b in windows]} s")
