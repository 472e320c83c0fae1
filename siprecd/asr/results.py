"""What recognisers return: finished utterances with their words; and
:class:`Token`, a word placed on a stream's timeline, which every layer
above the recogniser (transcription, redaction, storage) shares.

Times are seconds from the first sample the recogniser was given (see
``siprecd.interfaces.IRecognizer``). ``from_vosk_json`` reads the JSON that
Vosk (and vosk-server, which forwards it) produces, so both the local and
the remote backend turn it into the same objects.
"""

import json

import attrs

__all__ = ["Word", "AsrResult", "Token", "from_vosk_json", "partial_from_vosk_json"]


@attrs.frozen
class Word:
    word: str
    start: float
    end: float
    conf: float = 1.0


@attrs.frozen
class Token:
    """A word of an utterance on the stream's timeline (milliseconds), as
    the layers above a recogniser carry it: formatted (spoken numbers as
    digits), redacted, stored and delivered."""

    content: str
    start: int
    end: int
    confidence: float

    def as_dict(self):
        return {"content": self.content, "start": self.start, "end": self.end,
                "confidence": round(self.confidence, 4)}


@attrs.frozen
class AsrResult:
    text: str
    words: tuple = attrs.field(default=(), converter=tuple)
    final: bool = True

    @property
    def start(self):
        """Start of the first word, or None when there are no word times."""
        return self.words[0].start if self.words else None

    @property
    def end(self):
        """End of the last word, or None when there are no word times."""
        return self.words[-1].end if self.words else None


def _document(text):
    document = json.loads(text) if isinstance(text, (str, bytes, bytearray)) else text
    if not isinstance(document, dict):
        raise ValueError(
            f"expected a JSON object from the recogniser, got {type(document).__name__}")
    return document


def _words(items, offset):
    return tuple(
        Word(
            str(w["word"]),
            _shifted(float(w["start"]), offset),
            _shifted(float(w["end"]), offset),
            float(w.get("conf", 1.0)),
        )
        for w in items or ()
    )


def from_vosk_json(text, offset=0.0):
    """The finished results in one Vosk result document (``Result()`` or
    ``FinalResult()``): a list of one AsrResult, or an empty list when
    nothing was said. *offset* (seconds) is added to every word time; the
    remote backend uses it to keep times on the stream's timeline across
    server sessions. Partial results (``{"partial": ...}``) give [].
    """
    document = _document(text)
    if "text" not in document:
        return []
    words = _words(document.get("result"), offset)
    spoken = str(document["text"]).strip()
    if not spoken and not words:
        return []
    return [AsrResult(spoken or " ".join(w.word for w in words), words, final=True)]


def partial_from_vosk_json(text, offset=0.0):
    """The interim result in a Vosk ``PartialResult()`` document
    (``{"partial": "...", "partial_result": [...]}``, the word list only
    when partial words are on): an AsrResult with ``final=False``, whose
    words have times when the document has them. Words without times
    (vosk-server without partial words) get none: ``words`` is then
    empty and ``text`` says what was heard. Raises ValueError for a
    document that is not a partial result."""
    document = _document(text)
    if "partial" not in document:
        raise ValueError("not a partial result: it has no 'partial' member")
    words = _words(document.get("partial_result"), offset)
    spoken = " ".join(str(document["partial"]).split())
    return AsrResult(spoken or " ".join(w.word for w in words), words, final=False)


def _shifted(seconds, offset):
    # Vosk writes times to the microsecond; a shifted time is rounded back
    # to that, so that it equals what an unshifted recogniser would give
    # rather than differ by a floating-point hair.
    return round(seconds + offset, 6) if offset else seconds

