"""The API's errors: every non-2xx answer is the envelope of docs/api.rst
``{"error": {"requestId", "message", "code"}}`` with a fresh request id.

Generic codes are ``<status>-01``; the start/stop specific ones come from
:mod:`siprecd.transcribe.errors` with the same shape (``code``, ``status``,
``message``).
"""

import uuid

__all__ = [
    "ApiError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "MethodNotAllowed",
    "PayloadTooLarge", "Unprocessable", "TooManyRequests", "ServiceUnavailable",
    "InternalError", "envelope",
]


class ApiError(Exception):
    """An answer other than 2xx, with its code (docs/api.rst) and message."""

    code = "500-01"
    headers = {}

    def __init__(self, message, headers=None, extra=None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = dict(headers)
        # More top-level fields for the body (e.g. health details).
        self.extra = dict(extra or {})

    @property
    def status(self):
        return int(self.code.split("-")[0])


class BadRequest(ApiError):
    """A query or body that cannot be read (missing parameter, bad JSON)."""

    code = "400-01"


class Unauthorized(ApiError):
    code = "401-01"


class Forbidden(ApiError):
    """The app may not act on that conversation (another app's, under
    ``api.app_isolation``)."""

    code = "403-01"


class NotFound(ApiError):
    code = "404-01"


class MethodNotAllowed(NotFound):
    """No route for that method. The API's generic codes have no 405, so
    this is a 404-01 whose Allow header names the methods there are."""


class PayloadTooLarge(ApiError):
    code = "413-01"


class Unprocessable(ApiError):
    """Parameters that are present and readable but not acceptable
    (an externalId too long, a malformed conversation id)."""

    code = "422-01"


class TooManyRequests(ApiError):
    code = "429-01"


class ServiceUnavailable(ApiError):
    code = "503-01"


class InternalError(ApiError):
    code = "500-01"


def envelope(error):
    """``(status, headers, body dict)`` for an ApiError or a TranscriptionError."""
    status = getattr(error, "status", 500)
    body = {"error": {"requestId": str(uuid.uuid4()), "message": error.message,
                      "code": error.code}}
    body.update(getattr(error, "extra", {}))
    return status, dict(getattr(error, "headers", {}) or {}), body
