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
"""

import difflib

import attrs
from text_to_num import alpha2digit

from siprecd.asr.results import Token

__all__ = ["Token", "format_numbers", "number_language"]

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
    :func:`number_language`)."""
    code = number_language(language)
    if code is None or not tokens:
        return list(tokens)
    spoken = [t.content for t in tokens]
    try:
        written = alpha2digit(" ".join(spoken), code).split()
    except Exception:
        # A parser failure on odd input must not lose the utterance.
        return list(tokens)
    out = []
    matcher = difflib.SequenceMatcher(a=[w.lower() for w in spoken],
                                      b=[w.lower() for w in written], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(attrs.evolve(t, content=w) for t, w in zip(tokens[i1:i2], written[j1:j2]))
        elif op == "insert":
            # Text with no word of its own (not expected): give it the
            # time of the word before it.
            anchor = out[-1] if out else tokens[0]
            out.extend(Token(w, anchor.end, anchor.end, anchor.confidence)
                       for w in written[j1:j2])
        elif op == "delete":
            continue
        else:
            out.extend(_spread(tokens[i1:i2], written[j1:j2], code))
    return _join_digits(out, tokens)


def _span(tokens, content):
    return Token(content, tokens[0].start, tokens[-1].end, min(t.confidence for t in tokens))


def _spread(tokens, written, code):
    """Share the spoken *tokens* out among the *written* ones they became."""
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
        # The shortest run of spoken words that reads as this token; failing
        # that, an even share.
        take = None
        for n in range(1, len(rest) - left + 1):
            if alpha2digit(" ".join(t.content for t in rest[:n]), code).strip() == target:
                take = n
                break
        if take is None:
            take = max(1, min(len(rest) - left, round(len(rest) / (left + 1))))
        out.append(_span(rest[:take], target))
        rest = rest[take:]
    return out


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
        digit = len(token.content) == 1 and token.content.isdigit()
        if digit and (token.start, token.end) in singles:
            run.append(token)
        else:
            close()
            out.append(token)
    close()
    return out
