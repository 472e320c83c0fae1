"""Transcription: each stream's PCM to stored utterances, while the API says so.

``TranscriptionService`` (``siprecd.transcribe.service``) is the media
plane's stream consumer, a call listener and the back end of
start-streaming and stop-streaming; ``segment`` decides where utterances
end and what a recogniser is given, ``pipeline`` runs one stream's
recogniser in order, ``timeline`` maps recogniser times onto the stream's
timeline, and ``numbers`` writes spoken numbers as digits.
"""

from siprecd.transcribe.errors import (
    AlreadyInState, AsrUnavailable, BadParameter, CallEnding, NoSuchCall, NotAllowed,
    RequestInProgress, TranscriptionError,
)
from siprecd.transcribe.service import StartParams, TranscriptionService, no_redaction

__all__ = [
    "TranscriptionService", "StartParams", "no_redaction", "TranscriptionError",
    "BadParameter", "NotAllowed", "NoSuchCall", "AlreadyInState", "RequestInProgress",
    "CallEnding", "AsrUnavailable",
]
