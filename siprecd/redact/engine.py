"""Find what to redact in a sequence of tokens, and mask it.

:func:`analyse` is the whole decision, sans-IO and stateless: it takes
*slots* (tokens of one or more consecutive utterances of a stream, each
with the context it was spoken in) and returns which slots are masked and
why. :mod:`siprecd.redact.call` feeds it a stream's held utterances plus
the tail of the last released one; :func:`redact_tokens` feeds it one
utterance.

How a number is found
    Tokens that are numbers (digits, number words, "oh" next to a number,
    "double five", a month next to a number in card context) form a *run*
    with the fillers between them ("uh", "dash"); a run ends at any other
    word, and at the start of an utterance that came after a long pause.
    A run's digits (:func:`siprecd.redact.tokens.spell`) are then judged
    as a whole, in this order: card number anywhere in it; 9 digits (SSN
    when said so or grouped 3-2-4, else nine-digit); identity numbers in
    SSN context; phone numbers; 10 digits; short codes and card parts in
    card/secret context. A sensitive run is masked whole: a card read with
    its CVV or a stray digit goes entirely.

What joins a number, what leaves it alone
    "of" joins a month and a year in card context ("eleven of thirty
    two"); a correction ("six oh double one, sorry I mean six oh one
    one") makes the numbers on each side one number being read, masked
    together; a part of a phone number or a social said digit by digit,
    or cut by the hold-back, is masked in phone or SSN context. Words
    around a number make it an amount, a time, a count, an address or an
    identifier ("for one twenty nine ninety nine", "in five to seven
    business days", "r e one eight eight two"), which context alone never
    masks; card numbers, 9- and 10-digit numbers and valid phone numbers
    are masked wherever they are.
"""

import re

import attrs

from siprecd.redact import detect
from siprecd.redact import lexicon as lx
from siprecd.redact import tokens as tk
from siprecd.redact.policy import (
    CARD_NUMBER,
    EMAIL,
    NINE_DIGIT,
    PHONE_NUMBER,
    SHORT_NUMERIC,
    SPOKEN_CARD_NUMBER,
    SSN,
    TEN_DIGIT,
)

__all__ = ["MASK", "Analysis", "Run", "Slot", "analyse", "classify", "mask_content", "should_mask"]

MASK = "####"
_DIGIT = re.compile(r"\d", re.ASCII)
# Kinds of token that stand for digits and are masked when their run is.
_DIGIT_KINDS = {tk.LIT, tk.NUM, tk.OH, tk.REPEAT, tk.HOMOPHONE, tk.MONTH}
_WORD_NUMBERS = {tk.NUM, tk.OH, tk.REPEAT, tk.HOMOPHONE}


@attrs.define(slots=True)
class Slot:
    """One token in a sequence being analysed."""

    content: str
    ctx: frozenset = frozenset()
    # Which utterance of the sequence it belongs to (the caller's number).
    utt: int = 0
    # Released already (look-back): used as evidence, never changed.
    readonly: bool = False
    # For a read-only slot: the kind it was masked as, if any.
    prior: str = None


@attrs.define(slots=True, eq=False)
class Run:
    """Consecutive slots that spell one number (or one e-mail address)."""

    members: list            # slot indices, fillers inside included
    digits: str = ""
    kind: str = None
    qty: bool = False        # an amount, time or ordinal
    open: bool = False       # reaches the end of the sequence: may go on
    chars: tuple = None      # (start, end) in the one MIXED token it lives in
    plus: bool = False
    month: bool = False
    ctx: frozenset = frozenset()
    excluded: bool = False   # an id, amount, address or count by the words around it
    not_code: bool = False   # a place, year or amount by the word before ("at", "since")
    grouping: tuple = ()
    inherit: str = None
    # Offsets in digits where a piece of the number starts.
    starts: tuple = (0,)
    # What the run was taken for (see policy.ENTITIES), when it is masked.
    entity: str = None
    # Said digit by digit ("four one five", "4 1 5"), not in compounds.
    spelled: bool = False
    # All its utterance says, give or take "it's", "um".
    alone: bool = False

    @property
    def first(self):
        return self.members[0]

    @property
    def last(self):
        return self.members[-1]


@attrs.define(slots=True)
class Analysis:
    runs: list
    # slot index -> (kind, run)
    masked: dict
    open_run: Run = None


def analyse(slots, policy, *, region="US", spanish=False, breaks=frozenset(), final=True,
            cut_utts=frozenset()):
    """What to mask in *slots* (a list of :class:`Slot`).

    *breaks*: slot indices a number cannot continue into from the slot
    before. *final*: nothing more will follow (else a run reaching the end
    is ``open``). *cut_utts*: utterances being released before a number
    running through them is complete (their open number is then judged
    as a card being read in groups, see :data:`SPOKEN_CARD_NUMBER`).
    """
    shapes = [tk.shape(s.content, spanish) for s in slots]
    numeric = _numeric(slots, shapes, breaks)
    runs = _runs(slots, shapes, numeric, breaks)
    n = len(slots)
    last_meaningful = n - 1
    while last_meaningful >= 0 and shapes[last_meaningful].kind == tk.FILLER:
        last_meaningful -= 1
    open_run = None
    words_in = {}
    for slot, sh in zip(slots, shapes):
        if sh.kind != tk.FILLER:
            words_in[slot.utt] = words_in.get(slot.utt, 0) + 1
    for run in runs:
        _describe(run, slots, shapes, breaks)
        said = sum(1 for i in run.members if shapes[i].kind != tk.FILLER)
        run.alone = words_in.get(slots[run.first].utt, 0) - said <= 2
        if not final and run.chars is None and not run.qty and run.last >= last_meaningful:
            run.open = True
            open_run = run
        cut = bool(cut_utts) and any(slots[i].utt in cut_utts for i in run.members) and (
            run.open or any(slots[i].utt not in cut_utts and not slots[i].readonly
                            for i in run.members))
        run.kind = classify(run, policy, region, cut=cut)
        if run.kind is not None:
            run.entity = entity_of(run)
    _link_corrections(runs, shapes, breaks)
    masked = {}
    for run in runs:
        if run.kind is None:
            continue
        for i in run.members:
            if not slots[i].readonly:
                masked[i] = (run.kind, run)
    if policy.email:
        contents = [s.content for s in slots]
        words = [sh.word for sh in shapes]
        # E-mail talked about in the utterance, or asked for just before.
        about = [lx.EMAIL in s.ctx for s in slots]
        for first, last in detect.find_emails(contents, words, breaks, about.__getitem__):
            run = Run(list(range(first, last + 1)), kind=EMAIL, entity="email")
            runs.append(run)
            for i in run.members:
                if not slots[i].readonly and i not in masked:
                    masked[i] = (EMAIL, run)
    return Analysis(runs, masked, open_run)


def _link_corrections(runs, shapes, breaks):
    """A number said, corrected and said again ("seven one eight two oh
    four, um sorry I mean two oh six four eight one one") is one number
    being read: when one side is sensitive, so is the other."""
    numbers = [r for r in runs if r.chars is None and not r.qty]
    for a, b in zip(numbers, numbers[1:]):
        if (a.kind is None) == (b.kind is None):
            continue
        between = range(a.last + 1, b.first)
        if len(between) > lx.CORRECTION_MAX_WORDS or any(i in breaks for i in range(
                a.last + 1, b.first + 1)):
            continue
        words = [shapes[i].word for i in between if shapes[i].kind != tk.FILLER]
        if not (words and all(w in lx.CORRECTION_WORDS for w in words)
                and any(w in lx.CORRECTION_MARKS for w in words)):
            continue
        plain, sensitive = (a, b) if a.kind is None else (b, a)
        if plain.excluded:
            continue
        plain.kind, plain.entity = sensitive.kind, sensitive.entity


def classify(run, policy, region, cut=False):
    """The entity kind of a described *run*, or None."""
    d = run.digits
    n = len(d)
    ctx = run.ctx
    if n >= 13 and detect.find_card(d, run.starts) is not None:
        return CARD_NUMBER
    if run.qty:
        return None
    card_ctx = lx.CARD in ctx
    secret_ctx = lx.SECRET in ctx
    # An identifier, an address or an amount by the words around it, or the
    # answer to a question about one ("and the zip code for that card?").
    ok = not run.excluded and lx.ID not in ctx
    code = ok and not run.not_code
    phone_ctx = lx.PHONE in ctx
    # The first part of a number read out digit by digit, or one that had
    # to go before the rest was heard.
    part = cut or run.spelled
    if run.month and n <= 8 and (card_ctx or secret_ctx) and policy.short_numerics:
        return SHORT_NUMERIC
    if n == 9:
        return SSN if (lx.SSN in ctx or run.grouping == (3, 2, 4)) else NINE_DIGIT
    if lx.SSN in ctx and ok and (4 <= n <= 8 or (n == 3 and part)):
        return SSN
    if policy.phone_numbers and 7 <= n <= 15 and ok and (
            detect.is_phone(d, run.plus, region, phone_ctx) or (phone_ctx and code)):
        return PHONE_NUMBER
    if n == 10 and policy.ten_digit:
        return TEN_DIGIT
    if code and policy.short_numerics:
        if (card_ctx or secret_ctx) and 3 <= n <= 4:
            return SHORT_NUMERIC
        if secret_ctx and 5 <= n <= 8:
            return SHORT_NUMERIC
        if n == 2 and run.alone and (lx.CVV in ctx or lx.PIN in ctx):
            # Part of a code, or one the recogniser heard short ("sixty three").
            return SHORT_NUMERIC
    if policy.spoken_card_numbers:
        if card_ctx and n >= 5 and code:
            return SPOKEN_CARD_NUMBER
        if cut and ok and n >= 8 and detect.card_prefix(d):
            return SPOKEN_CARD_NUMBER
    if policy.phone_numbers and phone_ctx and code and 3 <= n <= 6 and part:
        # An area code, "five five five" then a pause: part of a phone number.
        return PHONE_NUMBER
    return run.inherit


def entity_of(run):
    """What a masked *run* is to a person (one of policy.ENTITIES)."""
    kind, ctx = run.kind, run.ctx
    if kind in (CARD_NUMBER, EMAIL):
        return "card" if kind == CARD_NUMBER else "email"
    if kind == PHONE_NUMBER:
        return "phone"
    if kind == SSN:
        return "ssn"
    if kind in (NINE_DIGIT, TEN_DIGIT):
        return "account" if lx.ACCOUNT in ctx else "number"
    if kind == SPOKEN_CARD_NUMBER:
        return "account" if lx.ACCOUNT in ctx else "card"
    if kind == SHORT_NUMERIC:
        if run.month:
            return "expiry"
        for entity in (lx.CVV, lx.PIN, lx.EXPIRY):
            if entity in ctx:
                return entity
        return "cvv" if len(run.digits) == 3 else "card" if lx.CARD in ctx else "pin"
    return None


def _numeric(slots, shapes, breaks):
    """Which slots stand for digits, resolving the words that do so only
    next to numbers ("oh", "double", "for", month names)."""
    n = len(slots)
    numeric = [sh.kind in (tk.LIT, tk.NUM) for sh in shapes]
    for i, sh in enumerate(shapes):
        # "a different one", "the new one": a pronoun.
        if (sh.word == "one" and i > 0 and i not in breaks
                and shapes[i - 1].word in lx.ONE_PRONOUN_AFTER):
            numeric[i] = False
    conditional = [i for i, sh in enumerate(shapes)
                   if sh.kind in (tk.OH, tk.REPEAT, tk.HOMOPHONE, tk.MONTH)]
    if not conditional:
        return numeric

    def neighbour(i, step):
        j = i + step
        if j < 0 or j >= n or (step == 1 and j in breaks) or (step == -1 and i in breaks):
            return None
        return j

    def solid(j):
        return j is not None and shapes[j].kind in (tk.LIT, tk.NUM)

    def solid_beyond(i, step):
        # The nearest token that is not itself a maybe-digit ("oh for 6").
        j = neighbour(i, step)
        while j is not None and shapes[j].kind in (tk.OH, tk.HOMOPHONE, tk.REPEAT):
            j = neighbour(j, step)
        return solid(j)

    def resolve(i):
        kind = shapes[i].kind
        before, after = neighbour(i, -1), neighbour(i, 1)
        if kind == tk.OH:
            return ((before is not None and numeric[before])
                    or (after is not None and numeric[after]))
        if kind == tk.REPEAT:
            return after is not None and (numeric[after] or shapes[after].kind == tk.OH)
        if kind == tk.HOMOPHONE:
            return solid_beyond(i, -1) and solid_beyond(i, 1)
        # A month is part of a number only in card context (an expiry):
        # "april twenty six", "twenty six april", "december of twenty seven".
        ctx = slots[i].ctx
        if not (lx.CARD in ctx or lx.SECRET in ctx):
            return False
        if solid(before) or solid(after):
            return True
        return (after is not None and shapes[after].word in lx.EXPIRY_JOINERS
                and solid(neighbour(after, 1)))

    for order in (reversed(conditional), conditional, reversed(conditional)):
        for i in order:
            if not numeric[i] and resolve(i):
                numeric[i] = True
    return numeric


def _runs(slots, shapes, numeric, breaks):
    runs = []
    n = len(slots)
    i = 0
    while i < n:
        sh = shapes[i]
        if sh.kind == tk.MIXED:
            for start, end, digits in sh.groups:
                runs.append(Run([i], digits=digits, chars=(start, end)))
            i += 1
            continue
        if sh.kind == tk.QTY:
            runs.append(Run([i], qty=True))
            i += 1
            continue
        if not numeric[i]:
            i += 1
            continue
        members = [i]
        # An international number's "plus" belongs to it.
        if i > 0 and i not in breaks and shapes[i - 1].kind == tk.PLUS:
            members.insert(0, i - 1)
        pending = []
        k = i + 1
        while k < n and k not in breaks:
            kind = shapes[k].kind
            if numeric[k] and kind not in (tk.QTY, tk.MIXED):
                members.extend(pending)
                pending.clear()
                members.append(k)
            elif kind == tk.FILLER or (kind == tk.AND and shapes[members[-1]].kind == tk.NUM
                                       and k + 1 < n and shapes[k + 1].kind == tk.NUM):
                pending.append(k)
            elif (shapes[k].word in lx.EXPIRY_JOINERS and not pending and k + 1 < n
                  and k + 1 not in breaks and numeric[k + 1]
                  and _expiry_context(slots[k].ctx) and _a_month(members, shapes)
                  and _a_year(k + 1, slots, shapes, numeric, breaks)):
                # "eleven of thirty two", "oh nine of twenty nine": an expiry.
                pending.append(k)
            else:
                break
            k += 1
        runs.append(Run(members))
        i = members[-1] + 1
    return runs


def _expiry_context(ctx):
    return lx.EXPIRY in ctx or lx.CARD in ctx or lx.SECRET in ctx


def _a_year(k, slots, shapes, numeric, breaks):
    """Whether the number starting at slot *k* is the year of an expiry
    ("thirty two", "twenty twenty nine", "29", "2029")."""
    atoms = []
    while k < len(slots) and numeric[k] and (not atoms or k not in breaks):
        atoms.extend(shapes[k].atoms)
        k += 1
    digits = tk.spell(atoms)
    return (len(digits) == 2 and "20" <= digits <= "49") or (
        len(digits) == 4 and "2000" <= digits <= "2049")


def _a_month(members, shapes):
    """Whether the number said by *members* can be a month ("oh nine",
    "eleven", "09", "december")."""
    if len(members) == 1 and shapes[members[0]].kind == tk.MONTH:
        return True
    atoms = [a for i in members for a in shapes[i].atoms]
    digits = tk.spell(atoms)
    return 1 <= len(digits) <= 2 and 1 <= int(digits) <= 12


def _describe(run, slots, shapes, breaks):
    """Fill in a run's digits, context and the clues around it."""
    members = run.members
    if run.chars is None:
        atoms = []
        grouping = []
        for i in members:
            sh = shapes[i]
            if sh.kind == tk.PLUS:
                run.plus = True
                continue
            if sh.kind == tk.LIT and sh.plus:
                run.plus = True
            if sh.kind == tk.MONTH:
                run.month = True
            if sh.atoms:
                atoms.extend(sh.atoms)
            if sh.kind == tk.LIT:
                grouping.append(len(sh.atoms[0][1]))
            elif sh.kind in _WORD_NUMBERS:
                grouping.append(0)
        run.spelled = all(
            shapes[i].kind in (tk.LIT, tk.OH, tk.REPEAT, tk.HOMOPHONE)
            or (shapes[i].kind == tk.NUM and all(a[0] == "d" for a in shapes[i].atoms))
            for i in members if shapes[i].kind in _DIGIT_KINDS)
        groups = tk.spell_groups(atoms)
        run.digits = "".join(groups)
        run.starts = tuple(tk.boundaries(groups))
        if all(g for g in grouping):
            run.grouping = tuple(grouping)
            if len(grouping) == 1:
                word = shapes[members[0]].word
                if re.fullmatch(r"\d{3}-\d{2}-\d{4}", word, re.ASCII):
                    run.grouping = (3, 2, 4)
    ctx = set()
    for i in members:
        ctx |= slots[i].ctx
        if slots[i].readonly and slots[i].prior:
            run.inherit = slots[i].prior
    run.ctx = frozenset(ctx)
    run.excluded = _excluded(run, shapes, breaks)
    j = run.first - 1
    while j >= 0 and j + 1 not in breaks and (
            shapes[j].kind == tk.FILLER or shapes[j].word in lx.DETERMINERS):
        # "refund the thirty nine ninety nine": the word before "the" says.
        j -= 1
    run.not_code = j >= 0 and j + 1 not in breaks and (
        shapes[j].word in lx.NOT_CODE_BEFORE
        # "in 2022", "in five days"; but "ending in 4242", and an expiry
        # "sometime in 2026".
        or (shapes[j].word in lx.IN_WORDS and not (j > 0 and shapes[j - 1].word in lx.ENDING)
            and lx.EXPIRY not in run.ctx))


def _excluded(run, shapes, breaks):
    """Whether the words around *run* make it an identifier, an amount, a
    time, a count or an address."""
    n = len(shapes)
    first, last = run.first, run.last
    before = []
    j = first
    while len(before) < 3 and j > 0 and j not in breaks:
        j -= 1
        if shapes[j].kind != tk.FILLER:
            before.append(shapes[j].word)
    if before and (before[0] in lx.CURRENCY_WORDS or any(w in lx.ID_WORDS for w in before)
                   or any(w in lx.STREET_BEFORE for w in before)):
        return True
    # Letters spelled before the digits ("w four five seven", "r e one
    # eight", "c as in cat seven four"): an identifier, never a card,
    # a phone or a social.
    if before and (_a_letter(before[0]) and (before[0] not in "yoe" or (
            len(before) > 1 and _a_letter(before[1]))) or before[1:3] == ["in", "as"]):
        return True
    after = []
    j = last + 1
    while len(after) < 3 and j < n and j not in breaks:
        if shapes[j].kind != tk.FILLER:
            after.append(shapes[j].word)
        j += 1
    if after and (after[0] in lx.UNIT_WORDS or after[0] in lx.AMOUNT_AFTER):
        return True
    # "five to seven business days", "two more weeks"
    if len(after) >= 2 and after[0] in lx.UNIT_QUALIFIERS and after[1] in lx.UNIT_WORDS:
        return True
    # "two forty seven thirteen on the visa": an amount put on a card.
    if after[:2] == ["on", "the"] and len(after) == 3 and after[2] in lx.PAYMENT_WORDS:
        return True
    # "123 main street", "1600 north ..."
    return any(w in lx.STREET_WORDS for w in after[:2])


def _a_letter(word):
    # Not "a" and "i", English words; "y", "o", "e" are Spanish words
    # alone, letters after another letter.
    return len(word) == 1 and "a" <= word <= "z" and word not in ("a", "i")


_EDGE_LEAD = "\"'“”‘’[{(<¿¡"
_EDGE_TRAIL = "\"'“”‘’.,;:!?)]}>"


def mask_content(content, chars=None, spanish=False):
    """*content* with its sensitive characters as ``#``.

    Digits become one ``#`` each, keeping separators ("4111-1111" ->
    "####-####"); a word becomes ``####`` whatever its length, keeping the
    punctuation around it ("four," -> "####,"); *chars* (start, end)
    masks only the digits in that part of a mixed token ("ID123456789").
    """
    if chars is not None:
        start, end = chars
        return content[:start] + _DIGIT.sub("#", content[start:end]) + content[end:]
    kind = tk.shape(content, spanish).kind
    if kind in (tk.LIT, tk.QTY):
        return _DIGIT.sub("#", content)
    core = content.lstrip(_EDGE_LEAD).rstrip(_EDGE_TRAIL)
    if not core:
        return content
    lead = content[:len(content) - len(content.lstrip(_EDGE_LEAD))]
    trail = content[len(lead) + len(core):]
    return lead + MASK + trail


def should_mask(shape_kind):
    """Whether a member token of a sensitive run is itself masked (fillers,
    "and", "plus" are kept: they say nothing)."""
    return shape_kind in _DIGIT_KINDS or shape_kind in (tk.MIXED, tk.QTY, tk.WORD)
