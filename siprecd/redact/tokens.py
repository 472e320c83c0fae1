"""What each token is to redaction, and spoken numbers as digit strings.

A recogniser's token is a word ("four", "oh", "double"), digits that
``format_numbers`` made ("4111", "04", "26"), or something typed-looking
("4111-1111", "(555)", "$25", "3:30", "john@example.com"). :func:`shape`
sorts a token into one of the kinds below, once per distinct content
(cached); :func:`spell` turns the atoms of a run of number tokens into the
digits a listener would write down ("forty one eleven" -> "4111",
"twenty twenty six" -> "2026", "double five" -> "55", "oh four" -> "04").

Why our own parser when text2num is at hand: ``alpha2digit`` works on a
whole text and leaves exactly the hard cases as words ("oh", "double",
"zero" alone, anything split across utterances), and it must not be run
twice over text that ``format_numbers`` already changed. This parser only
has to read the leftovers and knows no grammar beyond compounds.
"""

import re
from functools import lru_cache

from siprecd.redact import lexicon as lx

__all__ = ["Shape", "bare", "boundaries", "shape", "spell", "spell_groups"]

_LEAD = "\"'“”‘’[{<¿¡*"
_TRAIL = "\"'“”‘’.,;:!?]}>*"

# Kinds of token.
LIT = "lit"          # digits, maybe with separators: "4111", "4111-1111", "(555)", "+44"
NUM = "num"          # number words: "four", "forty-one", "hundred"
QTY = "qty"          # digits that are an amount/time/ordinal: "$25", "3:30", "1st", "25.99"
MIXED = "mixed"      # letters and digits: "A12345", "card:4111..."
OH = "oh"            # "oh", "o": zero next to a number
REPEAT = "repeat"    # "double", "triple"
HOMOPHONE = "homophone"  # "for", "to", "won", "ate": a digit between two numbers
PLUS = "plus"        # "plus": the + of an international number
MONTH = "month"      # a month name: part of an expiry in card context
AND = "and"          # "and"/"y": inside a spoken compound only
FILLER = "filler"    # "uh", "dash", "-": inside a number, changes nothing
WORD = "word"        # anything else

_TIME = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?(?:[ap]\.?m\.?)?", re.ASCII)
_MONEY = re.compile(r"[$€£¥][\d.,]*\d[\d.,]*[kmb]?|[\d.,]*\d[\d.,]*[€$£¥]", re.ASCII)
_PERCENT = re.compile(r"[\d.,]*\d%", re.ASCII)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
_DECIMAL = re.compile(r"\d{0,7}\.\d{1,2}", re.ASCII)
_SUFFIXED = re.compile(r"\d+(?:st|nd|rd|th|s|am|pm|a\.m\.|p\.m\.|k|x)", re.ASCII)
_NUMERIC = re.compile(r"[#(+]*\d[\d\-./,()+]*", re.ASCII)
_DIGIT_GROUP = re.compile(r"\d+(?:[-./]\d+)*", re.ASCII)
_DIGITS = re.compile(r"\d", re.ASCII)


class Shape:
    """What one token is: its *kind*, its bare lower-case *word*, and for
    number-like kinds the *atoms* :func:`spell` reads."""

    __slots__ = ("atoms", "groups", "kind", "plus", "value", "word")

    def __init__(self, kind, word, atoms=(), value=None, plus=False, groups=()):
        self.kind = kind
        self.word = word
        self.atoms = atoms
        self.value = value
        self.plus = plus
        # MIXED only: (start, end, digits) of each digit group in the content.
        self.groups = groups

    def __repr__(self):
        return f"Shape({self.kind!r}, {self.word!r}, {self.atoms!r})"


def bare(content):
    """*content* lower-cased, without the punctuation around a word."""
    return content.strip(_LEAD).rstrip(_TRAIL).strip(_LEAD).lower()


def shape(content, spanish=False):
    """The :class:`Shape` of a token's *content*.

    Words are cached; tokens with digits are not, so that no number said
    in a call stays in memory after it (they are quick to read anyway)."""
    if _DIGITS.search(content) is None:
        return _cached_shape(content, spanish)
    return _shape(content, spanish)


@lru_cache(maxsize=8192)
def _cached_shape(content, spanish):
    return _shape(content, spanish)


def _shape(content, spanish):
    word = bare(content)
    if not word:
        return Shape(FILLER if content.strip() else WORD, word)
    if _DIGITS.search(word) is None:
        return _word_shape(word, spanish)
    core = word.strip("()") if word.count("(") != word.count(")") else word
    if (_TIME.fullmatch(core) or _MONEY.fullmatch(core) or _PERCENT.fullmatch(core)
            or _THOUSANDS.fullmatch(core) or _DECIMAL.fullmatch(core)
            or _SUFFIXED.fullmatch(core)):
        digits = "".join(_DIGITS.findall(core))
        return Shape(QTY, word, (("lit", digits),))
    if _NUMERIC.fullmatch(core):
        digits = "".join(_DIGITS.findall(core))
        return Shape(LIT, word, (("lit", digits),), plus=core.startswith(("+", "(+")))
    groups = tuple((m.start(), m.end(), "".join(_DIGITS.findall(m.group())))
                   for m in _DIGIT_GROUP.finditer(content))
    return Shape(MIXED, word, groups=groups)


def _number_word(word, spanish):
    atom = lx.EN_NUMBER_WORDS.get(word)
    if atom is None and spanish:
        atom = lx.ES_NUMBER_WORDS.get(word)
    return atom


def _word_shape(word, spanish):
    atom = _number_word(word, spanish)
    if atom is not None:
        return Shape(NUM, word, (atom,))
    if "-" in word and not word.startswith("-") and not word.endswith("-"):
        parts = word.split("-")
        atoms = tuple(_number_word(p, spanish) for p in parts)
        if all(atoms):
            return Shape(NUM, word, atoms)
    if word in lx.OH_WORDS:
        return Shape(OH, word, (("d", 0),))
    if word in lx.REPEAT_WORDS:
        return Shape(REPEAT, word, (("rep", lx.REPEAT_WORDS[word]),))
    if word in lx.HOMOPHONES:
        return Shape(HOMOPHONE, word, (("d", lx.HOMOPHONES[word]),))
    if word in lx.PLUS_WORDS:
        return Shape(PLUS, word)
    if word in lx.AND_WORDS and (lx.AND_WORDS[word] == "en" or spanish):
        return Shape(AND, word, (("and", 0),))
    if word in lx.FILLERS:
        return Shape(FILLER, word)
    if word in lx.MONTHS:
        return Shape(MONTH, word, (("lit", f"{lx.MONTHS[word]:02d}"),), value=lx.MONTHS[word])
    return Shape(WORD, word)


def spell(atoms):
    """The digits spoken by *atoms* (from consecutive tokens of one number).

    >>> spell([("tens", 40), ("d", 1), ("teen", 11)])
    '4111'
    """
    return "".join(spell_groups(atoms))


def spell_groups(atoms):
    """:func:`spell` as the groups it was said in: ``["41", "11"]``."""
    return _Speller().run(atoms)


def boundaries(groups):
    """Offsets in the joined digits where a piece of the number starts.

    Digits said one by one ("four one one one") are one piece, as
    ``format_numbers`` would join them; "41 11", "4111 1111" are two."""
    out = []
    offset = 0
    previous = 0
    for group in groups:
        if not (len(group) == 1 and previous == 1):
            out.append(offset)
        offset += len(group)
        previous = len(group)
    return out


class _Speller:
    """Compounds ("one hundred twenty three", "cuatro mil") as values;
    anything that cannot extend the value before it starts a new group,
    and the groups' digits are concatenated (a card read "forty one
    eleven" is the groups 41 and 11)."""

    def __init__(self):
        self.out = []
        self.hi = None      # thousands part
        self.lo = None      # below a thousand
        self.open = None    # what lo still takes: "units" (after tens), "below100" (after hundred)
        self.repeat = 0

    def close(self):
        if self.hi is not None or self.lo is not None:
            self.out.append(str((self.hi or 0) + (self.lo or 0)))
        self.hi = self.lo = self.open = None

    def run(self, atoms):
        for kind, value in atoms:
            if self.repeat:
                times, self.repeat = self.repeat, 0
                if kind == "d":
                    self.close()
                    self.out.append(str(value) * times)
                    continue
                if kind == "lit" and value:
                    self.close()
                    self.out.append(value[0] * times + value[1:])
                    continue
            getattr(self, "_" + kind)(value)
        self.close()
        return self.out

    def _d(self, v):
        if self.lo is not None and (
                (self.open == "units" and v != 0) or self.open == "below100"):
            self.lo += v
            self.open = None
        elif self.lo is None and self.hi is not None:
            self.lo = v
        else:
            self.close()
            self.lo = v

    def _teen(self, v):
        if self.lo is not None and self.open == "below100":
            self.lo += v
            self.open = None
        elif self.lo is None and self.hi is not None:
            self.lo = v
        else:
            self.close()
            self.lo = v

    def _tens(self, v):
        if self.lo is not None and self.open == "below100":
            self.lo += v
            self.open = "units"
        elif self.lo is None and self.hi is not None:
            self.lo, self.open = v, "units"
        else:
            self.close()
            self.lo, self.open = v, "units"

    def _hval(self, v):
        if not (self.lo is None and self.hi is not None):
            self.close()
        self.lo, self.open = v, "below100"

    def _hundred(self, _):
        if self.lo is not None and 0 < self.lo < 100:
            self.lo *= 100
        else:
            self.close()
            self.lo = 100
        self.open = "below100"

    def _thousand(self, _):
        if self.hi is None:
            self.hi = (self.lo if self.lo else 1) * 1000
            self.lo = self.open = None
        else:
            self.close()
            self.hi = 1000

    def _lit(self, s):
        self.close()
        if s and s[0] != "0" and len(s) <= 3:
            # "4 thousand" is still a compound.
            self.lo = int(s)
        else:
            self.out.append(s)

    def _rep(self, times):
        self.close()
        self.repeat = times

    def _and(self, _):
        pass
