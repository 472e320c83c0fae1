"""Transcription: each stream's PCM to stored utterances, while the API says so.

Each module has one job:

- ``request``: a start-streaming request checked once (``StartRequest``),
  and the settings in force for a leg (``LegSettings``);
- ``calls``: calls and legs (the call listener, start and stop);
- ``windows``: audio windows, the gate between a stream's PCM and its
  recogniser;
- ``pipeline``: one window's audio through its recogniser, in order;
- ``segment``: where utterances end and what a recogniser is given;
- ``timeline``: recogniser times onto the stream's timeline;
- ``utterances``: each finished utterance formatted, redacted, stored,
  handed on;
- ``service``: ``TranscriptionService``, the parts as one stage of a node;
- ``errors``: why a start or stop was refused, with the codes of docs/api.rst.
"""

from siprecd.transcribe.errors import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, NoSuchCall, NotAllowed,
    RequestInProgress, TranscriptionError,
)
from siprecd.transcribe.request import LegSettings, StartRequest
from siprecd.transcribe.service import TranscriptionService
from siprecd.transcribe.utterances import no_redaction

__all__ = [
    "TranscriptionService", "StartRequest", "LegSettings", "no_redaction",
    "TranscriptionError", "BadParameter", "NotAllowed", "NoSuchCall", "AlreadyInState",
    "RequestInProgress", "CallEnding", "AsrUnavailable",
]
