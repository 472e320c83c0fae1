"""Fail closed: an utterance whose redaction raised goes out fully masked,
is never dropped, and the rest of the call is redacted as usual."""

import re

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from siprecd.asr.results import Token
from siprecd.numbers import format_numbers
from siprecd.redact import FAIL_CLOSED, CallRedactor, Policy, fail_closed, make_hook
from siprecd.redact import call as call_module
from siprecd.redact.failclosed import mask_everything


def said(text, start=0):
    return format_numbers([Token(w, start + i * 300, start + i * 300 + 250, 0.8)
                           for i, w in enumerate(text.split())], "en-US")


@pytest.mark.parametrize("content,masked", [
    ("four", "####"), ("4111", "####"), ("4111-1111", "####-####"), ("(555)", "(###)"),
    ("12/26", "##/##"), ("john@example.com", "####"), ("$25", "####"), ("A123", "####"),
    ("", ""), (" ", " "), ("né", "####"), ("٤١١١", "####"),
])
def test_every_token_masked(content, masked):
    assert mask_everything(content) == masked


def test_fail_closed_keeps_times_and_count():
    tokens = said("my card is four one one one and my name is ann")
    text, masked = fail_closed(tokens)
    assert len(masked) == len(tokens)
    assert [(t.start, t.end, t.confidence) for t in masked] == [
        (t.start, t.end, t.confidence) for t in tokens]
    assert text == " ".join(t.content for t in masked)
    assert not re.search(r"[0-9]|card|ann", text)
    assert fail_closed([]) == ("", ())


@pytest.fixture
def analysis_raising_on_boom(monkeypatch):
    """A stand-in for the engine's analysis (a test double) that raises
    on any sequence holding the word "boom", as a bug would."""
    real = call_module.analyse

    def analyse(slots, policy, **options):
        if any(s.content == "boom" for s in slots):
            raise IndexError("boom 4111 list index out of range")
        return real(slots, policy, **options)

    monkeypatch.setattr(call_module, "analyse", analyse)


@pytest.fixture
def events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def errors(events):
    return [e for e in events if e.get("log_namespace") == "siprecd.redact"
            and e["log_level"] == LogLevel.error]


def test_an_utterance_that_breaks_analysis_is_released_masked(analysis_raising_on_boom, events):
    redactor = CallRedactor(Policy(), log_context={"guid": "g-7"})
    out = redactor.feed("c", "customer", said("my card is four one one one boom ok"), 1.0,
                        ref="bad")
    assert [r.ref for r in out] == ["bad"]
    (bad,) = out
    assert set(bad.redacted_text.split()) == {"####"}
    assert len(bad.redacted_tokens) == len(bad.tokens)
    assert [s.kind for s in bad.spans] == [FAIL_CLOSED]
    assert (bad.spans[0].start, bad.spans[0].end) == (bad.tokens[0].start, bad.tokens[-1].end)
    # One error line, without the words or the exception's message.
    (error,) = errors(events)
    assert error["guid"] == "g-7"
    text = formatEvent(error) + repr({k: v for k, v in error.items() if k != "log_logger"})
    assert "IndexError" in text and not re.search(r"4111|boom|card", text)
    # The call goes on: the next utterances are redacted as usual.
    (cvv,) = redactor.feed("c", "customer", said("the cvv is one two three ok", 5000), 6.0)
    assert cvv.redacted_text == "the cvv is ### ok"
    (other,) = redactor.feed("a", "agent", said("thank you so much", 8000), 9.0)
    assert other.redacted_text == "thank you so much"
    assert redactor.stats[FAIL_CLOSED] == 1 and redactor.stats["released"] == 3


def test_held_utterances_chained_to_a_bad_one_go_out_masked(analysis_raising_on_boom, events):
    redactor = CallRedactor(Policy(hold_back=5.0))
    # Ends in a number: held for the rest of it.
    assert redactor.feed("c", "customer", said("it's four one two"), 1.0, ref=1) == []
    assert redactor.pending() == 1
    out = redactor.feed("c", "customer", said("boom three", 2000), 3.0, ref=2)
    assert [r.ref for r in out] == [1, 2]
    for r in out:
        assert re.fullmatch(r"[# ]+", r.redacted_text)
    assert redactor.pending() == 0 and redactor.next_deadline() is None
    assert len(errors(events)) == 1
    (after,) = redactor.feed("c", "customer", said("okay thanks", 6000), 7.0, ref=3)
    assert after.redacted_text == "okay thanks"


def test_a_failure_at_the_deadline_or_flush_also_releases_masked(monkeypatch):
    real = call_module.analyse

    def analyse_failing_when_releasing(slots, policy, **options):
        # A double: fine while an utterance is held, raises when it must go.
        if options.get("cut_utts") or options.get("final"):
            raise RuntimeError("no")
        return real(slots, policy, **options)

    monkeypatch.setattr(call_module, "analyse", analyse_failing_when_releasing)
    redactor = CallRedactor(Policy(hold_back=2.0))
    assert redactor.feed("c", "customer", said("it's five five"), 1.0, ref="y") == []
    (y,) = redactor.due(3.0)
    assert y.ref == "y" and y.redacted_text == "#### ##"
    assert redactor.feed("c", "customer", said("and four four", 3000), 4.0, ref="z") == []
    (z,) = redactor.flush_all()
    assert z.ref == "z" and z.redacted_text == "#### ##"
    assert redactor.pending() == 0


def test_hook_fails_closed(monkeypatch, events):
    def broken(*args, **kwargs):
        raise ValueError("4111 1111")

    monkeypatch.setattr(call_module, "redact_tokens", broken)
    text, tokens = make_hook(Policy())("my pin is 1234", said("my pin is one two three four"))
    assert text == "#### #### #### ####"
    assert len(tokens) == 4
    (error,) = errors(events)
    assert "4111" not in formatEvent(error)
