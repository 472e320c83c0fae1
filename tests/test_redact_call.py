"""A call's redaction over time: hold-back, look-back, context, order."""

import re

import pytest
from twisted.internet import task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from siprecd.redact import (
    CARD_NUMBER,
    SHORT_NUMERIC,
    SPOKEN_CARD_NUMBER,
    CallRedactor,
    Policy,
    ReleaseTimer,
)
from siprecd.asr.results import Token
from siprecd.numbers import format_numbers


class Talk:
    """Utterances on one call timeline: each word 300 ms, *gap* ms between
    utterances; an utterance is fed 0.5 s after its last word."""

    def __init__(self, redactor):
        self.redactor = redactor
        self.t_ms = 0
        self.released = []

    def say(self, stream, text, gap=700, role=None):
        start = self.t_ms + gap
        tokens = [Token(w, start + i * 300, start + i * 300 + 250, 0.9)
                  for i, w in enumerate(text.split())]
        self.t_ms = start + 300 * len(tokens)
        tokens = format_numbers(tokens, "en-US")
        out = self.redactor.feed(stream, role or stream, tokens, self.now, ref=text)
        self.released.extend(out)
        return out

    @property
    def now(self):
        return self.t_ms / 1000 + 0.5

    def wait(self, seconds):
        self.t_ms += int(seconds * 1000)
        out = self.redactor.due(self.now)
        self.released.extend(out)
        return out

    def texts(self, released=None):
        return [r.redacted_text for r in (self.released if released is None else released)]


def test_utterance_without_a_number_at_its_end_goes_at_once():
    talk = Talk(CallRedactor(Policy()))
    (r,) = talk.say("c", "my pin is one two three four and that's it")
    assert r.redacted_text == "my pin is #### and that's it"
    assert r.held == 0
    assert r.ref == "my pin is one two three four and that's it"
    assert talk.redactor.next_deadline() is None


def test_card_split_across_utterances_is_caught_whole():
    # Eight digits take 2.4 s to say: the first half waits up to 5 s.
    talk = Talk(CallRedactor(Policy(hold_back=5.0)))
    assert talk.say("c", "yeah it is four one one one one one one one") == []
    assert talk.redactor.pending("c") == 1
    assert talk.redactor.next_deadline() == pytest.approx(talk.now + 5.0)
    first, second = talk.say("c", "one one one one one one one one")
    assert first.redacted_text == "yeah it is ########"
    assert second.redacted_text == "########"
    assert first.kinds == second.kinds == {CARD_NUMBER}
    assert first.held > 0 and second.held == 0
    assert first.ref == "yeah it is four one one one one one one one"
    assert talk.redactor.pending() == 0


def test_card_in_four_groups_with_backchannels_from_the_agent():
    talk = Talk(CallRedactor(Policy()))
    talk.say("agent", "what's the card number please")
    talk.say("customer", "it's four one one one")
    talk.say("agent", "uh huh")
    talk.say("customer", "one one one one")
    talk.say("agent", "okay")
    talk.say("customer", "one one one one")
    talk.say("customer", "one one one one")
    talk.say("customer", "did you get that")
    customer = [r for r in talk.released if r.stream == "customer"]
    assert talk.texts(customer) == ["it's ####", "####", "####", "####", "did you get that"]
    assert all(r.kinds for r in customer[:4])
    assert CARD_NUMBER in customer[3].kinds


def test_hold_back_is_bounded_and_due_releases():
    talk = Talk(CallRedactor(Policy(hold_back=2.0)))
    assert talk.say("c", "my order is at 4 1 2 8") == []
    assert talk.wait(1.0) == []
    assert talk.redactor.next_deadline() == pytest.approx(talk.now + 1.0)
    (r,) = talk.wait(1.5)
    assert r.redacted_text == "my order is at 4128"
    assert r.held == pytest.approx(2.5, abs=0.01)  # released when due() was called
    assert talk.redactor.next_deadline() is None


def test_first_half_released_by_the_deadline_then_look_back_catches_the_rest():
    # No card context: the first half alone is not sensitive, but it starts
    # like a card and is still open when its hold-back runs out.
    talk = Talk(CallRedactor(Policy(hold_back=1.0)))
    talk.say("c", "so it's four one one one one one one one")
    (first,) = talk.wait(1.0)
    assert first.kinds == {SPOKEN_CARD_NUMBER}
    (second,) = talk.say("c", "one one one one one one one one", gap=1500)
    assert second.redacted_text == "########"
    assert second.kinds == {CARD_NUMBER}


def test_without_hold_back_look_back_still_redacts_the_rest():
    talk = Talk(CallRedactor(Policy(hold_back=0)))
    (first,) = talk.say("c", "so it's four one one one")
    (second,) = talk.say("c", "one one one one one one one one one one one one")
    assert first.redacted_text == "so it's 4111"  # what could not be known in time
    assert second.redacted_text == "############"
    assert second.kinds == {CARD_NUMBER}


def test_a_number_that_starts_like_a_card_is_masked_when_it_must_go_unfinished():
    talk = Talk(CallRedactor(Policy(hold_back=0)))
    (first,) = talk.say("c", "so it's four one one one one one one one")
    assert first.redacted_text == "so it's ########"
    assert first.kinds == {SPOKEN_CARD_NUMBER}
    # Not when it is finished, nor after an identifier's name.
    talk = Talk(CallRedactor(Policy(hold_back=0)))
    assert talk.say("c", "so it's four one one one one one one one okay")[0].spans == ()
    talk = Talk(CallRedactor(Policy(hold_back=0)))
    assert talk.say("c", "order number four one one one one one one one")[0].spans == ()


def test_look_back_only_across_a_short_pause():
    talk = Talk(CallRedactor(Policy(hold_back=0, lookback=2.0)))
    talk.say("c", "so it's four one one one")
    (second,) = talk.say("c", "one one one one one one one one one one one one", gap=2500)
    assert second.redacted_text == "111111111111"


def test_a_number_already_redacted_is_not_held_and_its_rest_is_redacted_too():
    talk = Talk(CallRedactor(Policy()))
    (first,) = talk.say("c", "my card number is four one one one")
    assert first.redacted_text == "my card number is ####"
    (second,) = talk.say("c", "one one one one one one one one one one one one", gap=4000)
    assert second.redacted_text == "############"
    assert second.kinds == {CARD_NUMBER}


def test_what_follows_a_redacted_number_is_redacted():
    talk = Talk(CallRedactor(Policy()))
    talk.say("c", "four one one one one one one one one one one one one one one one")
    (cvv,) = talk.say("c", "one two three")
    assert cvv.redacted_text == "###"


def test_context_from_the_other_partys_question():
    talk = Talk(CallRedactor(Policy()))
    talk.say("agent", "and what's the three digit security code on the back")
    talk.say("customer", "one second")
    talk.say("customer", "it's one two three")
    talk.say("customer", "thanks")
    assert talk.texts() == ["and what's the 3 digit security code on the back",
                            "one second", "it's ###", "thanks"]
    assert talk.released[2].kinds == {SHORT_NUMERIC}


def test_context_expires_after_some_utterances():
    talk = Talk(CallRedactor(Policy(context_utterances=2)))
    talk.say("agent", "what's the cvv")
    for _ in range(3):
        talk.say("customer", "hmm let me look")
    talk.say("customer", "it's one two three now")
    assert talk.texts()[-1] == "it's 123 now"


def test_context_expires_after_some_time():
    talk = Talk(CallRedactor(Policy(context_window=5)))
    talk.say("agent", "what's the cvv")
    talk.say("customer", "it's one two three now", gap=6000)
    assert talk.texts()[-1] == "it's 123 now"


def test_a_new_topic_ends_card_context():
    talk = Talk(CallRedactor(Policy()))
    talk.say("agent", "thanks I have the card number")
    talk.say("agent", "and what's your billing address")
    talk.say("customer", "it's four twelve oak lane")
    talk.say("customer", "two hundred and twelve dollars")
    assert talk.texts()[-2:] == ["it's 4 12 oak lane", "212 dollars"]


def test_the_other_party_taking_the_turn_ends_a_held_number():
    talk = Talk(CallRedactor(Policy()))
    assert talk.say("customer", "my flight is two forty seven") == []
    (held, _question) = talk.say("agent", "okay and when are you travelling")
    assert held.redacted_text == "my flight is 2 47"
    assert talk.redactor.pending() == 0


def test_the_other_partys_backchannel_does_not_end_it():
    talk = Talk(CallRedactor(Policy()))
    assert talk.say("customer", "it is four one one one") == []
    assert [r.stream for r in talk.say("agent", "okay go ahead")] == ["agent"]
    assert talk.redactor.pending("customer") == 1


def test_released_in_fed_order_per_stream():
    talk = Talk(CallRedactor(Policy()))
    talk.say("c", "it is four one one one")
    talk.say("a", "mhm")
    talk.say("c", "one one one one")
    talk.say("c", "and the rest later")
    talk.say("c", "okay")
    customer = [r.ref for r in talk.released if r.stream == "c"]
    assert customer == ["it is four one one one", "one one one one", "and the rest later",
                        "okay"]


def test_flush_releases_everything_held_and_forgets_look_back():
    redactor = CallRedactor(Policy())
    talk = Talk(redactor)
    talk.say("c", "it is four one one one")
    talk.say("c", "one one one one")
    talk.say("a", "mhm")
    assert redactor.pending() == 2
    out = redactor.flush("c")
    assert [r.ref for r in out] == ["it is four one one one", "one one one one"]
    assert all(r.spans == () for r in out)  # eight digits, finished: nothing to say
    assert redactor.pending() == 0
    assert redactor.flush_all() == []
    assert redactor.flush("nobody") == []
    # Look-back is gone: a new start of the stream is a new number.
    (r,) = talk.say("c", "one one one one one one one one x")
    assert r.redacted_text == "11111111 x"


def test_tokens_and_times_are_kept():
    talk = Talk(CallRedactor(Policy(hold_back=5.0)))
    talk.say("c", "so it is four one one one")
    (first, second) = talk.say("c", "one one one one one one one one one one one one")
    assert first.kinds == second.kinds == {CARD_NUMBER}
    for r in (first, second):
        assert len(r.redacted_tokens) == len(r.tokens)
        assert [(t.start, t.end) for t in r.redacted_tokens] == [(t.start, t.end) for t in r.tokens]
        assert r.text == " ".join(t.content for t in r.tokens)
        for span in r.spans:
            assert span.start == r.tokens[span.first].start
            assert span.end == r.tokens[span.last].end


def test_empty_utterance():
    redactor = CallRedactor(Policy())
    (r,) = redactor.feed("c", "customer", [], 1.0)
    assert r.redacted_text == "" and r.spans == ()


def test_stats_and_logs_hold_no_digits():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        talk = Talk(CallRedactor(Policy(), log_context={"guid": "g-1"}))
        talk.say("c", "my card is four one one one one one one one one one one one one one one one")
        talk.say("c", "and the cvv is nine eight seven")
        talk.redactor.flush_all()
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace") == "siprecd.redact"]
    assert mine and all(e["log_level"] == LogLevel.debug for e in mine)
    for e in mine:
        assert e["guid"] == "g-1"
        text = formatEvent(e) + repr({k: v for k, v in e.items() if k != "log_logger"})
        assert not re.search(r"4111|987", text)
    assert talk.redactor.stats[CARD_NUMBER] == 1
    assert talk.redactor.stats[SHORT_NUMERIC] == 1
    assert talk.redactor.stats["utterances"] == 2


def test_unredacted_text_logged_only_when_configured():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        talk = Talk(CallRedactor(Policy(log_unredacted=True)))
        talk.say("c", "the cvv is nine eight seven")
        talk.redactor.flush_all()
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [formatEvent(e) for e in events if e.get("log_namespace") == "siprecd.redact"]
    assert any("987" in text for text in mine)


def test_release_timer_with_a_clock():
    clock = task.Clock()
    clock.advance(100)
    delivered = []
    timer = ReleaseTimer(CallRedactor(Policy(hold_back=3.0)), clock, delivered.append)
    tokens = format_numbers([Token(w, i * 300, i * 300 + 250, 1.0)
                             for i, w in enumerate(["it", "is", "four", "one", "one", "one"])],
                            "en")
    timer.feed("c", "customer", tokens, ref="first")
    assert delivered == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(2.9)
    assert delivered == []
    clock.advance(0.2)
    assert [r.ref for r in delivered] == ["first"]
    assert clock.getDelayedCalls() == []
    timer.feed("c", "customer", tokens, ref="second")
    timer.stop()
    assert [r.ref for r in delivered] == ["first", "second"]
    assert clock.getDelayedCalls() == []


def test_release_timer_survives_a_failing_delivery():
    clock = task.Clock()
    seen = []

    def deliver(released):
        seen.append(released.ref)
        raise RuntimeError("storage is down")

    timer = ReleaseTimer(CallRedactor(Policy()), clock, deliver)
    timer.feed("c", "customer", [Token("hello", 0, 100, 1.0)], ref=1)
    timer.feed("c", "customer", [Token("again", 200, 300, 1.0)], ref=2)
    assert seen == [1, 2]
