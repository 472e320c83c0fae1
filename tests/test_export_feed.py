"""The utterances feed's rows and formats: what a row shows (exactly what
the API shows), and that any text survives CSV and JSONL unchanged."""

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from siprecd.export import feed
from siprecd.export.samples import TEXTS
from siprecd.messages import api_message
from siprecd.storage.records import Message

T = 1_656_295_200_000  # 2022-06-27T02:00:00Z


def stored(text="my PIN is ####", unredacted="my PIN is 4321", output="redacted", tokens=None,
           client_ms=None, language="en-US", created=T + 1234):
    """A Message as storage reads it back."""
    return Message(
        "msg-1", "stream-1", text, 400, 3968, created, client_ms=client_ms,
        unredacted_text=unredacted, tokens=tokens, language=language, sequence=3, row_id=17,
        guid="00002542391662063156", leg_id="leg-1", role="customer", external_id="cust-9",
        stream_params={"redactionOutput": output, "detailedToken": tokens is not None},
    )


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text, newline="")))


def encode(rows, fmt):
    encoder = feed.ENCODERS[fmt]()
    return encoder.header() + "".join(encoder.encode(r) for r in rows)


def test_a_row_has_every_column_in_order_with_the_api_s_values():
    m = stored(client_ms=T + 1000)
    r = feed.row(m, "conv-1")
    assert tuple(r) == feed.COLUMNS
    api = api_message(m)
    assert r == {
        "externalConversationId": "00002542391662063156", "conversationId": "conv-1",
        "legId": "leg-1", "streamId": "stream-1", "role": "customer",
        "senderExternalId": "cust-9", "messageId": "msg-1", "sequence": 3,
        "text": api["text"], "unredactedText": None, "tokens": None,
        "startMs": 400, "endMs": 3968,
        "createdTimestamp": "2022-06-27T02:00:01.234Z",
        "clientTimestamp": "2022-06-27T02:00:01.000Z",
        "language": "en-US",
    }
    assert r["text"] == "my PIN is ####"
    assert r["createdTimestamp"] == api["createdTimestamp"]
    assert r["clientTimestamp"] == api["clientTimestamp"]


def test_text_follows_the_call_s_redaction_output():
    assert feed.row(stored(output="redacted"))["text"] == "my PIN is ####"
    assert feed.row(stored(output="redacted"))["unredactedText"] is None
    assert feed.row(stored(output="unredacted"))["text"] == "my PIN is 4321"
    assert feed.row(stored(output="unredacted"))["unredactedText"] is None
    both = feed.row(stored(output="redacted_and_unredacted"))
    assert (both["text"], both["unredactedText"]) == ("my PIN is ####", "my PIN is 4321")
    # Stored redacted only: never shown unredacted, whatever was asked later.
    late = feed.row(stored(unredacted=None, output="unredacted"))
    assert (late["text"], late["unredactedText"]) == ("my PIN is ####", None)


def test_client_timestamp_falls_back_to_created_and_hours_are_utc():
    r = feed.row(stored(client_ms=None))
    assert r["clientTimestamp"] == r["createdTimestamp"] == "2022-06-27T02:00:01.234Z"
    assert feed.hour_of(T) == 2
    assert feed.hour_of(T - 1) == 1
    assert feed.hour_of(T + 22 * 3_600_000 - 1) == 23
    assert feed.hour_of(T + 22 * 3_600_000) == 0


def test_jsonl_leaves_out_what_the_call_did_not_ask_for_and_keeps_nulls():
    plain = json.loads(encode([feed.row(stored(language=None))], "jsonl"))
    assert "unredactedText" not in plain and "tokens" not in plain
    assert plain["conversationId"] is None and plain["language"] is None
    tokens = [{"content": "PIN", "start": 0, "end": 200, "confidence": 0.9}]
    full = json.loads(encode([feed.row(stored(output="redacted_and_unredacted",
                                              tokens=tokens), "c")], "jsonl"))
    assert list(full) == list(feed.COLUMNS)
    assert full["tokens"] == tokens and full["unredactedText"] == "my PIN is 4321"


def test_jsonl_is_one_utf8_line_per_row_without_ascii_escapes():
    rows = [feed.row(stored(text=t)) for t in TEXTS]
    text = encode(rows, "jsonl")
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == len(TEXTS) + 1
    assert [json.loads(line)["text"] for line in lines[:-1]] == list(TEXTS)
    assert "señora" in text and "\\u" not in text


def test_csv_has_a_header_crlf_lines_and_round_trips_awkward_text():
    tokens = [{"content": 'say "hi", then', "start": 0, "end": 1, "confidence": 1.0}]
    rows = [feed.row(stored(text=t, output="redacted_and_unredacted", unredacted=t + " (u)",
                            tokens=tokens), "c") for t in TEXTS]
    text = encode(rows, "csv")
    assert text.startswith(",".join(feed.COLUMNS) + "\r\n")
    assert text.endswith("\r\n")
    back = read_csv(text)
    assert [r["text"] for r in back] == list(TEXTS)
    assert [r["unredactedText"] for r in back] == [t + " (u)" for t in TEXTS]
    assert all(json.loads(r["tokens"]) == tokens for r in back)
    assert back[0]["sequence"] == "3" and back[0]["startMs"] == "400"
    # Text with a comma, a quote or a line break is quoted; plain text is not.
    assert '"hi, thanks for calling; how can I help?"' in text
    assert ',ok,' in text


def test_jsonl_rows_stay_one_line_even_with_unicode_line_breaks():
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\rh\x0bi\x1cj"]
    text = encode([feed.row(stored(text=t)) for t in texts], "jsonl")
    assert len(text.splitlines()) == len(texts)
    assert [json.loads(line)["text"] for line in text.splitlines()] == texts
    assert "\\u2028" in text


def test_csv_writes_null_as_an_empty_field():
    back = read_csv(encode([feed.row(stored(language=None))], "csv"))
    assert back[0]["conversationId"] == back[0]["language"] == back[0]["tokens"] == ""


# Any text a recogniser could produce (not lone surrogates: not UTF-8).
_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@given(st.lists(_texts, min_size=1, max_size=5))
def test_any_text_round_trips_through_both_formats(texts):
    rows = [feed.row(stored(text=t)) for t in texts]
    assert [r["text"] for r in read_csv(encode(rows, "csv"))] == texts
    jsonl = encode(rows, "jsonl")
    # One row, one line, however the reader splits lines.
    assert [json.loads(line)["text"] for line in jsonl.splitlines()] == texts
