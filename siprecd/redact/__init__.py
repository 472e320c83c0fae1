"""Redaction of card numbers and other sensitive data from utterances.

Sans-IO: nothing here reads a clock or does I/O. The pieces:

- :class:`Policy` (:mod:`.policy`): what is redacted, built from the
  config with ``Policy.from_config(config.redaction)``; the entity kinds.
- :class:`CallRedactor` (:mod:`.call`): one per call;
  ``feed(stream, role, tokens, now, ref=None)`` -> list of
  :class:`Released`, ``due(now)``, ``next_deadline()``, ``flush(stream)``,
  ``flush_all()``: hold-back of utterances ending in a number, look-back,
  context from either party.
- :func:`fail_closed` (:mod:`.failclosed`): an utterance whose formatting
  or redaction raised, every word masked; ``CallRedactor`` and
  ``make_hook`` use it themselves, the transcription pipeline around
  formatting.
- :func:`redact_tokens`, :func:`redact_text`, :func:`make_hook`: one
  utterance on its own.
- :class:`ReleaseTimer` (:mod:`.scheduler`): a CallRedactor driven by an
  ``IReactorTime`` (the one Twisted adapter).
- ``siprecd redact -c FILE`` (:mod:`.cli`): the same on standard input.
"""

from siprecd.redact.call import (
    CallRedactor,
    Redacted,
    Released,
    Span,
    make_hook,
    redact_text,
    redact_tokens,
    region_of,
)
from siprecd.redact.failclosed import fail_closed
from siprecd.redact.policy import (
    ALWAYS_ON,
    CARD_NUMBER,
    EMAIL,
    ENTITIES,
    FAIL_CLOSED,
    KINDS,
    NINE_DIGIT,
    PHONE_NUMBER,
    SHORT_NUMERIC,
    SPOKEN_CARD_NUMBER,
    SSN,
    TEN_DIGIT,
    Policy,
)
from siprecd.redact.scheduler import ReleaseTimer

__all__ = [
    "ALWAYS_ON",
    "CARD_NUMBER",
    "EMAIL",
    "ENTITIES",
    "FAIL_CLOSED",
    "KINDS",
    "NINE_DIGIT",
    "PHONE_NUMBER",
    "SHORT_NUMERIC",
    "SPOKEN_CARD_NUMBER",
    "SSN",
    "TEN_DIGIT",
    "CallRedactor",
    "Policy",
    "Redacted",
    "ReleaseTimer",
    "Released",
    "Span",
    "fail_closed",
    "make_hook",
    "redact_text",
    "redact_tokens",
    "region_of",
]
