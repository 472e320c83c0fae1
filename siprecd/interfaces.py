"""The plug points between siprecd's parts, as zope.interface interfaces.

Implementations are checked with ``zope.interface.verify.verifyObject`` where
they are plugged in, and the test doubles in ``siprecd.testing`` are verified
against the same interfaces.
"""

from zope.interface import Attribute, Interface

__all__ = [
    "IDrainable", "IReadiness", "ICallListener", "IMediaPortAllocator", "PortsExhausted",
    "IStreamConsumer", "IASRBackend", "ILanguageStates", "IRecognizer", "IDeadlineRecognizer",
    "IRecognitionCosts", "IPartialResults",
]


class IDrainable(Interface):
    """A service with work in flight that SIGTERM should let finish.

    On shutdown the root service first calls ``stop_accepting`` on every
    drainable child, then waits for all their ``drain`` Deferreds for at most
    ``node.shutdown_grace`` seconds, then stops the children.
    """

    def stop_accepting():
        """Refuse new work from now on (may return a Deferred)."""

    def drain():
        """Return a Deferred that fires when in-flight work has finished.

        It may be cancelled when the grace period runs out.
        """


class IReadiness(Interface):
    """Whether the node can take new calls, and if not, why."""

    ready = Attribute("True when nothing is pending.")

    def pending():
        """A dict of component name -> reason it is not ready yet."""

    def details():
        """A dict of section name -> JSON-able state the parts report for
        /v1/health beyond readiness (e.g. each language's model)."""


class PortsExhausted(Exception):
    """No media port is free; the INVITE gets 503."""


class IMediaPortAllocator(Interface):
    """Hands out even RTP ports (RTCP on +1) from the configured range."""

    def allocate():
        """Return a free RTP port, or raise PortsExhausted."""

    def release(port):
        """Give a port back (it may rest a while before reuse)."""


class ICallListener(Interface):
    """What the layers above the SIP session learn of recording sessions.

    ``session`` is a ``siprecd.siprec.session.RecordingSession``: guid and
    every identifier seen, participants, and the recorded streams with
    their labels, codecs, local RTP ports, remote addresses and hold state.
    """

    def call_offered(session):
        """A new recording session is about to be answered.

        May return a Deferred; the 200 OK is sent when it fires. A failure
        refuses the call (503), so nothing is accepted that cannot be kept.
        """

    def call_updated(session):
        """Streams, hold state or metadata changed (re-INVITE, UPDATE)."""

    def call_ended(session, reason):
        """The session is over: BYE either way, CANCEL, timeout, shutdown."""


class IStreamConsumer(Interface):
    """What the media plane hands upward for each recorded stream.

    PCM comes at the codec's own rate (8 kHz for G.711 and G.729, 16 kHz
    for G.722, 48 kHz for Opus). Positions are in samples at the rate of
    the stream's latest ``pcm`` call, from the start of that stream's
    timeline (the first RTP packet of the stream is position 0; holds,
    pauses and losses keep their length), so ``position / rate`` is
    seconds. A codec switch that changes the rate converts the position:
    the time stays true. Calls come in stream order from the reactor thread.
    """

    def pcm(stream, position, samples, rate):
        """*samples*: int16 numpy array that starts at *position*, at *rate* Hz."""

    def event(stream, kind, position, detail):
        """kind: "dtmf" (detail: digit and duration in samples), "hold",
        "resume", "ssrc" (a new SSRC took over), or "end"."""


class StorageError(Exception):
    """A storage operation failed; ``str()`` is one line for the operator.

    Raised for writes the database refused (disk full, read-only file,
    constraint violated): nothing of that operation was committed, and
    nothing committed before it is lost.
    """


class StorageUnavailable(StorageError):
    """The database could not be reached (after the backend's own retries)."""


class RecordNotFound(StorageError):
    """An operation named a call, leg, stream or app that is not stored."""


class IStorage(Interface):
    """Everything siprecd keeps: apps, calls, legs, streams, messages, the
    webhook outbox, audit log, nodes, leases and export runs.

    Every method returns a Deferred; blocking drivers run on the backend's
    own threads, never on the reactor thread. Records are the attrs classes
    of ``siprecd.storage.records``. **All times are integers: milliseconds
    since the UNIX epoch, UTC** (``start_ms``/``end_ms`` of a message are
    milliseconds on the stream's timeline instead). Arguments named ``now``
    default to the backend's injected clock. Failures are ``StorageError``
    (or a subclass).

    Backends are found by name (``storage.backend``) through the entry
    point group ``siprecd.storage``; see ``siprecd.storage.backends``.
    """

    name = Attribute("Backend name, as configured (e.g. 'sqlite').")
    location = Attribute("Where the data lives, for logs (never a password).")

    # Life cycle -----------------------------------------------------------

    def open():
        """Connect and apply pending schema migrations. Fires with the
        schema version; fails with StorageError in one clear line."""

    def drain():
        """Fires when the operations in flight when called have finished."""

    def close():
        """Wait for operations in flight, then release connections."""

    # API credentials ------------------------------------------------------

    def create_app(webhook_target, label=None, now=None):
        """Fires with ``(App, secret)``; the secret is never stored or shown again."""

    def get_app(api_id):
        """Fires with the App (revoked ones too), or None."""

    def list_apps(include_revoked=False):
        """Fires with a list of App, oldest first."""

    def revoke_app(api_id, now=None):
        """Fires with True if an active app was revoked."""

    def rotate_app_secret(api_id, now=None):
        """Fires with the new secret; RecordNotFound for an unknown or
        revoked app."""

    def verify_app_secret(api_id, secret):
        """Fires with the App when *secret* is right for an active app,
        else None (unknown, revoked and wrong are not told apart)."""

    # Health -----------------------------------------------------------------

    def ping():
        """A trivial query: fires with None when storage answers, fails
        with StorageError when it does not."""

    # SIP dialogs of calls in progress -----------------------------------------

    def save_dialog(dialog, now=None):
        """Store (or update) a DialogRecord by (Call-ID, local tag, remote tag)."""

    def forget_dialog(call_id, local_tag, remote_tag):
        """Delete a dialog (its call ended). Fires with True if it was there."""

    def take_dialogs_of_node(node, before_ms=None):
        """Delete and return the DialogRecords of *node* (those created
        before *before_ms* when given), oldest first: the node that gets
        them hangs them up (once, however many nodes ask)."""

    # Calls, legs, streams ---------------------------------------------------

    def upsert_call(call, now=None):
        """Store a Call by guid, merging identifiers seen before; an ended
        call seen again becomes active. Fires with the stored Call."""

    def end_call(guid, reason, now=None):
        """Mark an active call ended. Fires with True if it was active."""

    def end_calls_of_node(node, reason, now=None):
        """End every active call a (dead) node owns; fires with their guids."""

    def get_call_by_guid(guid):
        """Fires with the Call, or None."""

    def get_call(conversation_id):
        """Fires with the Call, or None."""

    def start_leg(guid, customer_id, agent_id, params=None, now=None):
        """Start the next leg of a call; fires with the new Leg."""

    def active_calls(limit=1000):
        """Fires with the calls in progress on any node (oldest first, at
        most *limit*)."""

    def legs_for_guid(guid):
        """Fires with the call's legs in order."""

    def upsert_stream(stream, now=None):
        """Store a Stream by id (its leg must exist)."""

    def update_stream_stats(stream_id, stats, now=None):
        """Replace a stream's stats dict; fires with True if it exists."""

    def streams_for_guid(guid):
        """Fires with the call's streams, by leg then creation."""

    # Messages and the webhook outbox --------------------------------------

    def add_message(message, outbox_targets=()):
        """Store a Message and one outbox row per target name in ONE
        transaction. Fires with the message's sequence in its stream
        (1, 2, ...). Adding a message id that is already stored adds
        nothing and fires with the stored sequence, so a retry is safe."""

    def messages_for_guid(guid, limit=1000):
        """Fires with the call's messages, all legs, in the order stored."""

    def messages_for_day(day, after=None, limit=5000):
        """One page of the messages created on UTC date *day*, in order;
        pass the last Message of a page as *after* for the next page."""

    def claim_due(node, limit, now=None, lease=60000):
        """Claim up to *limit* due outbox rows, at most one per (stream,
        target): the oldest undelivered one, so delivery stays ordered.
        Claimed rows are in flight for *lease* ms, then claimable again.
        Fires with a list of OutboxItem (with their Message)."""

    def mark_delivered(outbox_id, now=None):
        """Fires with True if the row exists."""

    def mark_failed(outbox_id, next_attempt, error, dead=False):
        """Back to pending until *next_attempt* (ms), or dead-lettered."""

    def release_claims(node, now=None):
        """Make a node's in-flight rows due again (after its restart)."""

    def dead_letters(target=None, limit=100):
        """Fires with dead-lettered OutboxItems, oldest first."""

    def outbox_counts():
        """Fires with ``{target: {"waiting", "inFlight", "dead",
        "oldestWaitingMs"}}``: deliveries not yet made (pending, retrying,
        parked behind a disabled target, or being sent: ``waiting``, of
        which ``inFlight`` are being sent), dead letters, and when the
        oldest waiting one was stored (epoch ms, or None)."""

    def replay(ids=None, target=None, now=None):
        """Make dead rows (all, by id, or by target) pending again; fires
        with how many."""

    # Retention, audit, nodes, export --------------------------------------

    def purge_expired(now, retention, batch_size):
        """Delete ONE batch of what calls ended more than *retention* ms
        before *now* left behind: at most *batch_size* messages (their
        outbox rows with them), then calls with no messages left. Active
        calls are never touched. Fires with a PurgeResult; call again
        until it is empty."""

    def record_audit(action, app_id=None, guid=None, detail=None, now=None):
        """Append to the audit log."""

    def audit_log(guid=None, app_id=None, limit=100):
        """Fires with AuditEntry list, newest first."""

    def heartbeat_node(node, address=None, now=None):
        """Record that *node* is alive (and where its internal API is)."""

    def live_nodes(max_age, now=None):
        """Fires with the NodeInfo of nodes seen in the last *max_age* ms."""

    def try_lease(name, node, ttl, now=None):
        """Take or renew the named lease for *ttl* ms (one node at a time
        runs retention or export). Fires with True if *node* holds it."""

    def start_export_run(feed, day, node, now=None, stale_after=3600000):
        """Fires with a run id, or None if a run for (feed, day) is
        already going (runs older than *stale_after* ms are abandoned)."""

    def finish_export_run(run_id, rows, detail=None, error=None, now=None):
        """Mark a run done (or failed when *error* is given)."""

    def export_runs(feed=None, day=None, limit=50):
        """Fires with ExportRun list, newest first."""


__all__ += ["StorageError", "StorageUnavailable", "RecordNotFound", "IStorage"]


class IASRBackend(Interface):
    """A speech recogniser backend, found by name (entry-point group
    ``siprecd.asr``) and chosen with ``asr.backend``."""

    name = Attribute("The backend's name in the configuration.")
    ready = Attribute("True once start() has fired and recognisers can be made.")

    def start():
        """Load models or connect; a Deferred that fires when ready, or
        fails with an exception whose str() is one actionable line."""

    def languages():
        """The language tags (lower case, e.g. "en-us") it can recognise."""

    def new_recognizer(language, sample_rate=8000):
        """An IRecognizer for one stream; raises ValueError for a language
        it does not have, and ``siprecd.asr.common.AsrNotReady`` (or its
        ``LanguageUnavailable``) for one it has but cannot serve now."""

    def stop():
        """Release models, threads and connections (may return a Deferred)."""


class ILanguageStates(Interface):
    """Optional for an IASRBackend whose languages come up (or fail) one by
    one: it is ready (``ready``, ``start()`` fired) once one language is,
    ``new_recognizer`` raises ``siprecd.asr.common.LanguageUnavailable``
    for a configured language that is not, and /v1/health shows each."""

    def language_states():
        """{language tag: {"state": "waiting" | "fetching" | "loading" |
        "ready" | "unavailable", "detail": one line}} for every configured
        language."""


class IRecognizer(Interface):
    """Streaming recognition of one stream's audio.

    Times in results are seconds from the first sample this recogniser was
    given, continuous across utterances. One call in flight at a time: the
    caller waits for each Deferred before the next call (order holds).
    """

    def accept(pcm):
        """Feed 16-bit little-endian mono PCM (bytes); a Deferred firing
        with a list of finished siprecd.asr.results.AsrResult (often empty)."""

    def finish():
        """End the current utterance now; a Deferred firing with a list of
        the AsrResults that gives (empty when nothing was said)."""

    def close():
        """Free the recogniser."""


class IPartialResults(Interface):
    """Optional for an IRecognizer: interim results of the utterance being
    spoken, for live output (never stored). The caller decides how often
    to ask (each ask costs the recogniser a look at its best path so far),
    and asks in the same one-call-at-a-time order as ``accept``."""

    def accept_partial(pcm):
        """Like ``accept(pcm)``, and the list it fires with always ends
        with one AsrResult with ``final=False``: the words so far of the
        utterance still open after this audio (no words when none is
        open, e.g. just after an endpoint). Word times, when the backend
        has them, are on the same scale as those of finished results."""
class IDeadlineRecognizer(IRecognizer):
    """Optional for an IRecognizer whose backend runs the calls of many
    streams on a few shared threads: each call says when its answer is
    wanted, so the backend can run the most urgent first
    (``siprecd.asr.scheduling``). Callers that know nothing of deadlines
    call ``accept(pcm)`` and ``finish()`` as for any IRecognizer."""

    def accept(pcm, deadline=None):
        """As IRecognizer.accept; *deadline*: seconds on the reactor's
        clock by which the result is wanted (None: now)."""

    def finish(deadline=None):
        """As IRecognizer.finish, with a *deadline* as for accept."""


class IRecognitionCosts(Interface):
    """Optional for an IASRBackend that recognises on this machine's
    processors: what it costs, so that admission can tell how many streams
    it keeps in real time (``siprecd.transcribe.admission``)."""

    threads = Attribute("Threads that run recognisers (at most this many processors are used).")

    def cost(language):
        """Processor seconds per second of audio in *language* (learnt from
        the calls so far, seeded by a configured figure or a probe), or
        None while nothing is known."""

