"""Redaction of a live call: hold-back, look-back and context, sans-IO.

:class:`CallRedactor` is fed each utterance of each stream of one call as
the recogniser finishes it and says which utterances may go out, redacted.
It never reads a clock: every call takes ``now`` (seconds, e.g. an
``IReactorTime.seconds()``) and the caller runs one timer for
:meth:`CallRedactor.next_deadline` (:mod:`siprecd.redact.scheduler` does
that with a reactor).

Hold-back
    An utterance whose last word is part of a number that may go on and
    is not (yet) found sensitive ("it's 4111 1111") waits, at most
    ``policy.hold_back`` seconds, for the next utterance of its stream: if
    that one carries on the number, both are judged together. Anything
    else is released at once, and so is everything behind it in the
    stream (order per stream is the order fed). An utterance that does
    not end in a number is only ever delayed by one held before it. The
    other party taking the turn (anything but "uh huh", "okay go ahead")
    ends the wait: the number is over.
Look-back
    The number at the end of the last released utterance of a stream is
    kept, read-only, and joins a number at the start of the next one
    (if the pause between them is at most ``policy.lookback``): when the
    first half went out unredacted because hold-back ran out, the second
    half is still caught, and what follows a redacted number is redacted.
Context
    Context words ("card number", "CVV", "expiry", "PIN", "social") said
    by either party count for the numbers said after them, for
    ``policy.context_window`` seconds and ``policy.context_utterances``
    utterances of the call, unless someone changes the topic ("and your
    address?"). Each number masked in a context renews it, so a card read
    group by group, each group echoed by the other party, stays a card to
    the end. A question about an identifier ("the billing zip code for
    that card?", "the order number?") makes its answer not sensitive by
    context. Context and hold-back are per call (one CallRedactor each)
    and per stream: calls may interleave in any order.
Partials (interim results)
    :meth:`CallRedactor.preview` redacts an utterance still being spoken,
    for live output, without changing what is held, released or in
    context. It sees what a final would (the stream's held utterances,
    its look-back, the context of the call) and is stricter, since its
    own next words may still make a number sensitive ("4111 1111 is my
    card"): every number in it is masked except one that the words around
    it already make an amount, a time, a count, an address or an
    identifier, and the number at its end is masked whatever it is (it
    may go on).
Never losing an utterance
    If the analysis raises (a bug, odd input), every utterance waiting in
    that stream is released with every word masked
    (:func:`~siprecd.redact.failclosed.fail_closed`, span kind
    ``fail_closed``), one error line is logged with the exception's type
    and no text, and the redactor goes on with the rest of the call.
    :meth:`CallRedactor.feed`, :meth:`~CallRedactor.due` and
    :meth:`~CallRedactor.flush` never raise for what the tokens hold.
"""

import re
from collections import Counter, deque

import attrs
from twisted.logger import Logger

from siprecd.asr.results import Token
from siprecd.redact import detect
from siprecd.redact import lexicon as lx
from siprecd.redact import tokens as tk
from siprecd.redact.engine import Slot, analyse, mask_content, should_mask
from siprecd.redact.failclosed import fail_closed
from siprecd.redact.policy import EMAIL, FAIL_CLOSED, Policy

__all__ = [
    "CallRedactor",
    "Redacted",
    "Released",
    "Span",
    "make_hook",
    "redact_text",
    "redact_tokens",
    "region_of",
]

log = Logger(namespace="siprecd.redact")

# Language tag -> phonenumbers region; the language's own country otherwise.
_DEFAULT_REGIONS = {"en": "US", "es": "US"}


def region_of(language):
    """(phonenumbers region, Spanish words on) for a language tag: "en-US" ->
    ("US", False), "es-MX" -> ("MX", True)."""
    tag = str(language or "en-US").replace("_", "-").split("-")
    lang = tag[0].lower()
    region = tag[1].upper() if len(tag) > 1 and len(tag[1]) == 2 else None
    return region or _DEFAULT_REGIONS.get(lang, "US"), lang == "es"


@attrs.frozen
class Span:
    """A redacted part of one utterance: tokens ``first``..``last``
    (inclusive indices) and their time on the stream's timeline (ms), to
    silence the audio with; ``kind`` the policy kind that masked it,
    ``entity`` what it was taken for (:data:`~siprecd.redact.policy.ENTITIES`)."""

    kind: str
    first: int
    last: int
    start: int
    end: int
    entity: str = None

    def as_dict(self):
        return {"kind": self.kind, "entity": self.entity, "first": self.first,
                "last": self.last, "start": self.start, "end": self.end}


@attrs.frozen
class Redacted:
    """One utterance, redacted: its text, its tokens (same number, same
    times, sensitive contents masked) and the spans masked."""

    text: str
    tokens: tuple
    spans: tuple

    @property
    def kinds(self):
        return frozenset(s.kind for s in self.spans)


@attrs.frozen
class Released:
    """An utterance ready to go out.

    ``tokens``/``text`` as fed; ``redacted_tokens``/``redacted_text``
    masked; ``spans`` what was masked; ``held`` the seconds it waited;
    ``ref`` whatever the caller passed to :meth:`CallRedactor.feed`.
    """

    stream: object
    role: object
    tokens: tuple
    text: str
    redacted_text: str
    redacted_tokens: tuple
    spans: tuple
    held: float = 0.0
    ref: object = None

    @property
    def kinds(self):
        return frozenset(s.kind for s in self.spans)

    @property
    def redacted(self):
        return bool(self.spans)


@attrs.define
class _Pending:
    seq: int
    stream: object
    role: object
    tokens: tuple
    fed_at: float
    deadline: float
    ctx: frozenset
    ref: object


@attrs.define
class _Stream:
    pending: deque = attrs.field(factory=deque)
    # Read-only Slots of the number that ended the last released utterance.
    lookback: list = attrs.field(factory=list)
    lookback_end: int = 0


class _Context:
    """Which context kinds are active for the next utterance of a call.

    What an utterance asks for counts for ``utterances`` utterances after
    it (within ``window`` seconds); a number found sensitive renews the
    context it was found in, so a card read out group by group, each group
    echoed by the other party, stays a card to the end. A question about
    an identifier ("the zip code", "the order number", kind ``id``) counts
    for the answer only; another topic ("and your address?") ends it all.
    """

    # The question and the answer to it (an "uh" between).
    ID_UTTERANCES = 2

    def __init__(self, window, utterances):
        self.window = window
        self.utterances = utterances
        self.entries = []

    def note(self, seq, now, own, changes_topic):
        self.entries = [(s, t, k) for s, t, k in self.entries
                        if k and seq - s <= self.utterances and now - t <= self.window]
        # An identifier named in the utterance itself ("my zip is ...") is
        # left to the words next to its number; asked for, it covers the answer.
        active = set(own - {lx.ID})
        for s, _, kinds in self.entries:
            active |= kinds if seq - s <= self.ID_UTTERANCES else kinds - {lx.ID}
        if own & lx.SENSITIVE:
            # Its own words say what its numbers are ("... the card ending in").
            active.discard(lx.ID)
        # What this utterance changes counts from the next one on: it still
        # answers the question before it ("it's 921 and my zip is ..."),
        # unless it speaks of money ("your total comes to ...").
        if changes_topic and not own & lx.SENSITIVE:
            if lx.MONEY in own:
                active = set(own - {lx.ID})
            self.entries.clear()
        elif own & lx.SENSITIVE and lx.ID not in own:
            # A new question about something sensitive: the identifier
            # asked for before is answered.
            self.entries = [(s, t, k - {lx.ID}) for s, t, k in self.entries]
        if own and self.utterances > 0:
            self.entries.append((seq, now, own))
        return frozenset(active)

    def peek(self, seq, now, own, changes_topic):
        """What :meth:`note` would answer, leaving the entries as they are."""
        # note() only ever rebinds or changes a list it made itself.
        saved = self.entries
        try:
            return self.note(seq, now, own, changes_topic)
        finally:
            self.entries = saved

    def renew(self, seq, now, kinds):
        """A number of utterance *seq* was masked in the context *kinds*."""
        if kinds and self.utterances > 0:
            self.entries.append((seq, now, frozenset(kinds)))


# The context a masked entity renews.
_RENEWS = {
    "card": {lx.CARD}, "expiry": {lx.CARD, lx.SECRET, lx.EXPIRY},
    "cvv": {lx.CARD, lx.SECRET, lx.CVV}, "pin": {lx.SECRET, lx.PIN},
    "ssn": {lx.SSN}, "phone": {lx.PHONE}, "account": {lx.CARD, lx.ACCOUNT},
}


def _backchannel(words):
    """Whether an utterance only acknowledges ("uh huh", "okay go ahead")."""
    return len(words) <= lx.BACKCHANNEL_MAX_WORDS and all(w in lx.BACKCHANNEL for w in words)


def _with_content(token, content):
    if content == token.content:
        return token
    return attrs.evolve(token, content=content)


def _join(tokens):
    return " ".join(t.content for t in tokens)


def _render(tokens, slots, offset, analysis, spanish):
    """(redacted tokens, spans) for *tokens*, whose slots start at *offset*."""
    out = list(tokens)
    runs = {}
    for k, token in enumerate(tokens):
        mark = analysis.masked.get(offset + k)
        if mark is None:
            continue
        kind, run = mark
        first_last = runs.setdefault(id(run), [kind, k, k, run.entity])
        first_last[2] = k
        if run.chars is not None:
            out[k] = _with_content(token, mask_content(token.content, run.chars))
        elif kind == EMAIL or should_mask(tk.shape(token.content, spanish).kind):
            out[k] = _with_content(token, mask_content(token.content, spanish=spanish))
    spans = []
    for kind, first, last, entity in sorted(runs.values(), key=lambda r: r[1]):
        # A span is what was masked: never just the filler inside a number.
        while first <= last and out[first] is tokens[first]:
            first += 1
        while last >= first and out[last] is tokens[last]:
            last -= 1
        if first <= last:
            spans.append(Span(kind, first, last, int(tokens[first].start), int(tokens[last].end),
                              entity))
    return tuple(out), tuple(spans)


def redact_tokens(tokens, policy=None, language="en-US", context=()):
    """*tokens* (``Token``-like: content, start, end) of one utterance,
    redacted on their own: no hold-back, no look-back. *context*: context
    kinds already active ("card", "secret", "ssn", "phone")."""
    policy = policy or Policy()
    region, spanish = region_of(language)
    tokens = tuple(tokens)
    own, _ = detect.context_of([tk.shape(t.content, spanish).word for t in tokens])
    ctx = own | frozenset(context)
    slots = [Slot(t.content, ctx) for t in tokens]
    analysis = analyse(slots, policy, region=region, spanish=spanish)
    out, spans = _render(tokens, slots, 0, analysis, spanish)
    return Redacted(_join(out), out, spans)


_WHITESPACE = re.compile(r"(\s+)")


def redact_text(text, policy=None, language="en-US", context=()):
    """*text* redacted (whitespace kept as it was); for one-off use."""
    parts = _WHITESPACE.split(text)
    words = [(i, p) for i, p in enumerate(parts) if p and not p.isspace()]
    result = redact_tokens([Token(p, 0, 0, 1.0) for _, p in words], policy, language, context)
    for (i, _), token in zip(words, result.tokens):
        parts[i] = token.content
    return "".join(parts)


def make_hook(policy=None, language="en-US"):
    """A ``redact(text, tokens) -> (text, tokens)`` function (the shape of
    ``TranscriptionService``'s hook) that redacts each utterance on its
    own. Tokens are what counts; *text* is their contents joined."""

    def redact(text, tokens):
        try:
            result = redact_tokens(tokens, policy, language)
        except Exception as e:  # noqa: BLE001 - fail closed, never lose an utterance
            log.error("redaction failed ({error}): an utterance released fully masked",
                      error=type(e).__name__)
            masked_text, masked = fail_closed(tokens)
            return masked_text, list(masked)
        return result.text, list(result.tokens)

    return redact


class CallRedactor:
    """Redaction state of one call (all its streams). See the module doc.

    *policy* a :class:`~siprecd.redact.policy.Policy`; *language* the
    call's language tag (phone region, Spanish number words);
    *log_context* stable keys (``guid``...) added to log events, which
    never hold transcript text unless ``policy.log_unredacted``.
    """

    def __init__(self, policy=None, language="en-US", log_context=None):
        self.policy = policy or Policy()
        self.language = language
        self.region, self.spanish = region_of(language)
        self.log_context = dict(log_context or {})
        self.stats = Counter()
        self._streams = {}
        self._context = _Context(self.policy.context_window, self.policy.context_utterances)
        self._seq = 0
        self._now = 0.0

    # -- the interface ---------------------------------------------------------------

    def feed(self, stream, role, tokens, now, ref=None):
        """Take the next utterance of *stream* (tokens on the stream's
        timeline, ms) spoken by *role*; return every :class:`Released`
        ready at *now*, this call's streams all included, in order per
        stream."""
        self._now = max(self._now, now)
        out = self.due(now)
        tokens = tuple(tokens)
        try:
            words = [tk.shape(t.content, self.spanish).word for t in tokens]
            own, changes_topic = detect.context_of(words)
        except Exception:  # noqa: BLE001 - the analysis fails closed on it below
            words, own, changes_topic = [None], frozenset(), False
        ctx = self._context.note(self._seq, now, own, changes_topic)
        if not _backchannel(words):
            # The other party took the turn: what another stream was saying
            # is over, and its next number starts afresh.
            for other, state in self._streams.items():
                if other != stream:
                    out.extend(self._settle(state, now, force=True))
                    state.lookback = []
        state = self._streams.setdefault(stream, _Stream())
        state.pending.append(_Pending(self._seq, stream, role, tokens, now,
                                      now + self.policy.hold_back, ctx, ref))
        self._seq += 1
        self.stats["utterances"] += 1
        out.extend(self._settle(state, now))
        return out

    def preview(self, stream, role, tokens, now):
        """*tokens* of the utterance *stream* is still speaking, redacted
        for a partial (see the module docstring): a :class:`Redacted`.
        Changes nothing; raises if the analysis does (the caller then
        masks every word)."""
        tokens = tuple(tokens)
        words = [tk.shape(t.content, self.spanish).word for t in tokens]
        own, changes_topic = detect.context_of(words)
        ctx = self._context.peek(self._seq, now, own, changes_topic)
        state = self._streams.get(stream) or _Stream()
        slots, breaks, _ = self._chain(state)
        offset = len(slots)
        last = next((p.tokens[-1].end for p in reversed(state.pending) if p.tokens), None)
        if last is None and state.lookback:
            last = state.lookback_end
        if tokens and last is not None and tokens[0].start - last > self.policy.lookback * 1000:
            breaks.add(offset)
        slots.extend(Slot(t.content, ctx, self._seq) for t in tokens)
        analysis = analyse(slots, self.policy, region=self.region, spanish=self.spanish,
                           breaks=breaks, final=False)
        out, spans = _render(tokens, slots, offset, analysis, self.spanish)
        out = list(out)
        for run in analysis.runs:
            if run.kind is not None:
                continue  # masked by _render already
            if not run.open and (run.qty or run.excluded):
                continue  # an amount, time, count, address or identifier
            for i in run.members:
                k = i - offset
                if k < 0 or out[k] is not tokens[k]:
                    continue
                token = tokens[k]
                if run.chars is not None:
                    out[k] = _with_content(token, mask_content(token.content, run.chars))
                elif should_mask(tk.shape(token.content, self.spanish).kind):
                    out[k] = _with_content(token, mask_content(token.content,
                                                               spanish=self.spanish))
        out = tuple(out)
        return Redacted(_join(out), out, spans)

    def due(self, now):
        """Release the utterances whose hold-back has run out by *now*."""
        self._now = max(self._now, now)
        out = []
        for state in list(self._streams.values()):
            if state.pending and state.pending[0].deadline <= now:
                out.extend(self._settle(state, now))
        return out

    def next_deadline(self):
        """When :meth:`due` next has something to release, or None."""
        deadlines = [p.deadline for s in self._streams.values() for p in s.pending]
        return min(deadlines) if deadlines else None

    def flush(self, stream, now=None):
        """Release everything held for *stream* (its window stopped or the
        call ended) and forget its look-back."""
        state = self._streams.get(stream)
        if state is None:
            return []
        now = self._now if now is None else max(self._now, now)
        out = self._settle(state, now, final=True)
        state.lookback = []
        return out

    def flush_all(self, now=None):
        """:meth:`flush` every stream."""
        out = []
        for stream in list(self._streams):
            out.extend(self.flush(stream, now))
        return out

    def pending(self, stream=None):
        """How many utterances are held (of *stream*, or of the call)."""
        if stream is not None:
            state = self._streams.get(stream)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._streams.values())

    # -- the work --------------------------------------------------------------------

    def _chain(self, state):
        slots = list(state.lookback)
        breaks = set()
        offsets = []
        gap = self.policy.lookback * 1000
        last_end = state.lookback_end if state.lookback else None
        for p in state.pending:
            offsets.append(len(slots))
            if p.tokens:
                if last_end is not None and p.tokens[0].start - last_end > gap:
                    breaks.add(len(slots))
                last_end = p.tokens[-1].end
            slots.extend(Slot(t.content, p.ctx, p.seq) for t in p.tokens)
        return slots, breaks, offsets

    def _settle(self, state, now, final=False, force=False):
        """Release what can go from the head of *state*'s queue: all of it
        when *final* (nothing more will come) or *force* (it must go now,
        though more may come), else what is not held. If the analysis
        raises, every utterance of the queue goes out fully masked."""
        if not state.pending:
            return []
        try:
            count, out, lookback = self._judge(state, now, final, force)
        except Exception as e:  # noqa: BLE001 - fail closed, never lose an utterance
            return self._release_masked(state, now, e)
        seqs = [state.pending.popleft().seq for _ in range(count)]
        state.lookback, state.lookback_end = lookback
        for seq, release in zip(seqs, out):
            self._count(release)
            renewed = set()
            for span in release.spans:
                renewed |= _RENEWS.get(span.entity, set())
            self._context.renew(seq, now, renewed)
        return out

    def _judge(self, state, now, final, force):
        """(how many to release, their Released, the new look-back), with
        *state* left as it was."""
        slots, breaks, offsets = self._chain(state)
        options = {"region": self.region, "spanish": self.spanish, "breaks": breaks, "final": final}
        analysis = analyse(slots, self.policy, **options)
        open_members = set()
        # Only a number not (yet) found sensitive is worth waiting for: the
        # rest of a redacted one is redacted anyway, by look-back.
        if analysis.open_run is not None and analysis.open_run.kind is None:
            open_members = set(analysis.open_run.members)
        count = 0
        for p, offset in zip(state.pending, offsets):
            holds = any(offset + k in open_members for k in range(len(p.tokens)))
            if holds and not (final or force or now >= p.deadline):
                break
            count += 1
        if not count:
            return 0, [], (state.lookback, state.lookback_end)
        released = list(state.pending)[:count]
        if not final and (analysis.open_run is not None or count < len(state.pending)):
            # Released before the number running through them was complete.
            analysis = analyse(slots, self.policy, cut_utts={p.seq for p in released},
                               **options)
        out = [self._released(p, slots, offset, analysis, now)
               for p, offset in zip(released, offsets)]
        end = offsets[count - 1] + len(released[-1].tokens)
        return count, out, self._lookback_of(slots, end, analysis, released)

    def _release_masked(self, state, now, error):
        """Fail closed: release all of *state*'s queue with every word masked."""
        released = list(state.pending)
        state.pending.clear()
        state.lookback, state.lookback_end = [], 0
        # The exception's type only: its message may quote the words.
        log.error("redaction failed ({error}): {count} utterance(s) released fully masked",
                  error=type(error).__name__, count=len(released), **self.log_context)
        out = []
        for p in released:
            text, masked = fail_closed(p.tokens)
            spans = ((Span(FAIL_CLOSED, 0, len(p.tokens) - 1, int(p.tokens[0].start),
                           int(p.tokens[-1].end)),) if p.tokens else ())
            release = Released(p.stream, p.role, p.tokens, _join(p.tokens), text, masked,
                               spans, max(0.0, now - p.fed_at), p.ref)
            self._count(release)
            out.append(release)
        return out

    def _lookback_of(self, slots, end, analysis, released):
        """(look-back slots, end time) of the number that ends the released
        part, if one does."""
        last = next((p for p in reversed(released) if p.tokens), None)
        if last is None:
            return [], 0
        i = end - 1
        while i >= 0 and tk.shape(slots[i].content, self.spanish).kind == tk.FILLER:
            i -= 1
        tail = next((run for run in analysis.runs
                     if run.chars is None and not run.qty and run.kind != EMAIL
                     and run.first <= i <= run.last and i in run.members), None)
        if tail is None:
            return [], 0
        keep = [j for j in tail.members if j < end][-40:]
        lookback = [
            Slot(slots[j].content, slots[j].ctx, -1, readonly=True,
                 prior=tail.kind or slots[j].prior)
            for j in keep]
        return lookback, int(last.tokens[-1].end)

    def _released(self, p, slots, offset, analysis, now):
        redacted, spans = _render(p.tokens, slots, offset, analysis, self.spanish)
        held = max(0.0, now - p.fed_at)
        return Released(p.stream, p.role, p.tokens, _join(p.tokens), _join(redacted),
                        redacted, spans, held, p.ref)

    def _count(self, release):
        self.stats["released"] += 1
        if release.held > 0:
            self.stats["held"] += 1
        spans = release.spans
        for span in spans:
            self.stats[span.kind] += 1
        if spans:
            kinds = ",".join(sorted({s.kind for s in spans}))
            if self.policy.log_unredacted:
                log.debug("redacted {count} span(s) ({kinds}) of {text!r} after {held:.3f} s",
                          count=len(spans), kinds=kinds, text=release.text, held=release.held,
                          **self.log_context)
            else:
                log.debug("redacted {count} span(s) ({kinds}) after {held:.3f} s",
                          count=len(spans), kinds=kinds, held=release.held, **self.log_context)
