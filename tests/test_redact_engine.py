"""One utterance at a time: what is redacted, and how it looks."""

import attrs
import pytest

from siprecd.redact import (
    CARD_NUMBER,
    EMAIL,
    NINE_DIGIT,
    PHONE_NUMBER,
    SHORT_NUMERIC,
    SPOKEN_CARD_NUMBER,
    SSN,
    TEN_DIGIT,
    Policy,
    make_hook,
    redact_text,
    redact_tokens,
)
from siprecd.asr.results import Token
from siprecd.numbers import format_numbers


def spoken(text, language="en-US", start=0):
    """Tokens as the pipeline has them: one word each 300 ms, then numbers formatted."""
    tokens = [Token(w, start + i * 300, start + i * 300 + 250, 0.9)
              for i, w in enumerate(text.split())]
    return format_numbers(tokens, language)


def redact(text, policy=None, language="en-US", context=()):
    return redact_tokens(spoken(text, language), policy or Policy(), language, context)


@pytest.mark.parametrize("text,expected,kinds", [
    # cards, however said
    ("my card is four one one one one one one one one one one one one one one one",
     "my card is ################", {CARD_NUMBER}),
    ("forty one eleven eleven eleven eleven eleven eleven eleven",
     "## ## ## ## ## ## ## ##", {CARD_NUMBER}),
    ("it's 4111 1111 1111 1111", "it's #### #### #### ####", {CARD_NUMBER}),
    ("it's 4111-1111-1111-1111.", "it's ####-####-####-####.", {CARD_NUMBER}),
    ("five five five five five five five five five five five five four four four four",
     "################", {CARD_NUMBER}),
    ("three seven eight two eight two two four six three one oh oh oh five",
     "########### #### #### #### #", {CARD_NUMBER}),
    ("four one one one uh one one one one uh one one one one uh one one one one",
     "#### uh #### uh #### uh ####", {CARD_NUMBER}),
    ("four one one one dash one one one one dash one one one one dash one one one one",
     "#### dash #### dash #### dash ####", {CARD_NUMBER}),
    ("four double one one triple one one one one one one one one one one",
     "# #### ## #### ##########", {CARD_NUMBER}),
    ("the number is four thousand one hundred eleven eleven eleven eleven eleven eleven eleven",
     "the number is #### ## ## ## ## ## ##", {CARD_NUMBER}),
    # a card and what follows it in the same breath
    ("four one one one one one one one one one one one one one one one oh four two six",
     "################ #### ###", {CARD_NUMBER}),
    # SSN and nine digits
    ("my social is one two three four five six seven eight nine", "my social is #########", {SSN}),
    ("123-45-6789", "###-##-####", {SSN}),
    ("my member id is one two three four five six seven eight nine",
     "my member id is #########", {NINE_DIGIT}),
    ("the last four of my social are six seven eight nine",
     "the last 4 of my social are ####", {SSN}),
    # phones and ten digits
    ("call me at two one two five five five oh one nine nine",
     "call me at ###### #### ###", {PHONE_NUMBER}),
    ("my number is (212) 555-0199", "my number is (###) ###-####", {PHONE_NUMBER}),
    ("my number is five five five oh one nine nine", "my number is ### #### ###", {PHONE_NUMBER}),
    ("the account is 1234567890", "the account is ##########", {TEN_DIGIT}),
    # short numerics in card context
    ("the cvv is one two three", "the cvv is ###", {SHORT_NUMERIC}),
    ("my PIN number is one two three four", "my PIN number is ####", {SHORT_NUMERIC}),
    ("expires oh four twenty six", "expires #### # ##", {SHORT_NUMERIC}),
    ("it expires april twenty twenty six", "it expires #### ## ##", {SHORT_NUMERIC}),
    ("exp 04/26", "exp ##/##", {SHORT_NUMERIC}),
    ("my pin's two two four eight", "my pin's ####", {SHORT_NUMERIC}),
    # card numbers misheard, in card context
    ("my card number is four one one one one one one one one one one one one one one two",
     "my card number is ################", {SPOKEN_CARD_NUMBER}),
    # Spanish
])
def test_redacts(text, expected, kinds):
    result = redact(text)
    assert result.text == expected
    assert result.kinds == kinds


@pytest.mark.parametrize("text", [
    "I have two kids", "I have 3 kids", "it costs twenty five dollars", "they charged me $49.99",
    "at three thirty", "around 10:30", "I live at one twenty three main street",
    "my zip code is nine oh two one oh", "on march fifth twenty twenty four",
    "my order number is four one one one one one one one one one one one one one one two",
    "order number one two three four", "one of them", "oh I see", "double check that",
    "I was born in nineteen eighty five", "the package came on the 21st",
    "my card was charged one hundred fifty dollars", "I've had this card for ten years",
    "my card got declined at seven eleven", "I'm waiting for twenty minutes",
    "the pin didn't work twice", "extension four five six", "it's room three oh five",
    "I'm at work until five", "look at google dot com", "I'm good at math",
    "we arrive at noon", "at least twenty dollars", "she's at home right now",
    "he works at yahoo", "it was on the dot at six",
    "the agent told me the card would arrive in seven to ten days",
])
def test_leaves_alone(text):
    tokens = spoken(text)
    result = redact_tokens(tokens, Policy())
    assert result.spans == ()
    assert result.tokens == tuple(tokens)
    assert result.text == " ".join(t.content for t in tokens)


@pytest.mark.parametrize("text,expected,kinds", [
    ("mi tarjeta es cuatro uno uno uno uno uno uno uno uno uno uno uno uno uno uno uno",
     "mi tarjeta es ################", {CARD_NUMBER}),
    ("el código de seguridad es uno dos tres", "el código de seguridad es ###", {SHORT_NUMERIC}),
    ("mi número de seguro social es uno dos tres cuatro cinco seis siete ocho nueve",
     "mi número de seguro social es #########", {SSN}),
    ("mi correo es ana arroba gmail punto com", "mi correo es #### #### #### #### ####", {EMAIL}),
])
def test_spanish(text, expected, kinds):
    result = redact(text, Policy(email=True), "es-US")
    assert result.text == expected
    assert result.kinds == kinds


def test_tokens_keep_their_number_and_times():
    tokens = spoken("my card is four one one one one one one one one one one one one one one one "
                    "and my pin is one two three four")
    result = redact_tokens(tokens, Policy())
    assert len(result.tokens) == len(tokens)
    for before, after in zip(tokens, result.tokens):
        assert (before.start, before.end, before.confidence) == (after.start, after.end,
                                                                 after.confidence)
    assert [t.content for t in result.tokens] == [
        "my", "card", "is", "#" * 16, "and", "my", "pin", "is", "####"]


def test_spans_give_token_indices_and_times():
    tokens = spoken("my card is four one one one one one one one one one one one one one one one "
                    "and the cvv is one two three")
    result = redact_tokens(tokens, Policy())
    card, cvv = result.spans
    assert (card.kind, card.first, card.last) == (CARD_NUMBER, 3, 3)
    assert (card.start, card.end) == (tokens[3].start, tokens[3].end)
    assert (cvv.kind, cvv.first, cvv.last) == (SHORT_NUMERIC, 8, 8)
    assert (card.entity, cvv.entity) == ("card", "cvv")
    assert card.as_dict() == {"kind": CARD_NUMBER, "entity": "card", "first": 3, "last": 3,
                              "start": tokens[3].start, "end": tokens[3].end}


def test_span_leaves_out_fillers_at_its_edges_but_covers_those_inside():
    tokens = [Token(w, i * 100, i * 100 + 90, 1.0) for i, w in enumerate(
        ["it's", "4111", "uh", "1111", "1111", "1111", "uh", "okay"])]
    (span,) = redact_tokens(tokens, Policy()).spans
    assert (span.first, span.last) == (1, 5)
    assert [t.content for t in redact_tokens(tokens, Policy()).tokens] == [
        "it's", "####", "uh", "####", "####", "####", "uh", "okay"]


def test_words_become_four_hashes_keeping_punctuation():
    tokens = [Token(w, 0, 0, 1.0) for w in ["the", "pin", "is", "one,", "two,", "three,", "four."]]
    assert redact_tokens(tokens, Policy()).text == "the pin is ####, ####, ####, ####."


def test_mixed_tokens_lose_only_their_digits():
    assert redact_text("ID123456789 please") == "ID######### please"


def test_redact_text_keeps_whitespace():
    assert (redact_text("card  4111 1111 1111 1111\n cvv 123")
            == "card  #### #### #### ####\n cvv ###")
    assert redact_text("") == ""
    assert redact_text("   ") == "   "


def test_context_given_from_outside():
    assert redact("one two three").text == "123"
    assert redact("one two three", context={"secret"}).text == "###"


@pytest.mark.parametrize("switch,text,kind", [
    ("short_numerics", "the cvv is one two three", SHORT_NUMERIC),
    ("ten_digit", "the account is 1234567890", TEN_DIGIT),
    ("phone_numbers", "call me at two one two five five five oh one nine nine", PHONE_NUMBER),
    ("spoken_card_numbers",
     "my card number is four one one one one one one one one one one one one one one two",
     SPOKEN_CARD_NUMBER),
])
def test_policy_switches(switch, text, kind):
    assert kind in redact(text).kinds
    off = redact(text, attrs.evolve(Policy(), **{switch: False}))
    assert kind not in off.kinds


def test_phone_switch_off_leaves_a_valid_ten_digit_number_as_ten_digit():
    policy = Policy(phone_numbers=False)
    assert redact("call me at 2125550199", policy).kinds == {TEN_DIGIT}
    neither = Policy(phone_numbers=False, ten_digit=False)
    assert redact("call me at 2125550199", neither).kinds == set()


def test_email_policy():
    # On by default: an e-mail address is personal data.
    text = "my email is john dot smith at gmail dot com"
    result = redact(text)
    assert result.text == "my email is #### #### #### #### #### #### ####"
    assert result.kinds == {EMAIL}
    assert redact(text, Policy(email=False)).spans == ()


@pytest.mark.parametrize("text,expected", [
    ("it's j underscore moreno at yahoo dot com", "it's #### #### #### #### #### #### ####"),
    # An initial inside the local part ("o" is also a digit word).
    ("email me at jane dot o underscore brien at gmail dot com",
     "email me at #### #### #### #### #### #### #### #### ####"),
    ("sure m a r k at outlook dot com", "sure #### #### #### #### #### #### #### ####"),
    ("my work one is jpatel at brightline dot io", "my work one is #### #### #### #### ####"),
    ("um kevin garcia ninety at live dot com", "um #### #### ## #### #### #### ####"),
    ("my email is kevin at gmail", "my email is #### #### ####"),
])
def test_spoken_emails(text, expected):
    assert redact(text).text == expected


def test_always_on_kinds_have_no_switch():
    with pytest.raises(TypeError):
        Policy(card_numbers=False)
    assert Policy().card_numbers and Policy().ssn and Policy().nine_digit
    assert {CARD_NUMBER, SSN, NINE_DIGIT} <= Policy(short_numerics=False).enabled()


def test_hook_has_the_transcription_service_shape():
    hook = make_hook(Policy())
    tokens = spoken("my pin number is one two three four")
    text, out = hook(" ".join(t.content for t in tokens), tokens)
    assert text == "my pin number is ####"
    assert [t.content for t in out] == ["my", "pin", "number", "is", "####"]


def test_already_redacted_text_is_left_as_it_is():
    once = redact_text("card 4111 1111 1111 1111 cvv 123")
    assert redact_text(once) == once
