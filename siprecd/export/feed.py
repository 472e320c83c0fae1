"""The ``utterances`` feed, version 1: what one row holds and how it is
written in each format. Pure functions; nothing here does I/O.

One row per stored message (utterance), in the order of its creation. The
columns, in this order (the CSV header; the key order of each JSONL line):

========================  ====================================================
``externalConversationId`` the call's guid (the SIPREC call identifier; the
                           webhook's ``externalConversationId`` and the
                           ``externalId`` of GET .../messages)
``conversationId``         siprecd's own id of the conversation (the
                           ``{conversationId}`` of the conversation API);
                           null if the call is no longer stored
``legId``                  the leg (a new agentId starts the next leg)
``streamId``               the participant's stream (the API's streamId)
``role``                   ``customer`` or ``agent``
``senderExternalId``       customerId or agentId given at start-streaming
``messageId``              unique id of the utterance (the webhook's
                           idempotency key)
``sequence``               place of the utterance in its stream (1, 2, ...)
``text``                   the text as the call's ``redactionOutput`` allows
                           (exactly what the API and the webhook show)
``unredactedText``         only with ``redacted_and_unredacted`` (JSONL: the
                           key is absent otherwise; CSV: empty cell)
``tokens``                 only with ``detailedToken``: the token list (JSONL:
                           an array, absent otherwise; CSV: the array as
                           compact JSON text, empty otherwise)
``startMs``, ``endMs``     milliseconds from the start of the stream's audio
``createdTimestamp``       when siprecd stored it, RFC 3339 UTC with ms
``clientTimestamp``        the client's time if it sent one, else as created
``language``               the recognition language (e.g. ``en-US``), or null
========================  ====================================================

JSONL: one JSON object per line (UTF-8, not ASCII-escaped except the
characters ``str.splitlines`` takes for line breaks, ``\\n`` line ends),
nulls written as ``null``. CSV (RFC 4180 as Python's csv module
writes it): UTF-8 without a byte-order mark, a header row, ``\\r\\n`` line
ends, fields quoted when they hold a comma, quote or line break (so
text with any of these reads back unchanged), null written as an empty
field. Row order is (createdTimestamp, storage order), so rebuilding a
day from the same rows writes the same bytes.

A change to any of this that a reader could notice is a new feed version.
"""

import csv
import json

from siprecd.messages import iso_ms, utterance_item

__all__ = ["FEED", "VERSION", "FORMATS", "COLUMNS", "row", "JsonlEncoder", "CsvEncoder",
           "ENCODERS", "HOUR_MS", "hour_of"]

FEED = "utterances"
VERSION = "1"
FORMATS = ("jsonl", "csv")
HOUR_MS = 3_600_000

COLUMNS = (
    "externalConversationId", "conversationId", "legId", "streamId", "role",
    "senderExternalId", "messageId", "sequence", "text", "unredactedText", "tokens",
    "startMs", "endMs", "createdTimestamp", "clientTimestamp", "language",
)
# Columns that JSONL leaves out (rather than writing null) when empty:
# they exist only when the call asked for them.
_OPTIONAL = ("unredactedText", "tokens")
# Line breaks to str.splitlines() that json.dumps leaves raw (it escapes
# every control character below U+0020).
_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def hour_of(created_ms):
    """The UTC hour (0-23) of an epoch-ms time: the file the row goes in."""
    return (int(created_ms) // HOUR_MS) % 24


def row(message, conversation_id=None):
    """The feed row of one stored Message, as a dict in column order.

    The text goes through :func:`siprecd.messages.utterance_item`, the one
    place that decides what a client may see of a message.
    """
    item = utterance_item(message)
    return {
        "externalConversationId": message.guid,
        "conversationId": conversation_id,
        "legId": message.leg_id,
        "streamId": message.stream_id,
        "role": message.role,
        "senderExternalId": message.external_id,
        "messageId": message.id,
        "sequence": message.sequence,
        "text": item["text"],
        "unredactedText": item.get("unredactedText"),
        "tokens": item.get("tokens"),
        "startMs": message.start_ms,
        "endMs": message.end_ms,
        "createdTimestamp": iso_ms(message.created_ms),
        "clientTimestamp": iso_ms(message.client_ms if message.client_ms is not None
                                  else message.created_ms),
        "language": message.language,
    }


class JsonlEncoder:
    """Rows as JSON lines."""

    extension = "jsonl"

    def header(self):
        return ""

    def encode(self, r):
        out = {k: v for k, v in r.items() if v is not None or k not in _OPTIONAL}
        line = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
        # Characters that str.splitlines() and some JSON readers take for
        # line breaks stay escaped, so one row is always one line.
        if any(c in line for c in _LINE_BREAKS):
            for c in _LINE_BREAKS:
                line = line.replace(c, f"\\u{ord(c):04x}")
        return line + "\n"


class _Line:
    """A file-like sink for csv.writer that keeps the last line written."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text = s


class CsvEncoder:
    """Rows as CSV lines (header first)."""

    extension = "csv"

    def __init__(self):
        self._line = _Line()
        self._writer = csv.writer(self._line, lineterminator="\r\n")

    def header(self):
        self._writer.writerow(COLUMNS)
        return self._line.text

    def encode(self, r):
        cells = []
        for name in COLUMNS:
            value = r[name]
            if name == "tokens" and value is not None:
                value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            cells.append(value)
        self._writer.writerow(cells)
        return self._line.text


ENCODERS = {"jsonl": JsonlEncoder, "csv": CsvEncoder}
