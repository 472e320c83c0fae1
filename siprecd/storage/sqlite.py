"""The ``sqlite`` storage backend: one file under the state directory.

For a single node. The database is in WAL mode, so readers (the API, the
exporter) never wait for the writer and the writer never waits for them.
All writes go through ONE connection on one thread: SQLite allows one
writer at a time anyway, and queuing writes in our own thread pool is
cheaper and fairer than contending for the file lock. Other processes
(the ``siprecd`` CLI) may write too; they wait up to the busy timeout.
``synchronous=FULL``: a transaction reported committed survives a crash of
the machine, not only of the process.
"""

import sqlite3

from siprecd.interfaces import StorageError, StorageUnavailable
from siprecd.storage.pool import SQLITE, ConnectionPool
from siprecd.storage.sql import SqlStorage

__all__ = ["SqliteStorage"]

# RETURNING, and upserts with it, arrived in 3.35.
_NEEDS = (3, 35, 0)
_READERS = 4


class SqliteStorage(SqlStorage):
    name = "sqlite"
    dialect = SQLITE
    busy_timeout = 5.0

    def __init__(self, reactor, path):
        super().__init__(reactor, str(path))
        self.path = path

    @classmethod
    def from_config(cls, config, reactor):
        """The ``siprecd.storage`` entry point: ``storage.sqlite.path``,
        relative to ``state_dir``."""
        return cls(reactor, config.in_state_dir(config.storage.sqlite.path))

    def _make_pools(self):
        if sqlite3.sqlite_version_info < _NEEDS:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; siprecd needs "
                f"{'.'.join(map(str, _NEEDS))} or newer"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageUnavailable(f"cannot create {self.path.parent}: {e.strerror or e}") from None

        def pool(minimum, maximum, begin, setup):
            p = ConnectionPool(
                "sqlite3", str(self.path), dialect=SQLITE, begin=begin,
                check_same_thread=False, isolation_level=None, timeout=self.busy_timeout,
                cp_min=minimum, cp_max=maximum, cp_openfun=setup, cp_reactor=self.reactor,
            )
            p.start()
            return p

        writer = pool(1, 1, "BEGIN IMMEDIATE", self._setup_writer)
        reader = pool(1, _READERS, "BEGIN", self._setup_reader)
        return writer, reader

    def _setup_reader(self, conn):
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")

    def _setup_writer(self, conn):
        self._setup_reader(conn)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"cannot use WAL mode (got {mode!r}); is the file system local?")
        conn.execute("PRAGMA synchronous = FULL")

    def _translate(self, exc):
        where = f"{self.name} storage at {self.location}"
        if isinstance(exc, sqlite3.Error):
            text = " ".join(str(exc).split()) or type(exc).__name__
            lowered = text.lower()
            if "locked" in lowered or "busy" in lowered:
                return StorageUnavailable(f"{where}: database is busy ({text})")
            if "unable to open" in lowered:
                return StorageUnavailable(f"{where}: {text}")
            if isinstance(exc, sqlite3.IntegrityError):
                return StorageError(f"{where}: write refused: {text}")
            if isinstance(exc, sqlite3.OperationalError) and (
                "full" in lowered or "readonly" in lowered or "disk i/o" in lowered
            ):
                return StorageError(f"{where}: cannot write: {text}")
            return StorageError(f"{where}: {text}")
        return exc
