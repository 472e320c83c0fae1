"""Score redaction on a corpus of annotated utterances (tests and bench).

Corpus: JSON lines ``{"call", "stream", "role", "text", "gap"?, "lang"?}``
whose ``text`` is what a recogniser says (lower-case words), with each
sensitive part marked ``[kind: words]`` (``kind`` one of
:data:`~siprecd.redact.policy.KINDS`). Utterances of a call are replayed
in order, as live: each word lasts 300 ms, an utterance starts ``gap`` ms
(default 700) after the previous one of the call, and arrives
(``now``) 0.5 s after its last word; numbers are formatted with
``format_numbers`` first, as the pipeline does.

Scores, by time overlap between tokens and marked words (the pipeline
merges words into tokens, "four one one one" -> "4111"):

- recall per kind: a mention counts when every token over it is masked
  (fillers such as "uh" aside);
- precision per kind: spans of that kind that overlap some mention;
- overall precision: masked tokens that overlap some mention.
"""

import json
import re
import time
from collections import defaultdict

import attrs

from siprecd.asr.results import Token
from siprecd.redact import tokens as tk
from siprecd.redact.call import CallRedactor
from siprecd.redact.policy import KINDS

__all__ = ["Entry", "load", "parse", "percentile", "replay", "score"]

MARK = re.compile(r"\[(\w+):\s*([^\]]*)\]")
WORD_MS = 300
WORD_GAP_MS = 50
DEFAULT_GAP_MS = 700
ENDPOINT_S = 0.5


@attrs.define
class Entry:
    index: int
    call: str
    stream: str
    role: str
    words: list
    # (kind, first word, last word)
    mentions: list
    gap: int = DEFAULT_GAP_MS
    language: str = "en-US"
    # "dev": written while the engine was tuned; "heldout": written after.
    set: str = "dev"
    # Filled by replay():
    tokens: tuple = ()
    redacted: tuple = ()
    spans: tuple = ()
    held: float = 0.0
    cpu: float = 0.0
    immediate: bool = True
    word_times: list = attrs.field(factory=list)


def parse(text):
    """(words, mentions) of a marked-up line."""
    words, mentions = [], []
    pos = 0
    for match in MARK.finditer(text):
        words.extend(text[pos:match.start()].split())
        inner = match.group(2).split()
        kind = match.group(1)
        if kind not in KINDS:
            raise ValueError(f"unknown entity kind {kind!r} in {text!r}")
        if inner:
            mentions.append((kind, len(words), len(words) + len(inner) - 1))
            words.extend(inner)
        pos = match.end()
    words.extend(text[pos:].split())
    return words, mentions


def load(path):
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            d = json.loads(line)
            words, mentions = parse(d["text"])
            entries.append(Entry(len(entries), d["call"], d.get("stream", "customer"),
                                 d.get("role", d.get("stream", "customer")), words, mentions,
                                 d.get("gap", DEFAULT_GAP_MS), d.get("lang", "en-US"),
                                 d.get("set", "dev")))
    return entries


def replay(entries, policy, clock=time.perf_counter):
    """Run *entries* through one CallRedactor per call, filling in each
    entry's tokens, redaction, spans, hold time and CPU time of its feed."""
    from siprecd.numbers import format_numbers

    by_call = defaultdict(list)
    for e in entries:
        by_call[e.call].append(e)
    for call_entries in by_call.values():
        language = call_entries[0].language
        redactor = CallRedactor(policy, language)
        t_ms = 0
        now = 0.0

        def take(released, fed=None):
            for r in released:
                entry = r.ref
                entry.redacted = r.redacted_tokens
                entry.spans = r.spans
                entry.held = r.held
                if entry is not fed:
                    entry.immediate = False

        for e in call_entries:
            start = t_ms + e.gap
            e.word_times = [(start + i * WORD_MS, start + (i + 1) * WORD_MS - WORD_GAP_MS)
                            for i in range(len(e.words))]
            raw = [Token(w, s, t, 1.0) for w, (s, t) in zip(e.words, e.word_times)]
            t_ms = start + WORD_MS * len(e.words)
            now = t_ms / 1000 + ENDPOINT_S
            e.tokens = tuple(format_numbers(raw, language))
            timer(redactor, now, take)
            begin = clock()
            released = redactor.feed(e.stream, e.role, e.tokens, now, ref=e)
            e.cpu = clock() - begin
            e.immediate = any(r.ref is e for r in released)
            take(released, e)
        timer(redactor, float("inf"), take)
        take(redactor.flush_all(now + policy.hold_back))
    return entries


def timer(redactor, now, take):
    """What the caller's timer does up to *now*: release each held
    utterance at its deadline."""
    deadline = redactor.next_deadline()
    while deadline is not None and deadline <= now:
        take(redactor.due(deadline))
        deadline = redactor.next_deadline()


def _masked(entry):
    return [k for k, (a, b) in enumerate(zip(entry.tokens, entry.redacted))
            if a.content != b.content]


def _interval(entry, first, last):
    return entry.word_times[first][0], entry.word_times[last][1]


def _overlaps(a, b):
    return a[0] <= b[1] and b[0] <= a[1]


def score(entries):
    """{"recall": {kind: (found, total)}, "precision": {kind: (right, total)},
    "tokens": (right, masked), "spans": (right, total)}."""
    recall = defaultdict(lambda: [0, 0])
    precision = defaultdict(lambda: [0, 0])
    token_right = token_masked = 0
    misses, false_alarms = [], []
    for e in entries:
        intervals = [_interval(e, first, last) for _, first, last in e.mentions]
        masked = set(_masked(e))
        for (kind, first, last), interval in zip(e.mentions, intervals):
            recall[kind][1] += 1
            over = [k for k, t in enumerate(e.tokens) if _overlaps((t.start, t.end), interval)]
            needed = [k for k in over if tk.shape(e.tokens[k].content).kind != tk.FILLER]
            if needed and all(k in masked for k in needed):
                recall[kind][0] += 1
            else:
                misses.append((e, kind))
        for k in masked:
            t = e.tokens[k]
            token_masked += 1
            if any(_overlaps((t.start, t.end), i) for i in intervals):
                token_right += 1
            else:
                false_alarms.append((e, t.content))
        for span in e.spans:
            precision[span.kind][1] += 1
            if any(_overlaps((span.start, span.end), i) for i in intervals):
                precision[span.kind][0] += 1
    spans_right = sum(v[0] for v in precision.values())
    spans_total = sum(v[1] for v in precision.values())
    return {
        "recall": {k: tuple(v) for k, v in recall.items()},
        "precision": {k: tuple(v) for k, v in precision.items()},
        "tokens": (token_right, token_masked),
        "spans": (spans_right, spans_total),
        "misses": misses,
        "false_alarms": false_alarms,
    }


def percentile(values, p):
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
