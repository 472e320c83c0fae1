"""Interim results through the transcription service: asked for at a
bounded rate and only when wanted, each utterance's partials under the id
its final is stored with and all before it, formatted and redacted like
finals (stricter: a number that may go on is masked), failing closed.

The recogniser is the FakeAsrBackend TEST DOUBLE (each loud stretch is a
word, named from a script): no model on this machine speaks English
digits, and these cases need words chosen exactly. The real Korean model
gives partials in test_live_daemon.py.
"""

import re

import numpy as np
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from siprecd.asr.results import AsrResult, Token, Word
from siprecd.numbers import format_numbers
from siprecd.redact import CallRedactor
from siprecd.transcribe.interim import InterimResults
from siprecd.transcribe.timeline import Timeline
from test_transcribe_service import (  # noqa: F401 (storage is a fixture)
    GUID, Line, fake_backend, make_service, messages, offered, silence, start, storage, tone,
)

CARD = "4111111111111111"
SPOKEN = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five",
          "6": "six", "7": "seven", "8": "eight", "9": "nine"}


def words_audio(count, word=0.12, gap=0.15, tail=1.0):
    """*count* words of *word* seconds, *gap* apart, then *tail* of silence."""
    parts = []
    for _ in range(count):
        parts += [tone(word), silence(gap)]
    parts.append(silence(tail))
    return np.concatenate(parts)


class Recorder:
    """Partials and finals of a service, in the order its listeners hear them."""

    def __init__(self, service):
        self.events = []
        service.on_partial.add(lambda p: self.events.append(("partial", p)))
        service.on_utterance.add(lambda m: self.events.append(("final", m)))

    def partials(self):
        return [p for kind, p in self.events if kind == "partial"]

    def finals(self):
        return [m for kind, m in self.events if kind == "final"]


def service_with_partials(storage, words, interval=0.1, wanted=None, **options):
    backend = fake_backend(words=words)
    service = make_service(storage, backend, partial_interval=interval,
                           partials_wanted=wanted, on_partial=(lambda p: None,), **options)
    return service, backend


@pytest_twisted.ensureDeferred
async def test_partials_come_before_their_final_under_its_message_id(storage):
    words = ["hello", "there", "my", "friend"]
    service, backend = service_with_partials(storage, words)
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US")
    Line(service, session, 0).play(words_audio(4))
    await service.stop(GUID)
    [final] = recorder.finals()
    partials = recorder.partials()
    assert final.text == "hello there my friend"
    assert len(partials) >= 3
    # One utterance: every partial under the final's messageId, revisions
    # counting up, each a prefix of what was finally said, all before it.
    assert {p.utterance_id for p in partials} == {final.id}
    assert [p.revision for p in partials] == list(range(1, len(partials) + 1))
    for p in partials:
        assert final.text.startswith(p.text)
    assert recorder.events[-1] == ("final", final)
    assert [m.id for m in await messages(storage)] == [final.id]
    assert partials[0].stream_id == final.stream_id and partials[0].role == "customer"
    # Partials are on the stream's timeline, as finals are.
    assert partials[-1].start_ms == final.start_ms


@pytest_twisted.ensureDeferred
async def test_each_utterance_has_its_own_id(storage):
    service, _ = service_with_partials(storage, ["alpha", "beta", "gamma", "delta"])
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US")
    line = Line(service, session, 0)
    line.play(words_audio(2))
    line.play(words_audio(2))
    await service.stop(GUID)
    finals = recorder.finals()
    assert [m.text for m in finals] == ["alpha beta", "gamma delta"]
    # The partials of the first, then those of the second (the first's
    # final may come in between or after: it is stored first); each
    # final after every partial of its own.
    ids = [p.utterance_id for p in recorder.partials()]
    assert ids == sorted(ids, key=[m.id for m in finals].index)
    assert set(ids) == {m.id for m in finals}
    for final in finals:
        last_partial = max(i for i, (kind, item) in enumerate(recorder.events)
                           if kind == "partial" and item.utterance_id == final.id)
        assert recorder.events.index(("final", final)) > last_partial


@pytest_twisted.ensureDeferred
async def test_the_rate_is_bounded_per_stream(storage):
    service, backend = service_with_partials(storage, None, interval=0.5)
    session = await offered(service)
    await start(service, language="en-US")
    Line(service, session, 0).play(np.concatenate([tone(3.0), silence(1.0)]))
    await service.stop(GUID)
    asked = [c for c in backend.recognizers[0].calls if c[0] == "accept_partial"]
    fed = sum(n for kind, n in backend.recognizers[0].calls if kind != "finish") // 2
    # At most one per 0.5 s of audio fed (the first chunk may ask).
    assert 1 <= len(asked) <= fed / (0.5 * 8000) + 1


@pytest_twisted.ensureDeferred
async def test_nothing_is_asked_while_no_one_wants_partials(storage):
    wanted = []
    service, backend = service_with_partials(
        storage, None, wanted=lambda guid, app_id, target: wanted.append((guid, app_id)) or False)
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US", app_id="app-1")
    Line(service, session, 0).play(words_audio(3))
    await service.stop(GUID)
    assert wanted and set(wanted) == {(GUID, "app-1")}
    assert all(c[0] != "accept_partial" for r in backend.recognizers for c in r.calls)
    assert recorder.partials() == [] and len(recorder.finals()) == 1


def card_words():
    return ["my", "card", "number", "is"] + [SPOKEN[d] for d in CARD] + ["thanks"]


def no_card_digit(text):
    return not re.search("[0-9]", text or "")


@pytest_twisted.ensureDeferred
async def test_no_digit_of_a_card_number_is_ever_in_a_partial(storage):
    words = card_words()
    service, _ = service_with_partials(storage, words)
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US", redaction_output="redacted_and_unredacted",
                detailed_token=True)
    Line(service, session, 0).play(words_audio(len(words)))
    await service.stop(GUID)
    partials = recorder.partials()
    # The card was being read while partials were shown.
    assert any(p.unredacted_text and re.search("[0-9]", p.unredacted_text) for p in partials)
    for p in partials:
        assert no_card_digit(p.text), p.text
        assert all(no_card_digit(t["content"]) for t in p.tokens)
    [final] = recorder.finals()
    assert no_card_digit(final.text) and CARD in final.unredacted_text.replace(" ", "")


@pytest_twisted.ensureDeferred
async def test_digits_asked_for_by_the_other_party_are_masked_in_partials(storage):
    # The agent asks for the card; the customer only reads digits.
    agent_words = ["what", "is", "your", "card", "number"]
    customer_words = [SPOKEN[d] for d in CARD[:8]]
    backend = fake_backend(words=agent_words + customer_words)
    clock = task.Clock()
    service = make_service(storage, backend, clock=clock, partial_interval=0.1,
                           on_partial=(lambda p: None,))
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US")
    Line(service, session, 1).play(words_audio(len(agent_words)))   # agent first
    Line(service, session, 0).play(words_audio(len(customer_words)))
    await service.stop(GUID)
    customer = [p for p in recorder.partials() if p.role == "customer"]
    assert customer
    for p in customer:
        assert no_card_digit(p.text), p.text


@pytest_twisted.ensureDeferred
async def test_a_partial_whose_redaction_fails_is_fully_masked(storage, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("4111 1111 in the message must not be logged")

    monkeypatch.setattr(CallRedactor, "preview", broken)
    service, _ = service_with_partials(storage, ["hello", "there"])
    recorder = Recorder(service)
    session = await offered(service)
    await start(service, language="en-US", redaction_output="unredacted")
    Line(service, session, 0).play(words_audio(2))
    await service.stop(GUID)
    partials = recorder.partials()
    assert partials and all(set(p.text.split()) == {"####"} for p in partials)
    assert all(p.unredacted_text is None for p in partials)
    assert service.partials.failed == len(partials)
    # The finals are not affected: their redaction did not fail.
    assert [m.text for m in recorder.finals()] == ["hello there"]


# -- InterimResults on its own ------------------------------------------------------------


def test_a_partial_that_loses_its_words_withdraws_the_utterance():
    out = []
    ids = iter(["u1", "u2"])
    interim = InterimResults(out.append, 800, new_id=lambda: next(ids))
    timeline = Timeline()
    timeline.fed_at(0, 8000)
    interim.partial(AsrResult("a", [Word("a", 0.1, 0.2)], final=False), timeline)
    interim.partial(AsrResult("a", [Word("a", 0.1, 0.2)], final=False), timeline)  # same
    interim.partial(AsrResult("a b", [Word("a", 0.1, 0.2), Word("b", 0.3, 0.4)], final=False),
                    timeline)
    interim.partial(AsrResult("", [], final=False), timeline)
    assert [(p.utterance_id, p.revision, p.text) for p in out] == [
        ("u1", 1, "a"), ("u1", 2, "a b"), ("u1", 3, "")]
    assert interim.close() is None
    interim.partial(AsrResult("c", [Word("c", 0.5, 0.6)], final=False), timeline)
    assert interim.close() == "u2"


def test_asking_waits_for_the_interval_and_for_the_recogniser_to_keep_up():
    interim = InterimResults(lambda p: None, 1600, behind=8000)
    assert interim.ask(1600, 0)
    assert not interim.ask(800, 0)
    assert interim.ask(800, 0)
    assert not interim.ask(1600, 9000)      # behind: not now
    assert interim.ask(1600, 100)


# -- partial redaction on its own: a card read any way never shows a digit ---------------

_LEAD = ["my card number is", "it's", "the number is", "okay so", "card"]


@st.composite
def card_readings(draw):
    digits = [draw(st.integers(0, 9)) for _ in range(15)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d2 = d * 2 if i % 2 == 0 else d
        total += d2 - 9 if d2 > 9 else d2
    card = "".join(map(str, digits)) + str((10 - total % 10) % 10)
    groups = draw(st.sampled_from([(4, 4, 4, 4), (16,), (1,) * 16, (2,) * 8, (4, 6, 6)]))
    spoken = draw(st.booleans())
    words, at = draw(st.sampled_from(_LEAD)).split(), 0
    for size in groups:
        piece = card[at:at + size]
        at += size
        words += [SPOKEN[c] for c in piece] if spoken else [piece]
        if draw(st.booleans()):
            words.append("uh")
    return card, words


def test_numbers_the_words_make_an_amount_time_or_count_are_shown():
    redactor = CallRedactor()
    for text in ("it costs $25 today", "call me at 3:30 please", "I have 2 kids at home"):
        tokens = [Token(w, 300 * i, 300 * i + 250, 1.0) for i, w in enumerate(text.split())]
        assert redactor.preview("c", "customer", tokens, 0.0).text == text
    # ... but not at the end, where the number may still go on.
    tokens = [Token(w, 300 * i, 300 * i + 250, 1.0) for i, w in enumerate("it is 25".split())]
    assert redactor.preview("c", "customer", tokens, 0.0).text == "it is ##"


@settings(max_examples=60, deadline=None)
@given(card_readings())
def test_no_prefix_of_a_card_reading_shows_a_digit(reading):
    card, words = reading
    redactor = CallRedactor()
    tokens = [Token(w, 300 * i, 300 * i + 250, 1.0) for i, w in enumerate(words)]
    for end in range(1, len(tokens) + 1):
        shown = redactor.preview("customer", "customer",
                                 format_numbers(tokens[:end], "en-US"), 0.0)
        assert no_card_digit(shown.text), (words[:end], shown.text)
