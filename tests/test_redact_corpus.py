"""The redaction goals on the project's corpus (tests/fixtures/redaction/).

Development part (written while the rules were tuned): recall >= 99% on
card numbers and SSNs, >= 97% on phones, expiries, CVVs and PINs, word
precision >= 97%. Held-out part (written after, scored once, never tuned
on): at least what it scored the first time it was run (see the corpus
README.rst). bench/redact_bench prints the whole table.
"""

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprecd.redact import Policy
from siprecd.redact.evaluate import LABELS, load, parse, ratio, replay, score

CORPUS = Path(__file__).resolve().parent / "fixtures" / "redaction"
# The default policy (e-mail is on by default).
POLICY = Policy()

DEV_RECALL = {"card": 0.99, "ssn": 0.99, "phone": 0.97, "expiry": 0.97, "cvv": 0.97, "pin": 0.97}
DEV_WORD_PRECISION = 0.97
# The held-out part's first score (see README.rst there), rounded down:
# card 49/49, ssn 7/7, phone 18/18, expiry 12/14, cvv 13/13, pin 5/5,
# account 7/9, e-mail 6/7; word precision 626/645. Expiry (85.7%) is
# under the 97% goal there, and stays as it first scored.
HELDOUT_RECALL = {"card": 1.0, "ssn": 1.0, "phone": 1.0, "expiry": 0.85, "cvv": 1.0, "pin": 1.0,
                  "account": 0.77, "email": 0.85}
HELDOUT_WORD_PRECISION = 0.97


@pytest.fixture(scope="module")
def entries():
    return replay(load(CORPUS), POLICY)


def part(entries, name):
    return [e for e in entries if e.part == name]


def test_corpus_size_and_spread():
    entries = load(CORPUS)
    dev = part(entries, "dev")
    assert len(dev) >= 2000
    assert len({e.call for e in dev}) >= 300
    labels = {label for e in dev for label, _, _ in e.mentions}
    assert labels == set(LABELS)
    # Both parties, and plenty of utterances with nothing to mask.
    assert {e.role for e in dev} == {"agent", "customer"}
    assert sum(1 for e in dev if not e.mentions) >= 800
    # Hand-written dialogues are a good part of it.
    written = [e for e in dev if e.source.endswith(".dlg")]
    assert len(written) >= 800
    # Numbers read in parts: mentions that are a whole utterance.
    pieces = [e for e in dev if len(e.mentions) == 1
              and e.mentions[0][2] - e.mentions[0][1] + 1 == len(e.words)]
    assert len(pieces) >= 300


def check(result, recall_goals, precision_goal):
    for label, goal in recall_goals.items():
        got = ratio(result["recall"][label])
        assert got >= goal, (label, got, [(e.call, " ".join(t.content for t in e.redacted))
                                          for e, miss in result["misses"] if miss == label])
    assert ratio(result["words"]) >= precision_goal, result["false_alarms"]


def test_development_part(entries):
    check(score(part(entries, "dev")), DEV_RECALL, DEV_WORD_PRECISION)


def test_held_out_part_keeps_its_first_score(entries):
    heldout = part(entries, "heldout")
    if HELDOUT_WORD_PRECISION is None:
        pytest.skip("no held-out part yet")
    assert len(heldout) >= 300
    check(score(heldout), HELDOUT_RECALL, HELDOUT_WORD_PRECISION)


def test_without_hold_back_cards_are_still_mostly_caught():
    # Look-back alone catches the rest of a split number, not its first part.
    result = score(part(replay(load(CORPUS), attrs.evolve(POLICY, hold_back=0)), "dev"))
    assert ratio(result["recall"]["card"]) >= 0.95
    assert ratio(result["words"]) >= DEV_WORD_PRECISION


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2 ** 32))
def test_calls_overlapping_in_any_order_are_redacted_the_same(seed):
    # Context, hold-back and look-back are per call and per stream: how the
    # calls' utterances interleave changes nothing.
    entries = [e for e in load(CORPUS) if e.source.endswith(".dlg")]
    one_by_one = {e.index: [t.content for t in e.redacted]
                  for e in replay(entries, POLICY, seed=None)}
    for e in replay(load(CORPUS), POLICY, seed=seed):
        if e.index in one_by_one:
            assert [t.content for t in e.redacted] == one_by_one[e.index], e.text


def test_e_mail_off_leaves_addresses():
    entries = replay([e for e in load(CORPUS) if any(m[0] == "email" for m in e.mentions)],
                     attrs.evolve(POLICY, email=False))
    assert ratio(score(entries)["recall"]["email"]) == 0


def test_markup():
    assert parse("my card is [card: four one] ok [cvv: one two three]") == (
        ["my", "card", "is", "four", "one", "ok", "one", "two", "three"],
        [("card", 3, 4), ("cvv", 6, 8)])
    with pytest.raises(ValueError):
        parse("[cards: 1]")
    with pytest.raises(ValueError):
        parse("[card: 1")
