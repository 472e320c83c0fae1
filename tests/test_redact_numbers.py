"""Spoken numbers to digits, token shapes, and the card and phone tests."""

import pytest

from siprecd.redact import detect
from siprecd.redact import tokens as tk


def spell_words(text, spanish=False):
    atoms = []
    for word in text.split():
        atoms.extend(tk.shape(word, spanish).atoms)
    return tk.spell(atoms)


@pytest.mark.parametrize("words,digits", [
    ("four one one one", "4111"),
    ("forty one eleven", "4111"),
    ("twenty twenty six", "2026"),
    ("nineteen eighty", "1980"),
    ("oh four", "04"),
    ("zero four twenty six", "0426"),
    ("twenty oh four", "2004"),
    ("double five", "55"),
    ("triple seven", "777"),
    ("double oh seven", "007"),
    ("one hundred twenty three", "123"),
    ("one hundred and five", "105"),
    ("four thousand one hundred eleven", "4111"),
    ("two thousand five", "2005"),
    ("fifteen hundred", "1500"),
    ("forty one hundred", "4100"),
    ("forty-one eleven", "4111"),
    ("4 thousand", "4000"),
    ("4111 1111", "41111111"),
    ("04 26", "0426"),
    ("double 5", "55"),
    ("double 56", "556"),
    ("hundred", "100"),
])
def test_spell_english(words, digits):
    assert spell_words(words) == digits


@pytest.mark.parametrize("words,digits", [
    ("cuatro uno uno uno", "4111"),
    ("treinta y uno", "31"),
    ("ciento veintitrés", "123"),
    ("mil novecientos noventa", "1990"),
    ("cuatro mil", "4000"),
    ("cero nueve", "09"),
])
def test_spell_spanish(words, digits):
    assert spell_words(words, spanish=True) == digits


def test_spanish_words_only_for_spanish():
    assert tk.shape("once").kind == tk.WORD
    assert tk.shape("once", True).kind == tk.NUM


@pytest.mark.parametrize("content,kind", [
    ("4111", tk.LIT), ("4111-1111", tk.LIT), ("(555)", tk.LIT), ("+44", tk.LIT),
    ("4111,", tk.LIT), ("04/26", tk.LIT),
    ("$25", tk.QTY), ("25.99", tk.QTY), ("3:30", tk.QTY), ("1,000", tk.QTY), ("21st", tk.QTY),
    ("50%", tk.QTY), ("1990s", tk.QTY),
    ("A12345", tk.MIXED), ("card:4111111111111111", tk.MIXED),
    ("four", tk.NUM), ("Four,", tk.NUM), ("oh", tk.OH), ("double", tk.REPEAT),
    ("for", tk.HOMOPHONE), ("plus", tk.PLUS), ("april", tk.MONTH), ("uh", tk.FILLER),
    ("-", tk.FILLER), ("and", tk.AND), ("card", tk.WORD), ("####", tk.WORD), ("", tk.WORD),
    ("٤١١١", tk.WORD),
])
def test_shapes(content, kind):
    assert tk.shape(content).kind == kind


@pytest.mark.parametrize("number,scheme", [
    ("4111111111111111", "visa"), ("4222222222222", "visa"), ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"), ("378282246310005", "amex"),
    ("6011111111111117", "discover"), ("3530111333300000", "jcb"),
    ("36227206271667", "diners"), ("6200000000000005", "unionpay"),
])
def test_known_test_cards(number, scheme):
    assert detect.luhn_ok(number)
    assert detect.issuer(number) == scheme
    assert detect.find_card(number) == (0, len(number))


@pytest.mark.parametrize("digits", [
    "4111111111111112",      # Luhn fails
    "1234567812345670",      # Luhn passes, no scheme starts with 12
    "411111111111",          # too short
    "37828224631000",        # Amex prefix, wrong length
    "9111111111111111",
])
def test_not_cards(digits):
    assert detect.find_card(digits) is None


def test_card_inside_longer_digits():
    # Said with its expiry and CVV in one breath: one piece of 23 digits.
    assert detect.find_card("4111111111111111" + "0426123") == (0, 16)
    # After a stray digit said apart ("9" then "4111 ...").
    assert detect.find_card("9" + "4111111111111111" + "0426123", (0, 1)) == (1, 17)
    assert detect.find_card("9" + "4111111111111111", (0, 1)) == (1, 17)


def test_windows_only_from_piece_starts():
    # A 16-digit order number holding a Luhn-valid 13-digit window with a
    # Visa prefix ("4567812345670") is not a card ...
    assert detect.find_card("1234567812345670") is None
    # ... unless the number was said in pieces that make that window.
    assert detect.find_card("1234567812345670", (0, 3)) == (3, 16)


@pytest.mark.parametrize("words,starts", [
    ("four one one one one one", [0]),
    ("forty one eleven", [0, 2]),
    ("4111 1111", [0, 4]),
    ("nine 4111", [0, 1]),
])
def test_piece_boundaries(words, starts):
    atoms = [a for w in words.split() for a in tk.shape(w).atoms]
    assert tk.boundaries(tk.spell_groups(atoms)) == starts


def test_find_card_is_linear_enough():
    # A very long digit string is searched without blowing up.
    digits = "1234567890" * 2000
    detect.find_card(digits)


@pytest.mark.parametrize("digits,plus,context,expected", [
    ("2125550199", False, False, True),
    ("18005550199", False, False, True),
    ("442079460958", True, False, True),
    ("5550199", False, False, False),
    ("5550199", False, True, True),
    ("1234", False, True, False),
    ("12345678", False, False, False),
])
def test_phones(digits, plus, context, expected):
    assert detect.is_phone(digits, plus, "US", context) is expected


@pytest.mark.parametrize("words,kinds,topic", [
    ("what's the cvv", {"card", "secret", "cvv"}, False),
    ("can I have your card number", {"card", "phone"}, False),
    ("and your pin's", {"secret", "pin"}, False),
    ("what's the zip code", {"id"}, True),
    ("what is the order number", {"id"}, True),
    ("the last four of your social", {"card", "secret", "ssn"}, False),
    ("what's a good phone number", {"phone"}, False),
    ("el código de seguridad", {"card", "secret", "cvv"}, False),
])
def test_context(words, kinds, topic):
    found, changes = detect.context_of([tk.bare(w) for w in words.split()])
    assert found == kinds
    assert changes is topic


@pytest.mark.parametrize("text,spans", [
    ("my email is john dot smith at gmail dot com", [(3, 9)]),
    ("send it to jane.doe@example.com please", [(3, 3)]),
    ("it's kevin at outlook dot com", [(1, 5)]),
    ("i'm at home", []),
    ("look at google dot com", []),
    ("i work at yahoo", []),
    ("mi correo es ana arroba gmail punto com", [(3, 7)]),
])
def test_emails(text, spans):
    contents = text.split()
    assert detect.find_emails(contents, [tk.bare(w) for w in contents]) == spans
