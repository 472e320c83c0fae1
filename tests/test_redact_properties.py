"""Properties of redaction on any input (hypothesis)."""

import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from siprecd.redact import CallRedactor, Policy, detect, redact_text, redact_tokens
from siprecd.redact import tokens as tk
from siprecd.asr.results import Token

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOCAB = [
    "my", "card", "number", "is", "the", "cvv", "pin", "social", "phone", "call", "me", "at",
    "okay", "uh", "um", "dash", "and", "oh", "double", "triple", "for", "to", "april", "dot",
    "gmail", "com", "expires", "kids", "dollars", "$25", "3:30", "21st", "25.99", "order",
    "street", "plus", "hundred", "thousand", "twenty", "eleven", "four", "one", "nine",
    "security", "code", "last", "digits", "####", "-", "", "john", "y", "mil", "cuatro",
    "tarjeta", "arroba", "punto", "what's", "it's", "(555)", "+44", "A12345", "12/25",
]
# Words that never take part in a number: what a card said on its own sits between.
PLAIN = ["my", "card", "is", "the", "okay", "please", "thanks", "visa", "so", "right",
         "kids", "expires", "number", "it's", "cvv", "and", "hello", "yes"]

word = st.one_of(
    st.sampled_from(VOCAB),
    st.text(min_size=0, max_size=12),
    st.from_regex(r"[0-9]{1,24}", fullmatch=True),
    st.from_regex(r"[0-9+()\-./,$:%#]{1,12}", fullmatch=True),
    st.text(alphabet=string.ascii_letters + string.digits + "@._-'", min_size=1, max_size=20),
)
words = st.lists(word, max_size=40)
PREFIXES = ["4", "4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "3530", "36", "62"]


def as_tokens(contents, start=0):
    return [Token(w, start + i * 300, start + i * 300 + 250, 0.5) for i, w in enumerate(contents)]


@st.composite
def card_numbers(draw):
    prefix = draw(st.sampled_from(PREFIXES))
    length = {"34": 15, "37": 15, "36": 14}.get(prefix, 16)
    body = prefix + draw(st.from_regex(rf"[0-9]{{{length - len(prefix) - 1}}}", fullmatch=True))
    for check in "0123456789":
        if detect.luhn_ok(body + check):
            number = body + check
            break
    assume(detect.issuer(number) is not None)
    return number


def render(number, style):
    """A card number as tokens, said one of the ways people say them."""
    if style == "token":
        return [number]
    if style == "groups":
        return [number[i:i + 4] for i in range(0, len(number), 4)]
    if style == "dashed":
        return ["-".join(number[i:i + 4] for i in range(0, len(number), 4))]
    if style == "digits":
        return list(number)
    if style == "words":
        return [ONES[int(d)] for d in number]
    if style == "oh":
        return ["oh" if d == "0" else ONES[int(d)] for d in number]
    raise AssertionError(style)


STYLES = st.sampled_from(["token", "groups", "dashed", "digits", "words", "oh"])


def card_positions_masked(before, after, positions):
    for k in positions:
        original, masked = before[k].content, after[k].content
        assert not any(c.isdigit() for c in masked), (original, masked)
        if not any(c.isdigit() for c in original):
            assert masked == "####", (original, masked)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(words)
def test_never_crashes_and_keeps_tokens_and_times(contents):
    tokens = as_tokens(contents)
    result = redact_tokens(tokens, Policy(email=True))
    assert len(result.tokens) == len(tokens)
    for a, b in zip(tokens, result.tokens):
        assert (a.start, a.end, a.confidence) == (b.start, b.end, b.confidence)
    assert result.text == " ".join(t.content for t in result.tokens)
    covered = set()
    for span in result.spans:
        assert 0 <= span.first <= span.last < len(tokens)
        assert (span.start, span.end) == (tokens[span.first].start, tokens[span.last].end)
        covered.update(range(span.first, span.last + 1))
    # No # where the policy found nothing.
    for k, (a, b) in enumerate(zip(tokens, result.tokens)):
        if k not in covered:
            assert a is b
        elif a.content != b.content:
            assert b.content.count("#") > a.content.count("#")


@settings(max_examples=300)
@given(st.text(max_size=300), st.sampled_from(["en-US", "es-US", "es-MX", "xx", ""]))
def test_redact_text_never_crashes(text, language):
    out = redact_text(text, Policy(email=True), language)
    assert len(out.split()) == len(text.split())
    if "#" not in out:
        assert out == text


@settings(max_examples=300)
@given(card_numbers(), STYLES, st.lists(st.sampled_from(PLAIN), max_size=6),
       st.lists(st.sampled_from(PLAIN), max_size=6))
def test_card_digits_never_survive(number, style, before, after):
    said = render(number, style)
    contents = before + said + after
    tokens = as_tokens(contents)
    result = redact_tokens(tokens, Policy(short_numerics=False, spoken_card_numbers=False,
                                          phone_numbers=False, ten_digit=False))
    card_positions_masked(tokens, result.tokens, range(len(before), len(before) + len(said)))


@settings(max_examples=200)
@given(card_numbers(), st.sampled_from(["token", "groups", "dashed"]),
       st.from_regex(r"[0-9]{1,3}", fullmatch=True), st.from_regex(r"[0-9]{1,4}", fullmatch=True))
def test_card_digits_never_survive_next_to_other_digits(number, style, lead, tail):
    # A stray number said before it, an expiry or CVV after it.
    said = render(number, style)
    tokens = as_tokens(["it's", lead] + said + [tail, "okay"])
    result = redact_tokens(tokens, Policy())
    card_positions_masked(tokens, result.tokens, range(2, 2 + len(said)))


@settings(max_examples=200, deadline=None)
@given(card_numbers(), st.sampled_from(["split", "groups", "digits", "words", "oh"]),
       st.integers(min_value=2, max_value=4), st.data())
def test_card_split_across_utterances_never_survives(number, style, parts, data):
    # "split": digits cut anywhere, each part one token ("4111 11" / "11 ...").
    said = list(number) if style == "split" else render(number, style)
    cuts = sorted(data.draw(st.lists(st.integers(1, len(said) - 1), min_size=parts - 1,
                                     max_size=parts - 1, unique=True)))
    pieces = [said[a:b] for a, b in zip([0] + cuts, cuts + [len(said)])]
    if style == "split":
        pieces = [["".join(piece)] for piece in pieces]
    redactor = CallRedactor(Policy(hold_back=10.0))
    released = []
    t_ms, now = 0, 0.0
    fed = []
    for i, piece in enumerate(pieces):
        contents = (["it's"] if i == 0 else []) + piece
        tokens = as_tokens(contents, t_ms + 600)
        t_ms = tokens[-1].end
        now += 1.0
        fed.append(tokens)
        released.extend(redactor.feed("customer", "customer", tokens, now, ref=i))
        if data.draw(st.booleans()):
            released.extend(redactor.feed("agent", "agent", as_tokens(["uh", "huh"], t_ms), now))
    released.extend(redactor.flush_all(now))
    mine = [r for r in released if r.stream == "customer"]
    assert [r.ref for r in mine] == list(range(len(pieces)))
    for r, tokens in zip(mine, fed):
        first = 1 if r.ref == 0 else 0
        card_positions_masked(tokens, r.redacted_tokens, range(first, len(tokens)))


operations = st.lists(st.tuples(
    st.sampled_from(["feed", "feed", "feed", "due", "flush"]),
    st.sampled_from(["a", "b", "c"]),
    words,
    st.floats(min_value=0, max_value=5, allow_nan=False),
), max_size=25)


@settings(max_examples=200, deadline=None)
@given(operations, st.floats(min_value=0, max_value=5), st.floats(min_value=0, max_value=10))
def test_call_redactor_releases_everything_once_in_order(ops, hold_back, lookback):
    redactor = CallRedactor(Policy(hold_back=hold_back, lookback=lookback, email=True))
    now, t_ms = 0.0, 0
    fed, released = [], []
    for op, stream, contents, step in ops:
        now += step
        if op == "feed":
            tokens = as_tokens(contents, t_ms)
            t_ms += 300 * len(contents) + 500
            fed.append((stream, len(fed)))
            released.extend(redactor.feed(stream, stream, tokens, now, ref=(stream, len(fed) - 1)))
        elif op == "due":
            released.extend(redactor.due(now))
        else:
            released.extend(redactor.flush(stream, now))
        deadline = redactor.next_deadline()
        assert deadline is None or deadline >= now - 1e-9 or redactor.pending()
    released.extend(redactor.flush_all(now))
    assert redactor.pending() == 0 and redactor.next_deadline() is None
    assert sorted(r.ref for r in released) == sorted(fed)
    for stream in "abc":
        refs = [r.ref for r in released if r.stream == stream]
        assert refs == sorted(refs, key=lambda ref: ref[1])
    for r in released:
        assert len(r.redacted_tokens) == len(r.tokens)
        assert r.held >= 0


@given(st.from_regex(r"[0-9]{0,40}", fullmatch=True), st.lists(st.integers(0, 40), max_size=5))
def test_find_card_agrees_with_a_plain_search(digits, starts):
    found = detect.find_card(digits, starts)
    if found is not None:
        i, end = found
        assert detect.luhn_ok(digits[i:end]) and detect.issuer(digits[i:end])
    elif 13 <= len(digits) <= 19:
        assert not (detect.luhn_ok(digits) and detect.issuer(digits))


@given(st.lists(st.sampled_from(ONES + ["ten", "eleven", "twenty", "forty", "hundred",
                                        "thousand", "oh", "double", "and"]), max_size=12))
def test_spell_never_crashes_and_gives_digits(contents):
    atoms = [a for w in contents for a in tk.shape(w).atoms]
    digits = tk.spell(atoms)
    assert digits == "" or digits.isdigit()
    assert "".join(tk.spell_groups(atoms)) == digits


# -- spoken-number formatting: never raises, never loses a word -------------------------

SPOKEN = (
    ONES + ["oh", "o", "zero", "double", "triple", "hundred", "thousand", "and", "a", "point",
            "ten", "eleven", "twelve", "thirteen", "fifteen", "nineteen", "twenty", "thirty",
            "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "twenty-one",
            "sixty-four", "forty-one", "first", "second", "half", "quarter", "minus",
            "uh", "um", "er", "like", "so", "sorry", "I", "mean", "no", "wait", "actually",
            "scratch", "that", "let", "me", "start", "again", "it's", "my", "card", "is",
            "dash", "slash", "of", "at", "dot", "underscore", "gmail", "com",
            ",", ".", "-", "?", "four,", "nine.", "Two", "THREE", "oh-four", "'s",
            "cuatro", "veinte", "y", "uno", "cien", "mil",
            "4", "0", "12", "4111", "4111-1111", "$25", "3:30", "1st", "(555)", "+44"]
)
spoken_word = st.one_of(
    st.sampled_from(SPOKEN),
    st.sampled_from(["", " ", "a b", "\u200b", "\u00a0", "４", "٣", "½", "²", "é", "🙂",
                     "one\ttwo", "e\u0301"]),
    st.text(max_size=8),
)


@st.composite
def utterances(draw):
    """Tokens of one utterance in time order, as a recogniser gives them
    (words may touch, or last no time at all)."""
    contents = draw(st.lists(spoken_word, max_size=30))
    t = draw(st.integers(0, 10 ** 7))
    tokens = []
    for content in contents:
        t += draw(st.integers(0, 400))
        length = draw(st.integers(0, 600))
        tokens.append(Token(content, t, t + length, draw(st.floats(0, 1))))
        t += length
    return tokens


def assert_every_word_kept(spoken, formatted):
    if not spoken:
        assert formatted == []
        return
    assert formatted, "an utterance became nothing"
    first, last = spoken[0].start, spoken[-1].end
    for a, b in zip(formatted, formatted[1:]):
        assert a.start <= b.start and a.end <= b.end, (a, b)
    for t in formatted:
        assert first <= t.start <= t.end <= last, t
        assert isinstance(t.content, str)
    for word in spoken:
        # Every spoken word's time lies inside one formatted token.
        assert any(t.start <= word.start and word.end <= t.end for t in formatted), word


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(utterances(), st.sampled_from(["en-US", "en-GB", "es-MX", "es-US", "ko", None]))
def test_formatting_never_raises_or_loses_a_word(spoken, language):
    from siprecd.numbers import format_numbers

    assert_every_word_kept(spoken, format_numbers(spoken, language))


def test_formatting_keeps_the_read_out_that_once_crashed_it():
    from siprecd.numbers import format_numbers

    spoken = as_tokens("it's two three oh one four seven nine oh one".split())
    out = format_numbers(spoken, "en-US")
    assert_every_word_kept(spoken, out)
    # And the nine digits are redacted.
    result = redact_tokens(out, Policy())
    assert result.tokens[0].content == "it's"
    assert all(set(t.content) == {"#"} for t in result.tokens[1:]), result.text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(utterances(), st.sampled_from(["en-US", "es-MX"]),
       st.sampled_from([(), ("card",), ("secret", "card"), ("ssn",), ("phone",)]))
def test_redacting_formatted_speech_never_raises_and_keeps_tokens(spoken, language, context):
    from siprecd.numbers import format_numbers

    tokens = format_numbers(spoken, language)
    result = redact_tokens(tokens, Policy(email=True), language, context)
    assert len(result.tokens) == len(tokens)
    for a, b in zip(tokens, result.tokens):
        assert (a.start, a.end, a.confidence) == (b.start, b.end, b.confidence)
    for span in result.spans:
        assert 0 <= span.first <= span.last < len(tokens)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), utterances(),
                          st.floats(0, 4, allow_nan=False)), max_size=12))
def test_call_redactor_on_formatted_speech_releases_each_utterance_once(fed):
    from siprecd.numbers import format_numbers

    redactor = CallRedactor(Policy(email=True))
    now, released, t_ms = 0.0, [], 0
    for k, (stream, spoken, step) in enumerate(fed):
        now += step
        shifted = [Token(t.content, t.start + t_ms, t.end + t_ms, t.confidence) for t in spoken]
        t_ms = (shifted[-1].end if shifted else t_ms) + 100
        tokens = format_numbers(shifted, "en-US")
        released.extend(redactor.feed(stream, stream, tokens, now, ref=(k, len(tokens))))
    released.extend(redactor.flush_all(now))
    assert sorted(r.ref[0] for r in released) == list(range(len(fed)))
    for r in released:
        assert len(r.redacted_tokens) == len(r.tokens) == r.ref[1]
        assert [(t.start, t.end) for t in r.redacted_tokens] == [
            (t.start, t.end) for t in r.tokens]
