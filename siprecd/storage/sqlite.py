"""The ``sqlite`` storage backend: one file under the state directory.

For a single node. The database is in WAL mode, so readers (the API, the
exporter) never wait for the writer and the writer never waits for them.
All writes go through ONE connection on one thread: SQLite allows one
writer at a time anyway, and queuing writes in our own thread pool is
cheaper and fairer than contending for the file lock. Other processes
(the ``siprecd`` CLI) may write too; they wait up to the busy timeout.
``synchronous=FULL``: a transaction reported committed survives a crash of
the machine, not only of the process.

The database holds transcripts: its folder is made 0700 and the file 0600
before SQLite opens it (SQLite gives its -wal and -shm files the
database file's mode); a database found readable by others is made 0600.
"""

import os
import sqlite3
import stat

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
        relative to ``state_dir``; ``storage.encryption`` keys."""
        from siprecd.crypto import keyring_for

        storage = cls(reactor, config.in_state_dir(config.storage.sqlite.path))
        storage.keyring = keyring_for(config)
        return storage

    def _make_pools(self):
        if sqlite3.sqlite_version_info < _NEEDS:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old; siprecd needs "
                f"{'.'.join(map(str, _NEEDS))} or newer"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StorageUnavailable(f"cannot create {self.path.parent}: {e.strerror or e}") from None
        self._tighten()

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

    def _tighten(self):
        """The database file (made if need be), -wal and -shm: mode 0600."""
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError:
            return  # SQLite says what is wrong, in its words, when it opens it
        for path in (str(self.path), f"{self.path}-wal", f"{self.path}-shm"):
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
                if mode & 0o077:
                    os.chmod(path, mode & 0o700)
                    self.log.warn("made {path} private (it was mode {mode:04o})", path=path,
                                  mode=mode)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.warn("cannot make {path} private: {error}", path=path,
                              error=e.strerror or str(e))

    def _before_migrations(self):
        # SQLite rebuilds a table to change its constraints, and dropping
        # the old one with foreign keys on would cascade into its children;
        # the pragma is a no-op inside a transaction, so it is set here.
        return self._writer.runWithConnection(
            lambda conn: conn.execute("PRAGMA foreign_keys = OFF"))

    def _after_migrations(self):
        def check(conn):
            conn.execute("PRAGMA foreign_keys = ON")
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StorageError(f"the schema migration left {len(broken)} rows whose "
                                   "references are broken")
        return self._writer.runWithConnection(check)

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
