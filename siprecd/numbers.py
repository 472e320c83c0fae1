"""Spoken numbers as digits: "twenty two" -> "22", "one two three four" -> "1234".

Shared by transcription (smart formatting of every utterance) and
redaction (its first step, and ``siprecd redact``), so it sits below both.

``text2num``'s ``alpha2digit`` does the language work (English and Spanish)
on the utterance's text, where it has the context it needs ("one of them"
stays words). What is left here is keeping word times: each token of the
formatted text is matched back to the recognised words it came from, so a
number made of several words spans them (start of the first, end of the
last, the lowest confidence). Then runs of single digits, each spoken as
its own word, become one digit string, as in card and phone numbers.

:func:`format_numbers` never raises and never loses a word: every
recognised word's time lies inside one formatted token, the tokens keep
their order, and none reaches outside the utterance. Where the formatted
text cannot be matched back to the words with that guarantee (or the
parser fails on odd input), that part of the utterance, or the whole of
it, is kept as recognised: unformatted is a blemish, a lost word is not.
"""

import attrs
from text_to_num import alpha2digit
from twisted.logger import Logger

from siprecd.asr.results import Token

__all__ = ["Token", "covers", "format_numbers", "number_language"]

log = Logger(namespace="siprecd.numbers")

# Words formatted at once: the alignment costs their square (an utterance
# is at most some 30 s, ~100 words; ``siprecd redact`` lines can be longer).
_LONGEST_SEGMENT = 200

# alpha2digit's language codes, by the first part of a language tag.
_LANGUAGES = {"en": "en", "es": "es"}


def number_language(language):
    """alpha2digit's code for a language tag ("en-US" -> "en"), or None."""
    if not language:
        return None
    return _LANGUAGES.get(str(language).lower().replace("_", "-").split("-")[0])


def format_numbers(tokens, language):
    """*tokens* (a list of Token) with spoken numbers written as digits.

    Unchanged when the language has no number rules (see
    :func:`number_language`). Never raises: see the module doc."""
    tokens = list(tokens)
    code = number_language(language)
    if code is None or not tokens:
        return tokens
    try:
        out = _format(tokens, code)
        if covers(tokens, out):
            return out
        reason = "the formatted tokens do not cover the words"
    except Exception as e:  # noqa: BLE001 - odd input must not lose the utterance
        reason = type(e).__name__
    # No text in the log: the words may be a card number.
    log.warn("spoken numbers left as words in an utterance of {count} tokens ({reason})",
             count=len(tokens), reason=reason)
    return tokens


def covers(spoken, formatted):
    """Whether *formatted* keeps every word of *spoken*: each spoken
    token's time inside one formatted token, formatted tokens in time
    order and within the spoken ones' span, none empty when *spoken* is
    not. (Holds for tokens in time order, as recognisers give them.)"""
    if not spoken:
        return not formatted
    if not formatted:
        return False
    first = min(t.start for t in spoken)
    last = max(t.end for t in spoken)
    previous = None
    for t in formatted:
        if not first <= t.start <= t.end <= last:
            return False
        if previous is not None and (t.start < previous.start or t.end < previous.end):
            return False
        previous = t
    k = 0
    for t in spoken:
        while k < len(formatted) and formatted[k].end < t.end:
            k += 1
        if k == len(formatted) or not formatted[k].start <= t.start:
            return False
    return True


def _format(tokens, code):
    out, segment = [], []
    for token in tokens:
        # A token that is not one word (empty, or with spaces inside)
        # would change the word count of the text: it stays as it is and
        # the numbers on each side of it are formatted apart.
        content = token.content
        if isinstance(content, str) and content and len(content.split()) == 1 \
                and content.split()[0] == content:
            segment.append(token)
            if len(segment) >= _LONGEST_SEGMENT:
                out.extend(_format_segment(segment, code))
                segment = []
            continue
        out.extend(_format_segment(segment, code))
        segment = []
        out.append(token)
    out.extend(_format_segment(segment, code))
    return _join_digits(out, tokens)


def _format_segment(tokens, code):
    if not tokens:
        return []
    spoken = [t.content for t in tokens]
    written = alpha2digit(" ".join(spoken), code).split()
    out = []
    for same, i1, i2, j1, j2 in _align([w.lower() for w in spoken],
                                       [w.lower() for w in written]):
        if same:
            # alpha2digit capitalises a sentence's first word: keep the word as heard.
            out.extend(tokens[i1:i2])
        else:
            out.extend(_replace(tokens[i1:i2], written[j1:j2], code))
    return out


def _align(a, b):
    """[(same, i1, i2, j1, j2)]: *a* and *b* cut into blocks that are the
    same words or that differ, by the fewest words changed, added or
    dropped (difflib's longest-match heuristic pairs the wrong "one"s in
    "two three oh one four ... oh one" -> "2 3 oh 1 4 ... oh one")."""
    head = 0
    while head < len(a) and head < len(b) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < len(a) - head and tail < len(b) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    # The same words at both ends are the same in a best alignment too.
    blocks = [(True, 0, head, 0, head)] if head else []
    blocks.extend((same, i1 + head, i2 + head, j1 + head, j2 + head) for same, i1, i2, j1, j2
                  in _align_middle(a[head:len(a) - tail], b[head:len(b) - tail]))
    if tail:
        blocks.append((True, len(a) - tail, len(a), len(b) - tail, len(b)))
    return blocks


def _align_middle(a, b):
    n, m = len(a), len(b)
    # cost[i][j]: edits to turn a[i:] into b[j:].
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n, -1, -1):
        row, below = cost[i], cost[i + 1] if i < n else None
        for j in range(m, -1, -1):
            if i == n:
                row[j] = m - j
            elif j == m:
                row[j] = n - i
            else:
                row[j] = min(below[j + 1] + (a[i] != b[j]), below[j] + 1, row[j + 1] + 1)
    blocks = []
    i = j = 0
    start = None
    while i < n or j < m:
        if i < n and j < m and a[i] == b[j] and cost[i][j] == cost[i + 1][j + 1]:
            if start is not None:
                blocks.append((False, start[0], i, start[1], j))
                start = None
            if blocks and blocks[-1][0]:
                _, i1, _, j1, _ = blocks.pop()
                blocks.append((True, i1, i + 1, j1, j + 1))
            else:
                blocks.append((True, i, i + 1, j, j + 1))
            i, j = i + 1, j + 1
            continue
        if start is None:
            start = (i, j)
        if i < n and j < m and cost[i][j] == cost[i + 1][j + 1] + 1:
            i, j = i + 1, j + 1
        elif i < n and cost[i][j] == cost[i + 1][j] + 1:
            i += 1
        else:
            j += 1
    if start is not None:
        blocks.append((False, start[0], n, start[1], m))
    return blocks


def _replace(tokens, written, code):
    """The spoken *tokens* as the *written* words they became."""
    if not tokens:
        # Text with no word of its own: nothing was said, nothing to keep.
        return []
    if not written or len(written) > len(tokens):
        # A word dropped, or more written words than spoken ones: no way to
        # give each its own time, so the words stay as heard.
        return list(tokens)
    if len(written) == len(tokens):
        return [attrs.evolve(t, content=w) for t, w in zip(tokens, written)]
    if len(written) == 1:
        return [_span(tokens, written[0])]
    out, rest = [], list(tokens)
    for k, target in enumerate(written):
        left = len(written) - k - 1
        if not left:
            out.append(_span(rest, target))
            break
        # At least one spoken word for this written one and for each after
        # it (len(rest) > left holds throughout, as len(tokens) > len(written)).
        most = len(rest) - left
        take = None
        for n in range(1, most + 1):
            if alpha2digit(" ".join(t.content for t in rest[:n]), code).strip() == target:
                take = n
                break
        if take is None:
            # Failing an exact reading, an even share.
            take = max(1, min(most, round(len(rest) / (left + 1))))
        out.append(_span(rest[:take], target))
        rest = rest[take:]
    return out


def _span(tokens, content):
    return Token(content, tokens[0].start, tokens[-1].end, min(t.confidence for t in tokens))


def _join_digits(formatted, spoken):
    """Runs of two or more single-digit tokens, each one spoken word, as one."""
    singles = {(t.start, t.end) for t in spoken}
    out, run = [], []

    def close():
        if len(run) >= 2:
            out.append(_span(run, "".join(t.content for t in run)))
        else:
            out.extend(run)
        run.clear()

    for token in formatted:
        content = token.content
        digit = isinstance(content, str) and len(content) == 1 and "0" <= content <= "9"
        if digit and (token.start, token.end) in singles:
            run.append(token)
        else:
            close()
            out.append(token)
    close()
    return out
