"""What is redacted: the entity kinds and the per-deployment policy.

Entity kinds (the ``kind`` of every redacted span):

``card_number`` (always on)
    13-19 digits passing the Luhn check with the prefix and length of a
    card scheme (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
    Maestro, Mir, RuPay, UATP), anywhere in a spoken number, however it
    was said ("four one one one", "forty one eleven", "4111-1111-...",
    split across pauses).
``ssn`` (always on)
    9 digits said after "social"/"SSN" or grouped 3-2-4; and 4-8 digits
    in SSN context ("the last four of my social").
``nine_digit`` (always on)
    Any other number of exactly 9 digits (SSN-like, routing numbers).
``phone_number`` (``phone_numbers``, default on)
    7-15 digits ``phonenumbers`` calls a valid number for the call's
    region (or any region after "plus"); merely possible ones (local
    7-digit numbers) when the words speak of a phone.
``ten_digit`` (``ten_digit``, default on)
    Any other number of exactly 10 digits.
``short_numeric`` (``short_numerics``, default on)
    3-4 digits in card context (CVV, PIN, expiry "oh four twenty six",
    "april 2026"), and 5-8 digit codes in secret context (PIN, passcode,
    verification code). Card context comes from the utterance itself,
    from earlier utterances of the stream, and from the other party's
    question ("what's the CVV?" then "one two three").
``spoken_card_number`` (``spoken_card_numbers``, default on)
    A card number as a recogniser hears it: 5 or more digits in card
    context that fail the strict test (a misheard digit, a partial
    number, an account number); and a number being read in groups that
    starts like a card and already has 8 digits when its first part must
    be released before the rest is heard.
``email`` (``email``, default on)
    Written (``john@example.com``) and spoken ("john dot smith at gmail
    dot com", "j underscore smith at yahoo dot com", "m a r k at outlook
    dot com", "arroba", "punto") addresses: words joined by "dot",
    "underscore", "dash" or spelled letter by letter, then "at", then a
    mail provider or a domain ending in a known top-level domain. The
    "at" of ordinary speech ("I'm at work", "look at google dot com")
    is not an address: the words before it must be able to be a mailbox.

Numbers next to words that make them an amount, a time, a count, an
address or an identifier ("$25", "3:30", "2 kids", "123 Main Street",
"order number 1234") are never redacted by context alone; card numbers,
9 and 10 digit numbers and valid phone numbers are redacted wherever
they are.

``fail_closed`` (not a policy kind)
    The span of an utterance released with every word masked because its
    redaction raised (see :func:`siprecd.redact.fail_closed`).

Every span also names the *entity* it was taken for, as a person would
call it (:data:`ENTITIES`): a CVV and an expiry are both ``short_numeric``
to the policy, ``cvv`` and ``expiry`` to the reader of ``siprecd redact``
output and of the corpus scores.

"Always on" is enforced twice: the config schema refuses ``false`` for
``card_numbers``, ``ssn`` and ``nine_digit``, and :class:`Policy` has no
switch for them.
"""

import attrs

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
    "Policy",
]

CARD_NUMBER = "card_number"
SPOKEN_CARD_NUMBER = "spoken_card_number"
SSN = "ssn"
NINE_DIGIT = "nine_digit"
SHORT_NUMERIC = "short_numeric"
TEN_DIGIT = "ten_digit"
PHONE_NUMBER = "phone_number"
EMAIL = "email"
FAIL_CLOSED = "fail_closed"
KINDS = (CARD_NUMBER, SPOKEN_CARD_NUMBER, SSN, NINE_DIGIT, SHORT_NUMERIC, TEN_DIGIT,
         PHONE_NUMBER, EMAIL)
# What a span is to a person: card number (or part of one), social
# security number, phone number, card expiry, card security code, PIN or
# passcode, bank/customer account number, e-mail address, any other
# number masked for its length (nine_digit, ten_digit).
ENTITIES = ("card", "ssn", "phone", "expiry", "cvv", "pin", "account", "email", "number")
# Config keys that cannot be turned off.
ALWAYS_ON = ("card_numbers", "ssn", "nine_digit")


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class Policy:
    """The switches and time bounds of redaction (times in seconds).

    Card numbers, SSNs and 9-digit numbers are always redacted and have no
    switch here. Build one from the config with :meth:`from_config`.
    """

    short_numerics: bool = True
    ten_digit: bool = True
    phone_numbers: bool = True
    spoken_card_numbers: bool = True
    email: bool = True
    # Longest wait of an utterance ending in a number for the rest of it.
    hold_back: float = attrs.field(default=3.0, validator=_non_negative)
    # Numbers split by at most this pause (timeline) are one number.
    lookback: float = attrs.field(default=5.0, validator=_non_negative)
    # Context words count for this long (wall time) ...
    context_window: float = attrs.field(default=30.0, validator=_non_negative)
    # ... and for at most this many utterances of the call after them.
    context_utterances: int = attrs.field(default=4, validator=_non_negative)
    log_unredacted: bool = False

    card_numbers = True
    ssn = True
    nine_digit = True

    @classmethod
    def from_config(cls, redaction):
        """The policy of a ``config.redaction`` section."""
        return cls(
            short_numerics=redaction.short_numerics,
            ten_digit=redaction.ten_digit,
            phone_numbers=redaction.phone_numbers,
            spoken_card_numbers=redaction.spoken_card_numbers,
            email=redaction.email,
            hold_back=redaction.hold_back,
            lookback=redaction.lookback,
            context_window=redaction.context_window,
            context_utterances=redaction.context_utterances,
            log_unredacted=redaction.log_unredacted,
        )

    def enabled(self):
        """The entity kinds this policy redacts."""
        on = {CARD_NUMBER, SSN, NINE_DIGIT}
        for kind, switch in ((SHORT_NUMERIC, self.short_numerics), (TEN_DIGIT, self.ten_digit),
                             (PHONE_NUMBER, self.phone_numbers),
                             (SPOKEN_CARD_NUMBER, self.spoken_card_numbers),
                             (EMAIL, self.email)):
            if switch:
                on.add(kind)
        return frozenset(on)
