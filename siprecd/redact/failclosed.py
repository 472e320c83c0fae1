"""Fail closed: an utterance whose formatting or redaction raised goes out
with every word masked, never unredacted and never dropped.

:func:`fail_closed` depends on nothing else of redaction (no shapes, no
lexicon, no policy), so whatever broke there cannot break it too.
"""

import re

from siprecd.asr.results import Token

__all__ = ["MASK", "fail_closed", "mask_everything"]

MASK = "####"
_DIGIT = re.compile(r"[0-9]", re.ASCII)
# A token that is only digits and the separators numbers are written with
# ("4111-1111", "(555)", "12/26") keeps its separators and shape.
_WRITTEN_NUMBER = re.compile(r"[0-9()+\-./,]*[0-9][0-9()+\-./,]*", re.ASCII)


def mask_everything(content):
    """*content* of one token, fully masked: each digit of a written number
    as ``#`` ("4111-1111" -> "####-####"), anything else with letters or
    symbols as ``####``; empty or blank content stays as it is."""
    if not isinstance(content, str):
        return MASK
    if not content.strip():
        return content
    if _WRITTEN_NUMBER.fullmatch(content):
        return _DIGIT.sub("#", content)
    return MASK


def fail_closed(tokens):
    """``(masked_text, masked_tokens)`` for an utterance that could not be
    formatted or redacted: every token masked (:func:`mask_everything`),
    times and confidences kept, the text the masked contents joined by
    spaces.

    For the transcription pipeline (and anything else between the
    recogniser and storage): when spoken-number formatting or redaction
    raises on an utterance, store and deliver ``fail_closed(tokens)`` in
    its place, with one error line in the log and no text in it. Tokens
    need ``content``, ``start``, ``end`` and ``confidence``
    (:class:`~siprecd.asr.results.Token`); the result's are Tokens.
    """
    masked = tuple(Token(mask_everything(t.content), t.start, t.end, t.confidence)
                   for t in tokens)
    return " ".join(t.content for t in masked), masked
