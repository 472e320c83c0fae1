"""IStorage on SQL: everything both backends share.

Each public method runs one transaction on the backend's threads (writes
on the writer pool, reads on the reader pool; PostgreSQL has one pool for
both) and returns a Deferred. The ``_tx_*`` methods are the bodies of
those transactions: they run on a pool thread and touch nothing but their
arguments and the cursor.

Subclasses provide the pools (``_make_pools``), the translation of driver
errors into StorageError (``_translate``) and how often a lost connection
is retried (``retry_delays``).
"""

import datetime
import hashlib
import json
import secrets
import uuid

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.crypto import DecryptError, Keyring
from siprecd.interfaces import IStorage, RecordNotFound, StorageError, StorageUnavailable
from siprecd.outage import OutageLog
from siprecd.storage import migrate
from siprecd.storage.records import (
    ACTIVE, DEAD, DELIVERED, ENDED, IN_FLIGHT, PENDING,
    App, AuditEntry, Call, DialogRecord, ExportRun, Leg, Message, NodeInfo, OutboxItem,
    PurgeResult, Stream,
)
from siprecd.storage.secret_hash import check_secret, dummy_hash, hash_secret

__all__ = ["SqlStorage"]

_DAY_MS = 86_400_000
# A purge batch names at most this many calls (it keeps the statement's
# parameter list short on SQLite).
_PURGE_CALLS = 500
# How long a verified API secret is trusted without hashing it again. A
# revocation on this node takes effect at once, on other nodes within this.
_VERIFIED_TTL = 30.0

_MESSAGE_COLUMNS = (
    "m.pk, m.id, m.stream_id, m.call_guid, m.leg_id, m.sequence, m.text, m.unredacted_text,"
    " m.tokens, m.start_ms, m.end_ms, m.created_ms, m.client_ms, m.language,"
    " s.role, s.external_id, s.params AS stream_params"
)
_OUTBOX_COLUMNS = (
    "o.id AS o_id, o.target AS o_target, o.state AS o_state, o.attempts AS o_attempts,"
    " o.next_attempt_ms AS o_next_attempt_ms, o.created_ms AS o_created_ms,"
    " o.last_error AS o_last_error, o.claimed_by AS o_claimed_by,"
    " o.delivered_ms AS o_delivered_ms, " + _MESSAGE_COLUMNS
)
_OUTBOX_FROM = (
    " FROM outbox o JOIN messages m ON m.pk = o.message_pk JOIN streams s ON s.id = m.stream_id"
)
_OPEN = f"('{PENDING}', '{IN_FLIGHT}')"


def _marks(values):
    return ", ".join("?" * len(values))


def _day_bounds(day):
    if isinstance(day, str):
        day = datetime.date.fromisoformat(day)
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)
    start_ms = int(start.timestamp()) * 1000
    return start_ms, start_ms + _DAY_MS


def _merge_identifiers(old, new):
    merged, seen = [], set()
    for item in list(old or ()) + list(new or ()):
        key = (item.get("source"), item.get("value"))
        if key not in seen:
            seen.add(key)
            merged.append(item)
    return merged


@implementer(IStorage)
class SqlStorage:
    log = Logger()
    name = None
    dialect = None
    retry_delays = ()

    def __init__(self, reactor, location):
        self.reactor = reactor
        self.location = location
        self.schema_version = None
        self._writer = self._reader = None
        self._in_flight = set()
        self._closed = False
        self._verified = {}
        self.outage = OutageLog(reactor, self.log, f"{self.name} storage")
        # siprecd.crypto.Keyring when storage.encryption has a key: then
        # messages.unredacted_text, and the tokens of messages that keep
        # unredacted text, are stored encrypted (see _seal/_unseal).
        self.keyring = None

    # Subclass hooks ---------------------------------------------------------

    def _make_pools(self):
        """Return (writer, reader) ConnectionPools, started."""
        raise NotImplementedError

    def _translate(self, exc):
        """A driver exception as a StorageError (or subclass); anything
        else (a bug) is returned as it is."""
        raise NotImplementedError

    # Plumbing ---------------------------------------------------------------

    def __repr__(self):
        return f"<{type(self).__name__} {self.location}>"

    def _now(self, now=None):
        return int(self.reactor.seconds() * 1000) if now is None else int(now)

    def _error(self, exc):
        if isinstance(exc, StorageError):
            return exc
        return self._translate(exc)

    def _track(self, d):
        # drain() waits on these markers, never on the callers' Deferreds,
        # so that waiting cannot change what a caller sees.
        finished = defer.Deferred()
        self._in_flight.add(finished)

        def done(result):
            self._in_flight.discard(finished)
            finished.callback(None)
            return result

        return d.addBoth(done)

    def _write(self, fn, *args):
        return self._run(self._writer, fn, args)

    def _read(self, fn, *args):
        return self._run(self._reader, fn, args)

    def _run(self, pool, fn, args):
        if self._closed or pool is None:
            return defer.fail(StorageError(f"{self.name} storage is not open"))
        return self._track(defer.ensureDeferred(self._attempts(pool, fn, args)))

    async def _attempts(self, pool, fn, args):
        """Run *fn* in a transaction; after a lost connection, again. That
        is safe even when the lost connection hid a commit: add_message
        finds its own row, updates are idempotent, and rows a repeated
        claim_due took twice are claimable again when their lease ends."""
        for delay in (*self.retry_delays, None):
            try:
                result = await pool.runInteraction(fn, *args)
            except Exception as e:
                error = self._error(e)
                if isinstance(error, StorageUnavailable):
                    # Logged once per outage, with a periodic summary.
                    self.outage.failed(str(error), retry_in=None if self._closed else delay)
                if isinstance(error, StorageUnavailable) and delay is not None and not self._closed:
                    await task.deferLater(self.reactor, delay, lambda: None)
                    continue
                if error is e:
                    raise
                raise error from e
            self.outage.succeeded()
            return result

    def _off_reactor(self, fn, *args):
        return threads.deferToThreadPool(self.reactor, self._reader.threadpool, fn, *args)

    # Life cycle -------------------------------------------------------------

    def open(self):
        return defer.ensureDeferred(self._open())

    async def _open(self):
        try:
            migrations = migrate.load(self.dialect.name)
            self._writer, self._reader = self._make_pools()
            await self._before_migrations()
            self.schema_version = await self._write(migrate.apply, migrations, self._now())
            await self._after_migrations()
        except Exception as e:
            error = self._error(e)
            await self._close_pools()
            kind = type(error) if isinstance(error, StorageError) else StorageError
            raise kind(f"cannot open {self.name} storage at {self.location}: "
                       f"{_detail(error, self)}") from e
        return self.schema_version

    def _before_migrations(self):
        """What a dialect needs done outside the migrations' transaction first."""
        return defer.succeed(None)

    def _after_migrations(self):
        return defer.succeed(None)

    def drain(self):
        return defer.gatherResults(list(self._in_flight)).addCallback(lambda _: None)

    def close(self):
        return defer.ensureDeferred(self._close())

    async def _close(self):
        while self._in_flight:
            await self.drain()
        self._closed = True
        self.outage.stop()
        await self._close_pools()

    async def _close_pools(self):
        for pool in {id(p): p for p in (self._writer, self._reader) if p is not None}.values():
            pool.close()
        self._writer = self._reader = None

    # Apps -------------------------------------------------------------------

    def create_app(self, webhook_target, label=None, now=None):
        secret = secrets.token_urlsafe(32)
        api_id = secrets.token_hex(12)
        app = App(api_id, webhook_target, label, self._now(now))
        d = self._off_reactor(hash_secret, secret)
        d.addCallback(lambda hashed: self._write(self._tx_create_app, app, hashed))
        return d.addCallback(lambda _: (app, secret))

    def _tx_create_app(self, tx, app, hashed):
        tx.execute(
            "INSERT INTO apps (api_id, secret_hash, webhook_target, label, created_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (app.api_id, hashed, app.webhook_target, app.label, app.created_ms),
        )

    @staticmethod
    def _app(row):
        return App(
            row["api_id"], row["webhook_target"], row["label"], row["created_ms"],
            row["rotated_ms"], row["revoked_ms"],
        )

    def get_app(self, api_id):
        return self._read(self._tx_get_app, api_id)

    def _tx_get_app(self, tx, api_id):
        row = tx.row("SELECT * FROM apps WHERE api_id = ?", (api_id,))
        return None if row is None else self._app(row)

    def list_apps(self, include_revoked=False):
        return self._read(self._tx_list_apps, include_revoked)

    def _tx_list_apps(self, tx, include_revoked):
        where = "" if include_revoked else " WHERE revoked_ms IS NULL"
        return [self._app(r) for r in tx.rows(f"SELECT * FROM apps{where} ORDER BY created_ms, api_id")]

    def revoke_app(self, api_id, now=None):
        # Forgotten before and after: a check in flight may have cached it.
        self._forget_verified(api_id)
        d = self._write(self._tx_revoke_app, api_id, self._now(now))
        return d.addBoth(self._forget_verified_then, api_id)

    def _tx_revoke_app(self, tx, api_id, now):
        return tx.execute(
            "UPDATE apps SET revoked_ms = ? WHERE api_id = ? AND revoked_ms IS NULL", (now, api_id)
        ) > 0

    def rotate_app_secret(self, api_id, now=None):
        self._forget_verified(api_id)
        secret = secrets.token_urlsafe(32)
        now = self._now(now)
        d = self._off_reactor(hash_secret, secret)
        d.addCallback(lambda hashed: self._write(self._tx_rotate, api_id, hashed, now))
        d.addBoth(self._forget_verified_then, api_id)
        return d.addCallback(lambda _: secret)

    def _tx_rotate(self, tx, api_id, hashed, now):
        changed = tx.execute(
            "UPDATE apps SET secret_hash = ?, rotated_ms = ? WHERE api_id = ? AND revoked_ms IS NULL",
            (hashed, now, api_id),
        )
        if not changed:
            raise RecordNotFound(f"no active app with id {api_id!r}")

    def verify_app_secret(self, api_id, secret):
        if not isinstance(api_id, str) or not isinstance(secret, str) or not api_id:
            return defer.succeed(None)
        key = (api_id, hashlib.sha256(secret.encode("utf-8")).digest())
        cached = self._verified.get(key)
        if cached is not None and cached[1] > self.reactor.seconds():
            return defer.succeed(cached[0])
        d = self._read(self._tx_verify, api_id, secret)

        def remember(app):
            if app is not None:
                if len(self._verified) > 10000:
                    self._verified.clear()
                self._verified[key] = (app, self.reactor.seconds() + _VERIFIED_TTL)
            return app

        return d.addCallback(remember)

    def _tx_verify(self, tx, api_id, secret):
        row = tx.row("SELECT * FROM apps WHERE api_id = ?", (api_id,))
        stored = row["secret_hash"] if row is not None else dummy_hash()
        # Hash even when the id is unknown or revoked: equal time either way.
        good = check_secret(secret, stored)
        if row is None or row["revoked_ms"] is not None or not good:
            return None
        return self._app(row)

    def _forget_verified(self, api_id):
        for key in [k for k in self._verified if k[0] == api_id]:
            del self._verified[key]

    def _forget_verified_then(self, result, api_id):
        self._forget_verified(api_id)
        return result

    # Calls ------------------------------------------------------------------

    def _call(self, row):
        j = self.dialect.unjson
        return Call(
            guid=row["guid"], call_id=row["call_id"], node=row["node"],
            started_ms=row["started_ms"], identifiers=j(row["identifiers"]), sip=j(row["sip"]),
            participants=j(row["participants"]), mixed=bool(row["mixed"]),
            conversation_id=row["conversation_id"], state=row["state"],
            updated_ms=row["updated_ms"], ended_ms=row["ended_ms"], end_reason=row["end_reason"],
        )

    def upsert_call(self, call, now=None):
        return self._write(self._tx_upsert_call, call, self._now(now))

    def _tx_upsert_call(self, tx, call, now):
        j = self.dialect.json
        inserted = tx.row(
            "INSERT INTO calls (guid, conversation_id, call_id, identifiers, node, state, mixed,"
            " started_ms, updated_ms, sip, participants) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (guid) DO NOTHING RETURNING guid",
            (call.guid, str(uuid.uuid4()), call.call_id, j(call.identifiers), call.node, ACTIVE,
             bool(call.mixed), call.started_ms, now, j(call.sip), j(call.participants)),
        )
        if inserted is None:
            old = tx.row(
                "SELECT identifiers FROM calls WHERE guid = ?" + self.dialect.for_update,
                (call.guid,),
            )
            identifiers = _merge_identifiers(self.dialect.unjson(old["identifiers"]), call.identifiers)
            tx.execute(
                "UPDATE calls SET call_id = COALESCE(?, call_id), identifiers = ?, node = ?,"
                " state = ?, mixed = ?, updated_ms = ?, ended_ms = NULL, end_reason = NULL,"
                " sip = ?, participants = ? WHERE guid = ?",
                (call.call_id, j(identifiers), call.node, ACTIVE, bool(call.mixed), now,
                 j(call.sip), j(call.participants), call.guid),
            )
        return self._call(tx.row("SELECT * FROM calls WHERE guid = ?", (call.guid,)))

    def end_call(self, guid, reason, now=None):
        return self._write(self._tx_end_call, guid, reason, self._now(now))

    def _tx_end_call(self, tx, guid, reason, now):
        changed = tx.execute(
            "UPDATE calls SET state = ?, ended_ms = ?, end_reason = ?, updated_ms = ?"
            " WHERE guid = ? AND state = ?",
            (ENDED, now, reason, now, guid, ACTIVE),
        )
        tx.execute(
            "UPDATE legs SET ended_ms = ? WHERE call_guid = ? AND ended_ms IS NULL", (now, guid)
        )
        return changed > 0

    def end_calls_of_node(self, node, reason, now=None):
        return self._write(self._tx_end_calls_of_node, node, reason, self._now(now))

    def _tx_end_calls_of_node(self, tx, node, reason, now):
        rows = tx.rows(
            "UPDATE calls SET state = ?, ended_ms = ?, end_reason = ?, updated_ms = ?"
            " WHERE node = ? AND state = ? RETURNING guid",
            (ENDED, now, reason, now, node, ACTIVE),
        )
        guids = sorted(r["guid"] for r in rows)
        if guids:
            tx.executemany(
                "UPDATE legs SET ended_ms = ? WHERE call_guid = ? AND ended_ms IS NULL",
                [(now, g) for g in guids],
            )
        return guids

    def get_call_by_guid(self, guid):
        return self._read(self._tx_get_call, "guid", guid)

    def get_call(self, conversation_id):
        return self._read(self._tx_get_call, "conversation_id", conversation_id)

    def _tx_get_call(self, tx, column, value):
        row = tx.row(f"SELECT * FROM calls WHERE {column} = ?", (value,))
        return None if row is None else self._call(row)

    def active_calls(self, limit=1000):
        return self._read(self._tx_active_calls, int(limit))

    def _tx_active_calls(self, tx, limit):
        rows = tx.rows("SELECT * FROM calls WHERE state = ? ORDER BY started_ms, guid LIMIT ?",
                       (ACTIVE, limit))
        return [self._call(row) for row in rows]

    # Dialogs ----------------------------------------------------------------

    def _dialog(self, row):
        return DialogRecord(
            call_id=row["call_id"], local_tag=row["local_tag"], remote_tag=row["remote_tag"],
            node=row["node"], guid=row["guid"], transport=row["transport"],
            local_uri=row["local_uri"], remote_uri=row["remote_uri"],
            remote_target=row["remote_target"],
            route_set=list(self.dialect.unjson(row["route_set"]) or []),
            local_seq=row["local_seq"], remote_seq=row["remote_seq"], source=row["source"],
            local_address=row["local_address"], secure=bool(row["secure"]),
            created_ms=row["created_ms"], updated_ms=row["updated_ms"])

    def save_dialog(self, dialog, now=None):
        return self._write(self._tx_save_dialog, dialog, self._now(now))

    def _tx_save_dialog(self, tx, d, now):
        tx.execute(
            "INSERT INTO dialogs (call_id, local_tag, remote_tag, node, guid, transport,"
            " local_uri, remote_uri, remote_target, route_set, local_seq, remote_seq, source,"
            " local_address, secure, created_ms, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (call_id, local_tag, remote_tag) DO UPDATE SET node = excluded.node,"
            " guid = excluded.guid, transport = excluded.transport,"
            " remote_target = excluded.remote_target, route_set = excluded.route_set,"
            " local_seq = excluded.local_seq, remote_seq = excluded.remote_seq,"
            " source = excluded.source, local_address = excluded.local_address,"
            " updated_ms = excluded.updated_ms",
            (d.call_id, d.local_tag, d.remote_tag or "", d.node, d.guid, d.transport,
             d.local_uri, d.remote_uri, d.remote_target, self.dialect.json(list(d.route_set)),
             d.local_seq, d.remote_seq, d.source, d.local_address, bool(d.secure),
             d.created_ms if d.created_ms is not None else now, now),
        )

    def forget_dialog(self, call_id, local_tag, remote_tag):
        return self._write(self._tx_forget_dialog, call_id, local_tag, remote_tag or "")

    def _tx_forget_dialog(self, tx, call_id, local_tag, remote_tag):
        return tx.execute(
            "DELETE FROM dialogs WHERE call_id = ? AND local_tag = ? AND remote_tag = ?",
            (call_id, local_tag, remote_tag)) > 0

    def take_dialogs_of_node(self, node, before_ms=None):
        return self._write(self._tx_take_dialogs, node, before_ms)

    def _tx_take_dialogs(self, tx, node, before_ms):
        if before_ms is None:
            rows = tx.rows("DELETE FROM dialogs WHERE node = ? RETURNING *", (node,))
        else:
            rows = tx.rows("DELETE FROM dialogs WHERE node = ? AND created_ms < ? RETURNING *",
                           (node, int(before_ms)))
        return sorted((self._dialog(r) for r in rows), key=lambda d: (d.created_ms, d.key))

    def ping(self):
        return self._read(self._tx_ping)

    def _tx_ping(self, tx):
        tx.row("SELECT 1 AS one")

    # Legs and streams -------------------------------------------------------

    def _leg(self, row):
        return Leg(
            row["id"], row["call_guid"], row["number"], row["customer_id"], row["agent_id"],
            self.dialect.unjson(row["params"]), row["started_ms"], row["ended_ms"],
        )

    def start_leg(self, guid, customer_id, agent_id, params=None, now=None):
        return self._write(self._tx_start_leg, guid, customer_id, agent_id, params or {},
                           self._now(now))

    def _tx_start_leg(self, tx, guid, customer_id, agent_id, params, now):
        if tx.row("SELECT guid FROM calls WHERE guid = ?" + self.dialect.for_update, (guid,)) is None:
            raise RecordNotFound(f"no call with guid {guid!r}")
        tx.execute("UPDATE legs SET ended_ms = ? WHERE call_guid = ? AND ended_ms IS NULL",
                   (now, guid))
        number = tx.value("SELECT COALESCE(MAX(number), 0) + 1 AS n FROM legs WHERE call_guid = ?",
                          (guid,))
        leg = Leg(str(uuid.uuid4()), guid, int(number), customer_id, agent_id, params, now)
        tx.execute(
            "INSERT INTO legs (id, call_guid, number, customer_id, agent_id, params, started_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (leg.id, guid, leg.number, customer_id, agent_id, self.dialect.json(params), now),
        )
        return leg

    def legs_for_guid(self, guid):
        return self._read(self._tx_legs, guid)

    def _tx_legs(self, tx, guid):
        rows = tx.rows("SELECT * FROM legs WHERE call_guid = ? ORDER BY number", (guid,))
        return [self._leg(r) for r in rows]

    def _stream(self, row):
        j = self.dialect.unjson
        return Stream(
            id=row["id"], guid=row["call_guid"], leg_id=row["leg_id"], role=row["role"],
            external_id=row["external_id"], created_ms=row["created_ms"], label=row["label"],
            params=j(row["params"]), stats=j(row["stats"]), last_sequence=row["last_sequence"],
        )

    def upsert_stream(self, stream, now=None):
        return self._write(self._tx_upsert_stream, stream, self._now(now))

    def _tx_upsert_stream(self, tx, stream, now):
        leg = tx.row("SELECT call_guid FROM legs WHERE id = ?", (stream.leg_id,))
        if leg is None or leg["call_guid"] != stream.guid:
            raise RecordNotFound(f"no leg {stream.leg_id!r} of call {stream.guid!r}")
        j = self.dialect.json
        tx.execute(
            "INSERT INTO streams (id, call_guid, leg_id, role, external_id, label, params, stats,"
            " created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET external_id = excluded.external_id,"
            " label = excluded.label, params = excluded.params, updated_ms = excluded.updated_ms",
            (stream.id, stream.guid, stream.leg_id, stream.role, stream.external_id, stream.label,
             j(stream.params), j(stream.stats), stream.created_ms, now),
        )

    def update_stream_stats(self, stream_id, stats, now=None):
        return self._write(self._tx_stream_stats, stream_id, stats, self._now(now))

    def _tx_stream_stats(self, tx, stream_id, stats, now):
        return tx.execute(
            "UPDATE streams SET stats = ?, updated_ms = ? WHERE id = ?",
            (self.dialect.json(stats), now, stream_id),
        ) > 0

    def streams_for_guid(self, guid):
        return self._read(self._tx_streams, guid)

    def _tx_streams(self, tx, guid):
        rows = tx.rows(
            "SELECT s.* FROM streams s JOIN legs l ON l.id = s.leg_id WHERE s.call_guid = ?"
            " ORDER BY l.number, s.created_ms, s.role",
            (guid,),
        )
        return [self._stream(r) for r in rows]

    # Messages ---------------------------------------------------------------

    # Encryption at rest. The tokens are encrypted with the unredacted text:
    # only a message that keeps unredacted text (redactionOutput other than
    # "redacted") can hold unredacted words in its tokens; redacted tokens
    # say no more than the redacted text, which is stored plain. The
    # associated data names the column and the message id: a value moved
    # to another row or column does not decrypt.

    def _seal(self, m):
        """(unredacted_text, tokens JSON) as they are written for *m*."""
        tokens = self.dialect.json(m.tokens)
        if self.keyring is None or m.unredacted_text is None:
            return m.unredacted_text, tokens
        return (self.keyring.encrypt_text(m.unredacted_text, _context("unredacted_text", m.id)),
                None if tokens is None else self.dialect.json(
                    self.keyring.encrypt_text(tokens, _context("tokens", m.id))))

    def _unseal(self, message_id, column, value):
        """A stored value of *column* in the clear (tokens: still JSON text)."""
        if not Keyring.is_encrypted(value):
            return value
        what = f"messages.{column} of message {message_id}"
        if self.keyring is None:
            raise DecryptError(f"{what} is encrypted (key {Keyring.key_id_of(value)}) and no key "
                               "is configured in storage.encryption")
        return self.keyring.decrypt_text(value, _context(column, message_id), what)

    def _message(self, row):
        tokens = self.dialect.unjson(row["tokens"])
        if Keyring.is_encrypted(tokens):
            tokens = json.loads(self._unseal(row["id"], "tokens", tokens))
        return Message(
            id=row["id"], stream_id=row["stream_id"], text=row["text"], start_ms=row["start_ms"],
            end_ms=row["end_ms"], created_ms=row["created_ms"], client_ms=row["client_ms"],
            unredacted_text=self._unseal(row["id"], "unredacted_text", row["unredacted_text"]),
            tokens=tokens,
            language=row["language"], sequence=row["sequence"], row_id=row["pk"],
            guid=row["call_guid"], leg_id=row["leg_id"], role=row["role"],
            external_id=row["external_id"], stream_params=self.dialect.unjson(row["stream_params"]),
        )

    def add_message(self, message, outbox_targets=()):
        targets = list(dict.fromkeys(outbox_targets))
        return self._write(self._tx_add_message, message, targets)

    def _tx_add_message(self, tx, m, targets):
        # A retry after a connection lost at commit finds its own row.
        existing = tx.value("SELECT sequence FROM messages WHERE id = ?", (m.id,))
        if existing is not None:
            return existing
        # The stream's row lock (PostgreSQL) or the write lock (SQLite)
        # orders concurrent writers: sequences commit in order.
        stream = tx.row(
            "UPDATE streams SET last_sequence = last_sequence + 1 WHERE id = ?"
            " RETURNING last_sequence, call_guid, leg_id",
            (m.stream_id,),
        )
        if stream is None:
            raise RecordNotFound(f"no stream {m.stream_id!r}")
        sequence = stream["last_sequence"]
        unredacted_text, tokens = self._seal(m)
        pk = tx.value(
            "INSERT INTO messages (id, stream_id, call_guid, leg_id, sequence, text,"
            " unredacted_text, tokens, start_ms, end_ms, created_ms, client_ms, language)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING pk",
            (m.id, m.stream_id, stream["call_guid"], stream["leg_id"], sequence, m.text,
             unredacted_text, tokens, int(m.start_ms), int(m.end_ms),
             int(m.created_ms), m.client_ms, m.language),
        )
        if targets:
            tx.executemany(
                "INSERT INTO outbox (message_pk, stream_id, sequence, target, state, attempts,"
                " next_attempt_ms, created_ms) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                [(pk, m.stream_id, sequence, t, PENDING, m.created_ms, m.created_ms)
                 for t in targets],
            )
        return sequence

    def messages_for_guid(self, guid, limit=1000):
        return self._read(self._tx_messages_for_guid, guid, int(limit))

    def _tx_messages_for_guid(self, tx, guid, limit):
        rows = tx.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN streams s ON s.id = m.stream_id"
            " WHERE m.call_guid = ? ORDER BY m.pk LIMIT ?",
            (guid, limit),
        )
        return [self._message(r) for r in rows]

    def messages_for_day(self, day, after=None, limit=5000):
        start, end = _day_bounds(day)
        cursor = (start, 0) if after is None else (after.created_ms, after.row_id)
        return self._read(self._tx_messages_for_day, start, end, cursor, int(limit))

    def _tx_messages_for_day(self, tx, start, end, cursor, limit):
        rows = tx.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN streams s ON s.id = m.stream_id"
            " WHERE m.created_ms >= ? AND m.created_ms < ? AND (m.created_ms, m.pk) > (?, ?)"
            " ORDER BY m.created_ms, m.pk LIMIT ?",
            (start, end, cursor[0], cursor[1], limit),
        )
        return [self._message(r) for r in rows]

    def rekey_messages(self, after=0, limit=500):
        """Re-encrypt one batch of messages (pk > *after*, in pk order)
        under the first configured key: values under older keys, and
        unredacted values stored in plain form. Fires with (last pk seen
        or None when done, values rewritten)."""
        if self.keyring is None:
            return defer.fail(StorageError("no key is configured in storage.encryption"))
        return self._write(self._tx_rekey, int(after), int(limit))

    def _tx_rekey(self, tx, after, limit):
        rows = tx.rows(
            "SELECT pk, id, unredacted_text, tokens FROM messages"
            " WHERE pk > ? AND unredacted_text IS NOT NULL ORDER BY pk LIMIT ?"
            + self.dialect.for_update,
            (after, limit),
        )
        primary = self.keyring.primary_id
        changed = 0
        for row in rows:
            text, tokens = row["unredacted_text"], self.dialect.unjson(row["tokens"])
            if Keyring.key_id_of(text) == primary and (
                    tokens is None or Keyring.key_id_of(tokens) == primary):
                continue
            text = self._unseal(row["id"], "unredacted_text", text)
            tokens = (json.loads(self._unseal(row["id"], "tokens", tokens))
                      if Keyring.is_encrypted(tokens) else tokens)
            sealed_text = self.keyring.encrypt_text(text, _context("unredacted_text", row["id"]))
            sealed_tokens = None if tokens is None else self.dialect.json(self.keyring.encrypt_text(
                self.dialect.json(tokens), _context("tokens", row["id"])))
            tx.execute("UPDATE messages SET unredacted_text = ?, tokens = ? WHERE pk = ?",
                       (sealed_text, sealed_tokens, row["pk"]))
            changed += 1
        return (rows[-1]["pk"] if len(rows) == limit else None), changed

    # Outbox -----------------------------------------------------------------

    def _outbox_item(self, row):
        return OutboxItem(
            id=row["o_id"], target=row["o_target"], state=row["o_state"],
            attempts=row["o_attempts"], next_attempt_ms=row["o_next_attempt_ms"],
            created_ms=row["o_created_ms"], message=self._message(row),
            last_error=row["o_last_error"], claimed_by=row["o_claimed_by"],
            delivered_ms=row["o_delivered_ms"],
        )

    def claim_due(self, node, limit, now=None, lease=60000):
        return self._write(self._tx_claim, node, int(limit), self._now(now), int(lease))

    def _tx_claim(self, tx, node, limit, now, lease):
        # A row is due when pending and its time has come, or in flight and
        # its lease ran out (its claimer died). Only the head of each
        # (stream, target) queue is eligible; with SKIP LOCKED, nodes
        # claiming at once take different rows and never a queue's second
        # row while its head is being claimed elsewhere.
        until = now + lease
        rows = tx.rows(
            "WITH due AS (SELECT o.id FROM outbox o"
            f" WHERE o.state IN {_OPEN} AND o.next_attempt_ms <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.stream_id = o.stream_id"
            f" AND p.target = o.target AND p.sequence < o.sequence AND p.state IN {_OPEN})"
            f" ORDER BY o.next_attempt_ms, o.id LIMIT ?{self.dialect.skip_locked})"
            " UPDATE outbox SET state = ?, claimed_by = ?, claimed_until_ms = ?,"
            " next_attempt_ms = ?, attempts = attempts + 1"
            " WHERE id IN (SELECT id FROM due) RETURNING id",
            (now, limit, IN_FLIGHT, node, until, until),
        )
        ids = [r["id"] for r in rows]
        if not ids:
            return []
        rows = tx.rows(
            f"SELECT {_OUTBOX_COLUMNS}{_OUTBOX_FROM} WHERE o.id IN ({_marks(ids)}) ORDER BY o.id",
            ids,
        )
        return [self._outbox_item(r) for r in rows]

    def mark_delivered(self, outbox_id, now=None):
        return self._write(self._tx_delivered, outbox_id, self._now(now))

    def _tx_delivered(self, tx, outbox_id, now):
        return tx.execute(
            "UPDATE outbox SET state = ?, delivered_ms = ?, claimed_by = NULL,"
            " claimed_until_ms = NULL, last_error = NULL WHERE id = ?",
            (DELIVERED, now, outbox_id),
        ) > 0

    def mark_failed(self, outbox_id, next_attempt, error, dead=False):
        return self._write(self._tx_failed, outbox_id, int(next_attempt), str(error)[:2000], dead)

    def _tx_failed(self, tx, outbox_id, next_attempt, error, dead):
        return tx.execute(
            "UPDATE outbox SET state = ?, next_attempt_ms = ?, last_error = ?, claimed_by = NULL,"
            " claimed_until_ms = NULL WHERE id = ? AND state <> ?",
            (DEAD if dead else PENDING, next_attempt, error, outbox_id, DELIVERED),
        ) > 0

    def release_claims(self, node, now=None):
        return self._write(self._tx_release, node, self._now(now))

    def _tx_release(self, tx, node, now):
        return tx.execute(
            "UPDATE outbox SET state = ?, next_attempt_ms = ?, claimed_by = NULL,"
            " claimed_until_ms = NULL WHERE state = ? AND claimed_by = ?",
            (PENDING, now, IN_FLIGHT, node),
        )

    def dead_letters(self, target=None, limit=100):
        return self._read(self._tx_dead, target, int(limit))

    def _tx_dead(self, tx, target, limit):
        where, params = "o.state = ?", [DEAD]
        if target is not None:
            where, params = where + " AND o.target = ?", params + [target]
        rows = tx.rows(
            f"SELECT {_OUTBOX_COLUMNS}{_OUTBOX_FROM} WHERE {where} ORDER BY o.id LIMIT ?",
            params + [limit],
        )
        return [self._outbox_item(r) for r in rows]

    def outbox_counts(self):
        return self._read(self._tx_outbox_counts)

    def _tx_outbox_counts(self, tx):
        rows = tx.rows(
            "SELECT target, state, COUNT(*) AS n, MIN(created_ms) AS oldest FROM outbox"
            f" WHERE state IN ('{PENDING}', '{IN_FLIGHT}', '{DEAD}') GROUP BY target, state",
            (),
        )
        out = {}
        for row in rows:
            entry = out.setdefault(row["target"], {"waiting": 0, "inFlight": 0, "dead": 0,
                                                   "oldestWaitingMs": None})
            n = int(row["n"])
            if row["state"] == DEAD:
                entry["dead"] += n
                continue
            entry["waiting"] += n
            if row["state"] == IN_FLIGHT:
                entry["inFlight"] += n
            oldest = row["oldest"]
            if oldest is not None and (entry["oldestWaitingMs"] is None
                                       or oldest < entry["oldestWaitingMs"]):
                entry["oldestWaitingMs"] = int(oldest)
        return out

    def replay(self, ids=None, target=None, now=None):
        return self._write(self._tx_replay, list(ids) if ids is not None else None, target,
                           self._now(now))

    def _tx_replay(self, tx, ids, target, now):
        where, params = "state = ?", [DEAD]
        if ids is not None:
            if not ids:
                return 0
            where, params = where + f" AND id IN ({_marks(ids)})", params + ids
        if target is not None:
            where, params = where + " AND target = ?", params + [target]
        return tx.execute(
            "UPDATE outbox SET state = ?, attempts = 0, next_attempt_ms = ?, last_error = NULL"
            f" WHERE {where}",
            [PENDING, now] + params,
        )

    # Retention --------------------------------------------------------------

    def purge_expired(self, now, retention, batch_size):
        return self._write(self._tx_purge, int(now) - int(retention), int(batch_size))

    def _tx_purge(self, tx, cutoff, batch_size):
        guids = [r["guid"] for r in tx.rows(
            "SELECT guid FROM calls WHERE state = ? AND ended_ms <= ? ORDER BY ended_ms"
            f" LIMIT ?{self.dialect.skip_locked}",
            (ENDED, cutoff, min(batch_size, _PURGE_CALLS)),
        )]
        if not guids:
            return PurgeResult()
        marks = _marks(guids)
        deleted = tx.execute(
            "DELETE FROM messages WHERE pk IN"
            f" (SELECT pk FROM messages WHERE call_guid IN ({marks}) LIMIT ?)",
            guids + [batch_size],
        )
        if deleted >= batch_size:
            return PurgeResult(messages=deleted)
        # Every message of these calls is gone: the calls go too (legs and
        # streams with them). Only calls still ended: the state is checked
        # again under the lock this transaction holds.
        gone = tx.rows(
            f"DELETE FROM calls WHERE guid IN ({marks}) AND state = ? AND ended_ms <= ?"
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.call_guid = calls.guid)"
            " RETURNING guid",
            guids + [ENDED, cutoff],
        )
        return PurgeResult(messages=deleted, guids=tuple(sorted(r["guid"] for r in gone)))

    # Audit, nodes, leases ---------------------------------------------------

    def record_audit(self, action, app_id=None, guid=None, detail=None, now=None):
        return self._write(self._tx_audit, action, app_id, guid, detail, self._now(now))

    def _tx_audit(self, tx, action, app_id, guid, detail, now):
        tx.execute(
            "INSERT INTO audit_log (at_ms, app_id, action, guid, detail) VALUES (?, ?, ?, ?, ?)",
            (now, app_id, action, guid, self.dialect.json(detail)),
        )

    def audit_log(self, guid=None, app_id=None, limit=100):
        return self._read(self._tx_audit_log, guid, app_id, int(limit))

    def _tx_audit_log(self, tx, guid, app_id, limit):
        where, params = [], []
        for column, value in (("guid", guid), ("app_id", app_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = tx.rows(f"SELECT * FROM audit_log{clause} ORDER BY id DESC LIMIT ?",
                       params + [limit])
        return [AuditEntry(r["at_ms"], r["action"], r["app_id"], r["guid"],
                           self.dialect.unjson(r["detail"])) for r in rows]

    def heartbeat_node(self, node, address=None, now=None):
        return self._write(self._tx_heartbeat, node, address, self._now(now))

    def _tx_heartbeat(self, tx, node, address, now):
        tx.execute(
            "INSERT INTO nodes (id, address, started_ms, heartbeat_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms,"
            " address = COALESCE(excluded.address, nodes.address)",
            (node, address, now, now),
        )

    def live_nodes(self, max_age, now=None):
        return self._read(self._tx_live_nodes, self._now(now) - int(max_age))

    def _tx_live_nodes(self, tx, since):
        rows = tx.rows("SELECT * FROM nodes WHERE heartbeat_ms >= ? ORDER BY id", (since,))
        return [NodeInfo(r["id"], r["address"], r["started_ms"], r["heartbeat_ms"]) for r in rows]

    def try_lease(self, name, node, ttl, now=None):
        return self._write(self._tx_lease, name, node, int(ttl), self._now(now))

    def _tx_lease(self, tx, name, node, ttl, now):
        held = tx.row(
            "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_ms = excluded.expires_ms"
            " WHERE leases.holder = excluded.holder OR leases.expires_ms < ? RETURNING holder",
            (name, node, now + ttl, now),
        )
        return held is not None

    # Export runs ------------------------------------------------------------

    def start_export_run(self, feed, day, node, now=None, stale_after=3600000):
        return self._write(self._tx_start_export, feed, str(day), node, self._now(now),
                           int(stale_after))

    def _tx_start_export(self, tx, feed, day, node, now, stale_after):
        tx.execute(
            "UPDATE export_runs SET state = 'failed', finished_ms = ?, error = ?"
            " WHERE feed = ? AND day = ? AND state = 'running' AND started_ms < ?",
            (now, "abandoned (no progress)", feed, day, now - stale_after),
        )
        return tx.value(
            "INSERT INTO export_runs (feed, day, node, state, started_ms)"
            " VALUES (?, ?, ?, 'running', ?)"
            " ON CONFLICT (feed, day) WHERE state = 'running' DO NOTHING RETURNING id",
            (feed, day, node, now),
        )

    def finish_export_run(self, run_id, rows, detail=None, error=None, now=None):
        return self._write(self._tx_finish_export, run_id, rows, detail, error, self._now(now))

    def _tx_finish_export(self, tx, run_id, rows, detail, error, now):
        return tx.execute(
            "UPDATE export_runs SET state = ?, finished_ms = ?, row_count = ?, detail = ?,"
            " error = ? WHERE id = ? AND state = 'running'",
            ("failed" if error else "done", now, rows, self.dialect.json(detail), error, run_id),
        ) > 0

    def export_runs(self, feed=None, day=None, limit=50):
        return self._read(self._tx_export_runs, feed, None if day is None else str(day),
                          int(limit))

    def _tx_export_runs(self, tx, feed, day, limit):
        where, params = [], []
        for column, value in (("feed", feed), ("day", day)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = tx.rows(f"SELECT * FROM export_runs{clause} ORDER BY id DESC LIMIT ?",
                       params + [limit])
        return [
            ExportRun(r["id"], r["feed"], r["day"], r["node"], r["state"], r["started_ms"],
                      r["finished_ms"], r["row_count"], self.dialect.unjson(r["detail"]),
                      r["error"])
            for r in rows
        ]


def _context(column, message_id):
    return f"messages.{column}\0{message_id}".encode("utf-8")


def _detail(error, storage):
    """The part of a translated error after its "<backend> storage at <where>: " prefix."""
    text = " ".join(str(error).split()) or type(error).__name__
    prefix = f"{storage.name} storage at {storage.location}: "
    return text[len(prefix):] if text.startswith(prefix) else text
