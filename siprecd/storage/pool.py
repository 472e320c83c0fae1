"""Blocking DB-API drivers on their own threads, and the small differences
between the two SQL dialects.

``ConnectionPool`` is Twisted's ``adbapi.ConnectionPool`` (a dedicated
thread pool, one connection per thread) with two changes adbapi cannot be
configured into:

- Transactions are ours: an optional ``BEGIN`` statement first (SQLite's
  ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction that
  reads before it writes never fails half-way on a busy database), then
  the interaction, then ``COMMIT``, or ``ROLLBACK`` on any error.
- Reconnecting after a server restart: adbapi's ``cp_reconnect`` notices a
  dead connection only on the thread that used it, so after a PostgreSQL
  restart every pooled connection would fail once in turn. Here a lost
  connection bumps a generation number and every thread replaces its
  connection before its next use.
"""

import functools
import json

from twisted.enterprise import adbapi

__all__ = ["ConnectionPool", "Dialect", "SQLITE", "POSTGRESQL", "Tx"]


class Dialect:
    """What differs between SQLite and PostgreSQL in our SQL.

    Statements are written with ``?`` placeholders (and never contain a
    literal ``?`` or ``%``); PostgreSQL's driver wants ``%s``.
    """

    def __init__(self, name, placeholder, lock_rows, skip_locked, json_is_text):
        self.name = name
        self._placeholder = placeholder
        self.for_update = lock_rows
        self.skip_locked = skip_locked
        self._json_is_text = json_is_text

    @functools.lru_cache(maxsize=None)  # noqa: B019 (two instances, never freed)
    def sql(self, statement):
        if self._placeholder == "?":
            return statement
        return statement.replace("?", self._placeholder)

    def json(self, value):
        """A parameter for a JSON column (PostgreSQL casts the text to jsonb)."""
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def unjson(self, value):
        if value is None or not self._json_is_text:
            return value
        return json.loads(value)


SQLITE = Dialect("sqlite", "?", lock_rows="", skip_locked="", json_is_text=True)
# NO KEY UPDATE: the rows we lock are never re-keyed, and this lock does not
# wait for the key-share locks that inserts referencing the row hold.
POSTGRESQL = Dialect(
    "postgresql", "%s", lock_rows=" FOR NO KEY UPDATE", skip_locked=" FOR UPDATE SKIP LOCKED",
    json_is_text=False,
)


class Tx:
    """A cursor inside one transaction, speaking our placeholder style and
    returning rows as dicts."""

    def __init__(self, cursor, dialect):
        self.cursor = cursor
        self.dialect = dialect

    def execute(self, statement, params=()):
        self.cursor.execute(self.dialect.sql(statement), params)
        return self.cursor.rowcount

    def executemany(self, statement, rows):
        self.cursor.executemany(self.dialect.sql(statement), rows)

    def rows(self, statement, params=()):
        self.cursor.execute(self.dialect.sql(statement), params)
        if self.cursor.description is None:
            return []
        names = [d[0] for d in self.cursor.description]
        return [dict(zip(names, row)) for row in self.cursor.fetchall()]

    def row(self, statement, params=()):
        rows = self.rows(statement, params)
        return rows[0] if rows else None

    def value(self, statement, params=()):
        row = self.row(statement, params)
        return None if row is None else next(iter(row.values()))


class ConnectionPool(adbapi.ConnectionPool):
    """See the module docstring. *begin* is run first in every transaction
    (None: the driver opens transactions itself)."""

    def __init__(self, dbapi_name, *connargs, dialect, begin=None, **connkw):
        super().__init__(dbapi_name, *connargs, **connkw)
        self.dialect = dialect
        self.begin = begin
        self._generation = 0
        self._born = {}

    def connect(self):
        tid = self.threadID()
        conn = self.connections.get(tid)
        if conn is not None and (
            self._born.get(tid) != self._generation or getattr(conn, "closed", False)
        ):
            self._close(conn)
            del self.connections[tid]
        if tid not in self.connections:
            self._born[tid] = self._generation
        return super().connect()

    def connection_lost(self):
        """Every pooled connection is suspect: replace each before reuse."""
        self._generation += 1

    def _runInteraction(self, interaction, *args, **kw):
        conn = self.connect()
        try:
            cursor = conn.cursor()
            if self.begin:
                cursor.execute(self.begin)
            result = interaction(Tx(cursor, self.dialect), *args, **kw)
            cursor.close()
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                self.connection_lost()
            if getattr(conn, "broken", False) or getattr(conn, "closed", False):
                self.connection_lost()
            raise
