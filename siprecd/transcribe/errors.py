"""Why a start-streaming or stop-streaming request was refused.

Each error carries its code from docs/api.rst (``"<HTTP status>-<sub code>"``)
and its HTTP status; ``str()`` is the message for the error body.
"""

__all__ = [
    "TranscriptionError", "BadParameter", "NotAllowed", "NoSuchCall", "AlreadyInState",
    "RequestInProgress", "CallEnding", "AsrUnavailable", "Conflict",
]


class TranscriptionError(Exception):
    code = "500-201"

    @property
    def status(self):
        """The HTTP status the code starts with."""
        return int(self.code.split("-")[0])

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadParameter(TranscriptionError):
    """A request parameter is missing or has the wrong type or value."""

    code = "400-201"


class NotAllowed(TranscriptionError):
    """A transcription parameter (or combination) is not allowed: unknown
    language, bad redactionOutput."""

    code = "400-202"


class NoSuchCall(TranscriptionError):
    """No active SIPREC call has that guid."""

    code = "400-203"


class Conflict(TranscriptionError):
    """The request contradicts the state of the call in a way the client
    must resolve: a mediaLineOrder other than the current leg's (the
    customer's streamId would carry the agent's audio). A new agentId,
    i.e. a new leg, may change it."""

    code = "409-01"


class AlreadyInState(TranscriptionError):
    """Transcription is already started (start) or already stopped (stop)."""

    code = "409-201"


class RequestInProgress(TranscriptionError):
    """Another start or stop for the same guid is still being processed."""

    code = "409-202"


class CallEnding(TranscriptionError):
    """The call's BYE is being processed."""

    code = "409-203"


class AsrUnavailable(TranscriptionError):
    """Transcription cannot start: speech recognition is not ready or
    failed, storage failed, or the node is shutting down."""

    code = "500-201"
