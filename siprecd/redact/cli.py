"""``siprecd redact -c FILE``: redact utterances read from standard input.

The tool to try a redaction policy on transcripts before deploying it.
Each input line is one utterance, in call order (the order they were
said, calls interleaved as they like):

- plain text: one stream of one call, printed back as redacted text;
- a JSON object ``{"call": "...", "stream": "...", "role": "...", "text":
  "..."}``: ``text`` required; ``call`` (default one call for all lines),
  ``stream`` (default the role, else one stream) and ``role`` (default
  ``customer``) strings; ``start``/``end`` optional, in ms on the
  stream's timeline; ``language`` optional, the call's first line
  decides. Printed back as a JSON line with the same fields, ``text``
  redacted and ``entities`` (kind, token indices, ms) added.

Lines go through what the live pipeline does with an utterance: spoken
numbers written as digits (when ``asr.format_numbers`` is on), then a
:class:`~siprecd.redact.call.CallRedactor` per call with the configured
policy, so numbers split across lines of a stream and the other party's
question ("what's the CVV?") count. Without times, an utterance ending
in a number waits for the next line of its stream (or the end of input);
with ``start``/``end`` the hold-back runs on those times, as live. Output
is in input order, one line per input line.

A line that cannot be read (not JSON, no ``text``, a field of the wrong
type) or whose redaction fails is not a reason to stop: an error line
naming its line number (never its text) goes to standard error, the line
is printed fully masked in its place (every word ``####``, every digit
``#``), and the rest is redacted. The exit status is then 65
(EX_DATAERR) at the end; 0 when every line was redacted; 78 for a bad
configuration.
"""

import json
import re
import sys

from siprecd import config as configmod
from siprecd.asr.results import Token
from siprecd.redact.failclosed import mask_everything

__all__ = ["register"]

EXIT_DATA = 65  # sysexits EX_DATAERR: some line could not be read or redacted
WORD_MS = 300
PAUSE_MS = 1000
# Seconds between lines without times: too short for any hold-back to run out.
LINE_SECONDS = 0.001
ENDPOINT_SECONDS = 0.5


def register(subparsers):
    p = subparsers.add_parser(
        "redact", help="redact utterances from standard input with the configured policy",
        description=__doc__.split("\n\n", 1)[1], formatter_class=_raw_formatter())
    p.add_argument("-c", "--config", required=True, help="YAML configuration file")
    p.add_argument("--language", default="en-US",
                   help="language of calls whose lines do not say (default en-US)")
    p.set_defaults(func=_redact)


def _raw_formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


class _Call:
    def __init__(self, redactor, language):
        self.redactor = redactor
        self.language = language
        self.clock_ms = 0
        self.now = 0.0


class _Lines:
    """Input lines waiting for their redaction, printed in input order."""

    def __init__(self, out):
        self.out = out
        self.results = {}
        self.next = 0

    def done(self, index, text):
        self.results[index] = text
        while self.next in self.results:
            self.out.write(self.results.pop(self.next) + "\n")
            self.next += 1
        self.out.flush()


def _redact(args):
    from siprecd.redact.call import CallRedactor
    from siprecd.redact.policy import Policy

    try:
        config = configmod.load(args.config)
    except configmod.ConfigError as e:
        print(f"siprecd: {e}", file=sys.stderr)
        return configmod.EXIT_CONFIG
    policy = Policy.from_config(config.redaction)
    format_numbers = config.asr.format_numbers
    calls = {}
    lines = _Lines(sys.stdout)

    def hand_on(released):
        for item in released:
            index, item_json, meta = item.ref
            if item_json:
                meta = dict(meta)
                meta["text"] = item.redacted_text
                meta["entities"] = [s.as_dict() for s in item.spans]
                lines.done(index, json.dumps(meta, ensure_ascii=False))
            else:
                lines.done(index, item.redacted_text)

    bad = 0
    if hasattr(sys.stdin, "reconfigure"):
        # Bytes that are not UTF-8 are one bad line's problem, not the run's.
        sys.stdin.reconfigure(errors="replace")
    for index, raw in enumerate(sys.stdin):
        line = raw.rstrip("\r\n")
        try:
            utterance = _parse(line, args.language)
            if utterance is None:
                lines.done(index, line)
                continue
            meta, is_json = utterance
            call_key = meta.get("call", "-")
            call = calls.get(call_key)
            if call is None:
                language = meta.get("language") or args.language
                call = calls[call_key] = _Call(CallRedactor(policy, language), language)
            tokens, now = _tokens(call, meta, format_numbers)
        except Exception as e:  # noqa: BLE001 - one bad line must not stop the rest
            bad += 1
            reason = str(e) if isinstance(e, BadLine) else f"cannot be redacted ({type(e).__name__})"
            print(f"siprecd: line {index + 1}: {reason}; printed fully masked", file=sys.stderr)
            lines.done(index, _masked_line(line))
            continue
        role = meta.get("role", "customer")
        stream = meta.get("stream", meta.get("role", "-"))
        shown = {k: v for k, v in meta.items() if k != "text"}
        # CallRedactor fails closed by itself: this never raises.
        hand_on(call.redactor.feed(stream, role, tokens, now, ref=(index, is_json, shown)))
    for call in calls.values():
        hand_on(call.redactor.flush_all())
    return EXIT_DATA if bad else 0


_NON_SPACE = re.compile(r"\S+")


def _masked_line(line):
    """*line* with every word masked, its spacing kept."""
    return _NON_SPACE.sub(lambda m: mask_everything(m.group()), line)


class BadLine(ValueError):
    """An input line that is not an utterance."""


def _parse(line, language):
    """(fields, is_json), or None for a blank line."""
    if not line.strip():
        return None
    if not line.lstrip().startswith("{"):
        return {"text": line}, False
    try:
        meta = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(meta, dict):
        raise BadLine("expected a JSON object")
    if not isinstance(meta.get("text"), str):
        raise BadLine('expected a "text" string')
    for key in ("call", "stream", "role", "language"):
        if key in meta and not isinstance(meta[key], str):
            raise BadLine(f'expected "{key}" to be a string')
    for key in ("start", "end"):
        if key in meta and (not isinstance(meta[key], (int, float)) or isinstance(meta[key], bool)):
            raise BadLine(f'expected "{key}" to be a number of milliseconds')
    return meta, True


def _tokens(call, meta, format_numbers):
    from siprecd.numbers import format_numbers as spoken_to_digits

    words = meta["text"].split()
    if "start" in meta or "end" in meta:
        start = int(meta.get("start", meta.get("end", 0)))
        end = max(start, int(meta.get("end", start + WORD_MS * len(words))))
        step = (end - start) / max(1, len(words))
        tokens = [Token(w, int(start + i * step), int(start + (i + 1) * step), 1.0)
                  for i, w in enumerate(words)]
        call.now = max(call.now, end / 1000 + ENDPOINT_SECONDS)
    else:
        start = call.clock_ms + PAUSE_MS
        tokens = [Token(w, start + i * WORD_MS, start + (i + 1) * WORD_MS - 50, 1.0)
                  for i, w in enumerate(words)]
        call.clock_ms = start + WORD_MS * len(words)
        call.now += LINE_SECONDS
    if format_numbers:
        tokens = spoken_to_digits(tokens, call.language)
    return tokens, call.now
