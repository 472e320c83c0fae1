"""What a live client asks for, checked once: :class:`LiveRequest`.

Query parameters of ``GET /conversation/v1/live`` (docs/api.rst):

``externalId``
    The call (guid) to follow; without it, every call of the app.
``after``
    Where the client stopped, to get the finals it missed from storage:
    ``STREAM:SEQUENCE`` pairs separated by commas (or the parameter
    repeated); a stream not named is replayed from its first final.
    Needs ``externalId``.
``replay``
    ``true``: replay every stored final of the call first (as ``after``
    naming no stream). Needs ``externalId``.

Strict: anything malformed is refused with the reason (nothing is
subscribed), and sizes are bounded.
"""

import re

import attrs

__all__ = ["LiveRequest", "LiveRefused", "MAX_POSITIONS", "MAX_AFTER"]

MAX_POSITIONS = 64
# Characters of ``after`` in all: 64 positions of streamIds (uuids) fit,
# and the request line
# (percent-encoded, up to three bytes a character) stays under the HTTP
# server's line limit (16 KiB).
MAX_AFTER = 4096
MAX_EXTERNAL_ID = 256
_STREAM = re.compile(r"[0-9A-Za-z._-]{1,64}")


class LiveRefused(Exception):
    """A live request that cannot be served; ``status`` is the HTTP status
    to answer with, ``str()`` says why."""

    def __init__(self, message, status=400, retry_after=None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@attrs.frozen
class LiveRequest:
    guid: str | None = None
    positions: dict = attrs.field(factory=dict)   # stream id -> last sequence the client has
    replay: bool = False

    @classmethod
    def from_args(cls, args):
        """From a twisted.web request's ``args`` (bytes -> [bytes])."""
        guid = _one(args, b"externalId")
        if guid is not None and (not guid or len(guid) > MAX_EXTERNAL_ID
                                 or not guid.isprintable()):
            raise LiveRefused(f"externalId must be 1-{MAX_EXTERNAL_ID} printable characters")
        positions = {}
        afters = args.get(b"after") or []
        if sum(len(raw) for raw in afters) > MAX_AFTER:
            raise LiveRefused(f"after may be at most {MAX_AFTER} characters long")
        for raw in afters:
            for part in _text(raw, "after").split(","):
                part = part.strip()
                if not part:
                    continue
                stream, sep, sequence = part.rpartition(":")
                if not sep or not _STREAM.fullmatch(stream) or not sequence.isdigit():
                    raise LiveRefused(
                        "after must be STREAM:SEQUENCE pairs separated by commas, "
                        "e.g. after=0f8e...:12")
                positions[stream] = max(positions.get(stream, 0), int(sequence[:12]))
                if len(positions) > MAX_POSITIONS:
                    raise LiveRefused(f"after may name at most {MAX_POSITIONS} streams")
        replay = _one(args, b"replay")
        if replay is not None and replay.lower() not in ("true", "false", "1", "0"):
            raise LiveRefused("replay must be true or false")
        replay = replay is not None and replay.lower() in ("true", "1")
        if (afters or replay) and guid is None:
            raise LiveRefused("after and replay need externalId: finals are replayed for "
                              "one call")
        return cls(guid, positions, replay or bool(afters))


def _text(raw, name):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LiveRefused(f"{name} is not UTF-8") from None


def _one(args, name):
    values = args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise LiveRefused(f"{name.decode()} may be given once")
    return _text(values[0], name.decode())
