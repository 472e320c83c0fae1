"""The records IStorage takes and returns: frozen attrs classes.

Times are integers, milliseconds since the UNIX epoch (UTC); ``start_ms``
and ``end_ms`` of a message are on the stream's own timeline. JSON-valued
fields (identifiers, sip, participants, params, stats, tokens, detail)
hold plain dicts and lists and are stored as JSON.
"""

import attrs

__all__ = [
    "App", "Call", "Leg", "Stream", "Message", "OutboxItem", "PurgeResult",
    "AuditEntry", "NodeInfo", "ExportRun", "DialogRecord",
    "ACTIVE", "ENDED", "PENDING", "IN_FLIGHT", "DELIVERED", "DEAD",
]

# Call states.
ACTIVE, ENDED = "active", "ended"
# Outbox row states.
PENDING, IN_FLIGHT, DELIVERED, DEAD = "pending", "in-flight", "delivered", "dead"


@attrs.frozen
class App:
    """API credentials; the secret itself is only ever held as a salted hash."""

    api_id: str
    webhook_target: str | None
    label: str | None
    created_ms: int
    rotated_ms: int | None = None
    revoked_ms: int | None = None

    @property
    def active(self):
        return self.revoked_ms is None


@attrs.frozen
class Call:
    """One recorded conversation, keyed by its guid.

    Written with the first six fields (and the flags); the rest are filled
    in by storage when read back.
    """

    guid: str
    call_id: str | None
    node: str
    started_ms: int
    # Every candidate identifier seen: [{"source", "value", "raw"}, ...].
    identifiers: list = attrs.field(factory=list)
    sip: dict = attrs.field(factory=dict)
    participants: list = attrs.field(factory=list)
    mixed: bool = False
    conversation_id: str | None = None
    state: str = ACTIVE
    updated_ms: int | None = None
    ended_ms: int | None = None
    end_reason: str | None = None


@attrs.frozen
class Leg:
    """A span of a call with one agent; a new agentId starts the next leg."""

    id: str
    guid: str
    number: int
    customer_id: str | None
    agent_id: str | None
    params: dict
    started_ms: int
    ended_ms: int | None = None


@attrs.frozen
class Stream:
    """One participant's audio in one leg; ``id`` is the API's streamId."""

    id: str
    guid: str
    leg_id: str
    role: str                    # "customer" or "agent"
    external_id: str | None      # customerId or agentId
    created_ms: int
    label: str | None = None     # the SDP a=label (or m-line position)
    params: dict = attrs.field(factory=dict)
    stats: dict = attrs.field(factory=dict)
    last_sequence: int = 0


@attrs.frozen
class Message:
    """One finished utterance of a stream.

    Written with the fields up to ``language``; the rest come back when
    read: ``sequence`` is its place in the stream (1, 2, ...) and
    ``row_id`` its place among all messages (for paging).
    """

    id: str
    stream_id: str
    text: str                          # redacted
    start_ms: int
    end_ms: int
    created_ms: int
    client_ms: int | None = None
    unredacted_text: str | None = None
    tokens: list | None = None
    language: str | None = None
    sequence: int | None = None
    row_id: int | None = None
    guid: str | None = None
    leg_id: str | None = None
    role: str | None = None
    external_id: str | None = None
    # The stream's start-streaming settings (redactionOutput, detailedToken...).
    stream_params: dict | None = None


@attrs.frozen
class OutboxItem:
    """One webhook delivery of one message to one target."""

    id: int
    target: str
    state: str
    attempts: int
    next_attempt_ms: int
    created_ms: int
    message: Message
    last_error: str | None = None
    claimed_by: str | None = None
    delivered_ms: int | None = None


@attrs.frozen
class PurgeResult:
    """What one retention batch deleted."""

    messages: int = 0
    guids: tuple = ()

    def __bool__(self):
        return bool(self.messages or self.guids)


@attrs.frozen
class AuditEntry:
    at_ms: int
    action: str
    app_id: str | None
    guid: str | None
    detail: dict | None


@attrs.frozen
class NodeInfo:
    id: str
    address: str | None
    started_ms: int
    heartbeat_ms: int


@attrs.frozen
class DialogRecord:
    """The SIP dialog of a recording session in progress, as kept for a BYE
    sent after the node that had it restarted or was lost (RFC 3261 §12:
    what a request in the dialog needs, and where it goes).

    ``local_uri`` is our To header as answered (name-addr, our tag),
    ``remote_uri`` the SRC's From; ``source`` and ``local_address`` are
    ``host:port`` of the SRC's end and of the listener it reached."""

    call_id: str
    local_tag: str
    remote_tag: str              # "" when the SRC sent no From tag
    node: str
    guid: str | None
    transport: str               # "UDP", "TCP" or "TLS"
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list
    local_seq: int
    remote_seq: int
    source: str
    local_address: str
    secure: bool = False
    created_ms: int | None = None
    updated_ms: int | None = None

    @property
    def key(self):
        return (self.call_id, self.local_tag, self.remote_tag)


@attrs.frozen
class ExportRun:
    id: int
    feed: str
    day: str                 # YYYY-MM-DD
    node: str
    state: str               # running, done, failed
    started_ms: int
    finished_ms: int | None
    rows: int | None
    detail: dict | None
    error: str | None
