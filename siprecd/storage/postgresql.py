"""The ``postgresql`` storage backend (psycopg 3), for one node or many.

Connections are pooled (``storage.postgresql.pool_min``/``pool_max``
threads, one connection each). After the server restarts or a connection
drops, every pooled connection is replaced before its next use and the
operation is retried with backoff for a few seconds, so a restart of the
database is a pause, not an error, for siprecd's callers. Several nodes
share the database: outbox rows and retention batches are claimed with
``FOR UPDATE SKIP LOCKED``.
"""

import psycopg
from psycopg import conninfo, errors

from siprecd.interfaces import StorageError, StorageUnavailable
from siprecd.storage.pool import POSTGRESQL, ConnectionPool
from siprecd.storage.sql import SqlStorage

__all__ = ["PostgresStorage", "describe_dsn"]

# SQLSTATEs that mean "this connection or the server went away".
_GONE = {"57P01", "57P02", "57P03"}


def describe_dsn(dsn):
    """Where a DSN points, without its password (for logs and errors)."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    shown = [f"{k}={parts[k]}" for k in ("host", "port", "dbname", "user") if parts.get(k)]
    return " ".join(shown) or "(libpq defaults)"


class PostgresStorage(SqlStorage):
    name = "postgresql"
    dialect = POSTGRESQL
    retry_delays = (0.25, 0.5, 1.0, 2.0, 4.0)
    connect_timeout = 10

    def __init__(self, reactor, dsn, pool_min=1, pool_max=10):
        super().__init__(reactor, describe_dsn(dsn))
        self._dsn = dsn
        self.pool_min = pool_min
        self.pool_max = max(pool_min, pool_max)

    @classmethod
    def from_config(cls, config, reactor):
        """The ``siprecd.storage`` entry point: ``storage.postgresql``."""
        from siprecd.crypto import keyring_for

        section = config.storage.postgresql
        storage = cls(reactor, section.dsn or "", section.pool_min, section.pool_max)
        storage.keyring = keyring_for(config)
        return storage

    def _make_pools(self):
        try:
            conninfo.conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError as e:
            raise StorageError(f"storage.postgresql.dsn is not a valid DSN: {e}") from None
        pool = ConnectionPool(
            "psycopg", self._dsn, dialect=POSTGRESQL,
            connect_timeout=self.connect_timeout, application_name="siprecd",
            cp_min=self.pool_min, cp_max=self.pool_max, cp_reactor=self.reactor,
        )
        pool.start()
        return pool, pool

    def _translate(self, exc):
        if not isinstance(exc, psycopg.Error):
            return exc
        where = f"{self.name} storage at {self.location}"
        text = " ".join(str(exc).split()) or type(exc).__name__
        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, psycopg.InterfaceError) or (
            isinstance(exc, psycopg.OperationalError)
            and (state is None or state.startswith("08") or state in _GONE)
        ):
            return StorageUnavailable(f"{where}: {text}")
        if isinstance(exc, errors.DiskFull | errors.OutOfMemory | errors.ReadOnlySqlTransaction):
            return StorageError(f"{where}: cannot write: {text}")
        if isinstance(exc, psycopg.IntegrityError):
            return StorageError(f"{where}: write refused: {text}")
        return StorageError(f"{where}: {text}")
