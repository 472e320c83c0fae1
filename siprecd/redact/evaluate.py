"""Score redaction on a corpus of annotated utterances (tests and bench).

A corpus is a directory of files, read in name order; ``heldout*`` files
are the held-out part, the rest the development part. Two file formats:

``*.jsonl``
    one utterance per line: ``{"call", "stream", "role", "text", "gap"?,
    "lang"?}``.
``*.dlg``
    dialogues as they read::

        === call pay-01 lang=en-US
        A: can I have the card number
        C(+2500): it's [card: four one one one]

    ``A:`` is the agent's stream, ``C:`` the customer's; ``(+ms)`` the
    pause before the utterance (default 700 ms); ``#`` starts a comment.

``text`` is what a recogniser says (lower-case words), each sensitive part
marked ``[label: words]`` with a label of :data:`LABELS`. Labels are what
a person would call the information, not the policy kind that masks it
(a CVV and an expiry are both ``short_numeric`` to the policy).

Replay is as live: each word lasts 300 ms, an utterance starts ``gap`` ms
after the previous one of its call and arrives 0.5 s after its last word;
numbers are formatted with ``format_numbers`` first, as the pipeline does.
Calls overlap: their utterances are fed in a shuffled interleaving (order
within a call kept), each call with its own ``CallRedactor``.

Scores are by word, through time: the pipeline merges words into tokens
("four one one one" -> "4111"), and a word is masked when the token over
it is.

- recall per label: a mention counts when every word of it that carries
  digits (number words, digits, "oh", "double", month names; for e-mail
  every word but fillers) is masked;
- precision overall: masked words inside some mention over masked words;
- precision per entity: the same for the words of spans the engine took
  for that entity (``Span.entity``).
"""

import json
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import attrs

from siprecd.asr.results import Token
from siprecd.redact import tokens as tk
from siprecd.redact.call import CallRedactor
from siprecd.redact.policy import ENTITIES

__all__ = ["LABELS", "Entry", "load", "parse", "percentile", "replay", "score"]

# What a mention is, as a person would say: the entities spans are taken for.
LABELS = ENTITIES
LABEL_NAMES = {
    "card": "card number (whole or any part of it)",
    "ssn": "social security number (whole, parts, last four)",
    "phone": "phone number",
    "expiry": "card expiry date",
    "cvv": "card security code",
    "pin": "PIN, passcode, one-time code",
    "account": "bank account, routing or customer account number",
    "email": "e-mail address",
    "number": "other 9- or 10-digit number (masked for its length by policy)",
}
MARK = re.compile(r"\[(\w+):\s*([^\]]*)\]")
WORD_MS = 300
WORD_GAP_MS = 50
DEFAULT_GAP_MS = 700
ENDPOINT_S = 0.5
# Interleaving of calls used unless told otherwise.
SEED = 18
_DIGIT_WORDS = {tk.LIT, tk.NUM, tk.OH, tk.REPEAT, tk.HOMOPHONE, tk.MONTH, tk.MIXED, tk.QTY}
_DIALOGUE_CALL = re.compile(r"===\s*call\s+(\S+)(.*)$")
_DIALOGUE_LINE = re.compile(r"([AC])(?:\(\+(\d+)\))?:\s*(.*)$")


@attrs.define(eq=False)
class Entry:
    index: int
    call: str
    stream: str
    role: str
    words: list
    # (label, first word, last word)
    mentions: list
    gap: int = DEFAULT_GAP_MS
    language: str = "en-US"
    # "dev": written while the engine was tuned; "heldout": written after.
    part: str = "dev"
    source: str = ""
    # Filled by replay():
    tokens: tuple = ()
    redacted: tuple = ()
    spans: tuple = ()
    held: float = 0.0
    cpu: float = 0.0
    immediate: bool = True
    word_times: list = attrs.field(factory=list)

    @property
    def text(self):
        return " ".join(self.words)


def parse(text):
    """(words, mentions) of a marked-up line."""
    words, mentions = [], []
    pos = 0
    for match in MARK.finditer(text):
        words.extend(text[pos:match.start()].split())
        inner = match.group(2).split()
        label = match.group(1)
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r} in {text!r}")
        if inner:
            mentions.append((label, len(words), len(words) + len(inner) - 1))
            words.extend(inner)
        pos = match.end()
    rest = text[pos:]
    if "[" in rest or "]" in rest:
        raise ValueError(f"unbalanced markup in {text!r}")
    words.extend(rest.split())
    return words, mentions


def load(path):
    """The entries of a corpus directory (or of one file)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".dlg")) \
        if path.is_dir() else [path]
    entries = []
    for file in files:
        part = "heldout" if file.name.startswith("heldout") else "dev"
        read = _read_dialogues if file.suffix == ".dlg" else _read_jsonl
        for fields in read(file):
            try:
                words, mentions = parse(fields["text"])
            except ValueError as e:
                raise ValueError(f"{file.name}: {e}") from None
            entries.append(Entry(len(entries), fields["call"], fields["stream"], fields["role"],
                                 words, mentions, fields.get("gap", DEFAULT_GAP_MS),
                                 fields.get("lang", "en-US"), part, file.name))
    return entries


def _read_jsonl(file):
    with open(file, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            d = json.loads(line)
            d.setdefault("stream", "customer")
            d.setdefault("role", d["stream"])
            yield d


def _read_dialogues(file):
    call, language = None, "en-US"
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            header = _DIALOGUE_CALL.match(line)
            if header:
                call = header.group(1)
                options = dict(o.split("=", 1) for o in header.group(2).split() if "=" in o)
                language = options.get("lang", "en-US")
                continue
            said = _DIALOGUE_LINE.match(line)
            if said is None or call is None:
                raise ValueError(f"{file.name}:{n}: expected '=== call ID' or 'A:'/'C:' lines")
            who = "agent" if said.group(1) == "A" else "customer"
            fields = {"call": call, "stream": who, "role": who, "text": said.group(3),
                      "lang": language}
            if said.group(2):
                fields["gap"] = int(said.group(2))
            yield fields


def interleaving(entries, seed=SEED):
    """*entries* in a feed order where calls overlap: each next utterance
    comes from a call chosen at random among those not finished (None:
    call after call, in file order)."""
    if seed is None:
        return sorted(entries, key=lambda e: (_first_index(entries)[e.call], e.index))
    by_call = defaultdict(list)
    for e in entries:
        by_call[e.call].append(e)
    queues = [list(reversed(v)) for v in by_call.values()]
    rng = random.Random(seed)
    order = []
    while queues:
        k = rng.randrange(len(queues))
        order.append(queues[k].pop())
        if not queues[k]:
            queues.pop(k)
    return order


def _first_index(entries):
    first = {}
    for e in entries:
        first.setdefault(e.call, e.index)
    return first


class _Call:
    def __init__(self, policy, language):
        self.redactor = CallRedactor(policy, language)
        self.language = language
        self.t_ms = 0
        self.now = 0.0


def replay(entries, policy, clock=time.perf_counter, seed=SEED):
    """Run *entries* through one CallRedactor per call, calls interleaved
    (see :func:`interleaving`), filling in each entry's tokens, redaction,
    spans, hold time and CPU time of its feed. Returns *entries*."""
    from siprecd.numbers import format_numbers

    calls = {}

    def take(released, fed=None):
        for r in released:
            entry = r.ref
            entry.redacted = r.redacted_tokens
            entry.spans = r.spans
            entry.held = r.held
            if entry is not fed:
                entry.immediate = False

    for e in interleaving(entries, seed):
        call = calls.get(e.call)
        if call is None:
            call = calls[e.call] = _Call(policy, e.language)
        start = call.t_ms + e.gap
        e.word_times = [(start + i * WORD_MS, start + (i + 1) * WORD_MS - WORD_GAP_MS)
                        for i in range(len(e.words))]
        raw = [Token(w, s, t, 1.0) for w, (s, t) in zip(e.words, e.word_times)]
        call.t_ms = start + WORD_MS * len(e.words)
        call.now = call.t_ms / 1000 + ENDPOINT_S
        e.tokens = tuple(format_numbers(raw, call.language))
        timer(call.redactor, call.now, take)
        begin = clock()
        released = call.redactor.feed(e.stream, e.role, e.tokens, call.now, ref=e)
        e.cpu = clock() - begin
        e.immediate = any(r.ref is e for r in released)
        take(released, e)
    for call in calls.values():
        timer(call.redactor, float("inf"), take)
        take(call.redactor.flush_all(call.now + policy.hold_back))
    return entries


def timer(redactor, now, take):
    """What the caller's timer does up to *now*: release each held
    utterance at its deadline."""
    deadline = redactor.next_deadline()
    while deadline is not None and deadline <= now:
        take(redactor.due(deadline))
        deadline = redactor.next_deadline()


def word_tokens(entry):
    """For each word of *entry*, the index of the token over it."""
    out = []
    k = 0
    for start, end in entry.word_times:
        while k < len(entry.tokens) and entry.tokens[k].end < end:
            k += 1
        out.append(k if k < len(entry.tokens) and entry.tokens[k].start <= start else None)
    return out


def required(entry, label, first, last):
    """The words of a mention that must be masked for it to count."""
    words = range(first, last + 1)
    spanish = entry.language.lower().startswith("es")
    shapes = [tk.shape(entry.words[i], spanish) for i in words]
    if label == "email":
        return [i for i, sh in zip(words, shapes) if sh.kind != tk.FILLER]
    return [i for i, sh in zip(words, shapes) if sh.kind in _DIGIT_WORDS]


def score(entries):
    """{"recall": {label: (found, total)}, "precision": {entity: (right,
    masked)}, "words": (right, masked), "misses": [(entry, label)],
    "false_alarms": [(entry, word)]} by word (see the module doc)."""
    recall = defaultdict(lambda: [0, 0])
    precision = defaultdict(lambda: [0, 0])
    right = masked_total = 0
    misses, false_alarms = [], []
    for e in entries:
        where = word_tokens(e)
        masked_tokens = {k for k, (a, b) in enumerate(zip(e.tokens, e.redacted))
                         if a.content != b.content}
        entity_of = {}
        for span in e.spans:
            for k in range(span.first, span.last + 1):
                entity_of.setdefault(k, span.entity or span.kind)
        inside = set()
        for label, first, last in e.mentions:
            inside.update(range(first, last + 1))
            recall[label][1] += 1
            needed = required(e, label, first, last)
            if needed and all(where[i] in masked_tokens for i in needed):
                recall[label][0] += 1
            else:
                misses.append((e, label))
        for i, k in enumerate(where):
            if k not in masked_tokens:
                continue
            masked_total += 1
            entity = entity_of.get(k, "?")
            precision[entity][1] += 1
            if i in inside:
                right += 1
                precision[entity][0] += 1
            else:
                false_alarms.append((e, e.words[i]))
    return {
        "recall": {k: tuple(v) for k, v in recall.items()},
        "precision": {k: tuple(v) for k, v in precision.items()},
        "words": (right, masked_total),
        "misses": misses,
        "false_alarms": false_alarms,
    }


def ratio(pair):
    found, total = pair
    return found / total if total else 1.0


def percentile(values, p):
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
