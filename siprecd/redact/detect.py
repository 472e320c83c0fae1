"""The tests a number or a phrase must pass to be sensitive.

- :func:`find_card`: a payment card number somewhere in a digit string
  (13-19 digits, Luhn, an issuer prefix with a length that issuer uses).
- :func:`is_phone`: a phone number to ``phonenumbers`` (valid; or merely
  possible when the words around it speak of a phone).
- :func:`context_of`: the context kinds an utterance's words set up
  ("what's the CVV" -> card and secret), and whether it changes topic.
- :func:`find_emails`: written and spoken e-mail addresses
  ("john dot smith at gmail dot com").
"""

import re

import phonenumbers

from siprecd.redact import lexicon as lx

__all__ = [
    "card_prefix",
    "context_of",
    "find_card",
    "find_emails",
    "is_phone",
    "issuer",
    "luhn_ok",
]


def luhn_ok(digits):
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def issuer(digits):
    """The card scheme whose prefix and length *digits* have, or None."""
    n = len(digits)
    if n < 12 or n > 19:
        return None
    p1, p2, p3 = digits[0], int(digits[:2]), int(digits[:3])
    p4, p6 = int(digits[:4]), int(digits[:6])
    if p1 == "4":
        return "visa" if n in (13, 16, 19) else None
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return "mastercard" if n == 16 else None
    if p2 in (34, 37):
        return "amex" if n == 15 else None
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:
        return "discover" if n >= 16 else None
    if 3528 <= p4 <= 3589:
        return "jcb" if n >= 16 else None
    if 300 <= p3 <= 305 or p4 == 3095 or p2 in (36, 38, 39):
        return "diners" if n >= 14 else None
    if 2200 <= p4 <= 2204:
        return "mir" if n >= 16 else None
    if p2 in (62, 81):
        return "unionpay" if n >= 16 else None
    if p2 in (60, 82) or p3 in (508, 353, 356):
        return "rupay" if n >= 16 else None
    if p2 == 50 or 56 <= p2 <= 69:
        return "maestro" if n >= 13 else None
    if p1 == "1":
        return "uatp" if n == 15 else None
    return None


def card_prefix(digits):
    """Whether *digits* start the way a card number of some scheme does
    (for a number still being spoken)."""
    return bool(digits) and digits[0] in "23456"


def _doubled(d):
    return d * 2 - 9 if d > 4 else d * 2


def find_card(digits, starts=(0,)):
    """(start, end) of a card number in a spoken number's digits, or None.

    *starts* are the offsets where pieces of the number start (tokens,
    groups: see :func:`siprecd.redact.tokens.boundaries`). A card is the
    whole number, or runs from one piece start to another or to the end
    ("2" + "4111 1111 1111 1111", parts joined across utterances), or, in
    a number longer than any card, starts at a piece and is followed by
    more digits in the same breath (card then expiry or CVV). Any window
    at all would be wrong: a random 16-digit number holds a Luhn-valid
    window with a card prefix one time in five; the whole number, one in
    twenty-five.

    Each window's Luhn sum comes from two prefix sums, so the search is
    linear in the length for each window size.
    """
    n = len(digits)
    if n < 13:
        return None
    values = [ord(c) - 48 for c in digits]
    # s_even[k]: sum over j < k of the value as seen when j is doubled iff j is even.
    s_even, s_odd = [0] * (n + 1), [0] * (n + 1)
    for j, v in enumerate(values):
        if j % 2:
            s_even[j + 1] = s_even[j] + v
            s_odd[j + 1] = s_odd[j] + _doubled(v)
        else:
            s_even[j + 1] = s_even[j] + _doubled(v)
            s_odd[j + 1] = s_odd[j] + v

    def card(i, end):
        if digits[i] not in "1234568":
            return False
        # The rightmost digit (end - 1) is never doubled: positions of the
        # other parity are.
        sums = s_odd if (end - 1) % 2 == 0 else s_even
        return (sums[end] - sums[i]) % 10 == 0 and issuer(digits[i:end]) is not None

    if n <= 19 and card(0, n):
        return 0, n
    starts = sorted({s for s in starts if 0 <= s < n} | {0})
    ends = set(starts) | {n}
    for i in starts:
        for length in (16, 15, 13, 14, 17, 18, 19):
            end = i + length
            if end > n:
                continue
            if (end in ends or n >= 17) and card(i, end):
                return i, end
    return None


def is_phone(digits, plus, region, phone_context):
    """Whether *digits* (with a leading + when *plus*) is a phone number."""
    n = len(digits)
    if not 7 <= n <= 15:
        return False
    candidates = ["+" + digits] if plus else [digits]
    if not plus and phone_context and n >= 11:
        candidates.append("+" + digits)
    for text in candidates:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
        if phone_context and text == candidates[0] and phonenumbers.is_possible_number(number):
            return True
    return False


def context_of(words):
    """(kinds, changes_topic) for an utterance's bare lower-case *words*."""
    kinds = set()
    # "pin's", "card's": the word itself is the clue.
    words = [w[:-2] if w.endswith(("'s", "’s")) else w for w in words]
    n = len(words)
    for i, w in enumerate(words):
        if not w:
            continue
        for size in (1, 2, 3):
            if i + size <= n:
                found = lx.CONTEXT_PHRASES.get(tuple(words[i:i + size]))
                if found:
                    kinds |= found
        prev = words[i - 1] if i else ""
        if w in lx.CODE_WORDS and prev not in lx.NOT_SECRET_CODE:
            kinds.add(lx.SECRET)
        elif w in lx.NUMBER_WORDS and prev not in lx.ID_WORDS and prev not in lx.NOT_SECRET_CODE:
            kinds.add(lx.PHONE)
    if any(w in lx.ID_ASKS for w in words):
        kinds.add(lx.ID)
    if any(w in lx.MONEY_WORDS for w in words):
        kinds.add(lx.MONEY)
    changes_topic = any(w in lx.TOPIC_WORDS for w in words)
    return frozenset(kinds), changes_topic


_WRITTEN_EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_DOMAIN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+")
_LABEL = re.compile(r"[a-z0-9][a-z0-9_-]*")
_LOCAL = re.compile(r"[\w.+'-]+")


def _domain_ok(labels):
    return labels[-1] in lx.TLDS or labels[0] in lx.MAIL_PROVIDERS


def find_emails(contents, words, breaks=frozenset(), about_email=None):
    """[(first, last)] token index ranges (inclusive) of e-mail addresses.

    *contents* are the tokens as written, *words* their bare forms; no
    address is taken across an index in *breaks* (a new utterance after a
    long pause). *about_email* (a function of a token index): whether
    e-mail is being talked about there, when a mail provider without its
    domain ("kevin at gmail") counts; by default wherever an e-mail word
    is among *words*."""
    if about_email is None:
        mentioned = any(w in lx.EMAIL_WORDS for w in words)

        def about_email(i):
            return mentioned
    spans = []
    n = len(words)
    taken = -1
    for i, w in enumerate(words):
        if i <= taken:
            continue
        if "@" in contents[i] and _WRITTEN_EMAIL.search(contents[i]) and w not in lx.AT_WORDS:
            spans.append((i, i))
            taken = i
            continue
        if w not in lx.AT_WORDS:
            continue
        end = _spoken_domain(words, i + 1, n, breaks, about_email(i))
        if end is None:
            continue
        start = _spoken_local(words, i - 1, breaks, i)
        if start is None:
            continue
        # "my work one jpatel at ...": a number word does not start an address.
        while start < i - 1 and (words[start] in lx.NUMBER_WORDS_EN or words[start] in lx.LOCAL_JOINERS):
            start += 1
        spans.append((start, end))
        taken = end
    return spans


def _spoken_domain(words, j, n, breaks, about_email):
    if j < n and j not in breaks and words[j] in ("sign", "symbol"):
        j += 1
    if j >= n or j in breaks:
        return None
    if _DOMAIN.fullmatch(words[j]):
        return j if _domain_ok(words[j].split(".")) else None
    if not _LABEL.fullmatch(words[j]) or words[j] in lx.NOT_LOCAL:
        return None
    labels, end = [words[j]], j
    k = j + 1
    while k + 1 < n and words[k] in lx.DOT_WORDS and k not in breaks and k + 1 not in breaks:
        nxt = words[k + 1]
        if not _LABEL.fullmatch(nxt):
            break
        labels.append(nxt)
        end = k + 1
        k += 2
    if len(labels) >= 2 and _domain_ok(labels):
        return end
    if len(labels) == 1 and labels[0] in lx.MAIL_PROVIDERS and about_email:
        return end
    return None


def _spoken_local(words, j, breaks, at):
    start = None
    pieces = 0
    while j >= 0 and pieces < 8:
        w = words[j]
        if (j + 1) in breaks and j + 1 <= at:
            break
        if w in lx.LOCAL_JOINERS and start is not None:
            j -= 1
            continue
        spelled = len(w) == 1 and j > 0 and len(words[j - 1]) == 1 and words[j - 1].isalpha()
        # An initial joined on to the next piece ("jane dot o underscore
        # brien") is a letter of the address, not the word or digit "o".
        spelled = spelled or (len(w) == 1 and w.isalpha() and j + 1 < at
                              and words[j + 1] in lx.LOCAL_JOINERS)
        if not w or (w in lx.NOT_LOCAL and not spelled) or w in lx.FILLERS \
                or not _LOCAL.fullmatch(w):
            # ("a" and "i" are words, except between letters: "m a r k").
            break
        start = j
        # Letters spelled one by one ("t h o m p s o n") are one piece together.
        if len(w) > 1 or not (j > 0 and len(words[j - 1]) == 1):
            pieces += 1
        j -= 1
    return start
