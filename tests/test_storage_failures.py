"""Storage when things go wrong: a database restart, a full disk, a
database that cannot be opened. Errors are one clear line, and nothing
already committed is lost."""

import os
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from psycopg import conninfo
from twisted.internet import defer, reactor, task, utils

from siprecd.interfaces import StorageError, StorageUnavailable
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import Call, Message, Stream
from siprecd.storage.sqlite import SqliteStorage

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000


async def conversation(storage, guid="1"):
    await storage.upsert_call(Call(guid, "cid", "node", T0), now=T0)
    leg = await storage.start_leg(guid, "c", "a", now=T0)
    stream = Stream(str(uuid.uuid4()), guid, leg.id, "customer", "c", T0)
    await storage.upsert_stream(stream, now=T0)
    return stream


def message(stream, n, text=None):
    return Message(str(uuid.uuid4()), stream.id, text or f"m{n}", n, n + 1, T0 + n)


async def postgres_ctl(command):
    """Run scripts/test-postgres (the server `make test` started)."""
    out, err, code = await utils.getProcessOutputAndValue(
        "/bin/bash", [str(REPO / "scripts" / "test-postgres"), command], env=os.environ)
    assert code == 0, (
        f"scripts/test-postgres {command} failed ({err.decode(errors='replace').strip()}); "
        "these tests need the server that script starts (make test)"
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# PostgreSQL: reconnecting ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_postgresql_carries_on_after_the_server_restarts(postgres_schema):
    storage = PostgresStorage(reactor, postgres_schema, pool_min=2, pool_max=4)
    await storage.open()
    try:
        stream = await conversation(storage)
        # Open every pooled connection, so that all of them go stale.
        await defer.gatherResults([storage.add_message(message(stream, n), ["t"])
                                   for n in range(12)])
        await postgres_ctl("restart")
        await defer.gatherResults([storage.add_message(message(stream, n), ["t"])
                                   for n in range(12, 24)])
        stored = await storage.messages_for_guid("1")
        assert sorted(m.sequence for m in stored) == list(range(1, 25))
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_down_for_a_moment_is_a_pause_not_an_error(postgres_schema):
    storage = PostgresStorage(reactor, postgres_schema, pool_min=1, pool_max=2)
    await storage.open()
    try:
        stream = await conversation(storage)
        await storage.add_message(message(stream, 0), ["t"])
        await postgres_ctl("stop")
        try:
            write = storage.add_message(message(stream, 1), ["t"])
            await task.deferLater(reactor, 1.0, lambda: None)
            assert not write.called
        finally:
            await postgres_ctl("start")
        assert await write == 2
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_connections_killed_by_the_server_are_replaced(postgres_schema):
    storage = PostgresStorage(reactor, postgres_schema, pool_min=3, pool_max=3)
    await storage.open()
    try:
        stream = await conversation(storage)
        await defer.gatherResults([storage.add_message(message(stream, n), []) for n in range(9)])
        with psycopg.connect(postgres_schema, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'siprecd' AND pid <> pg_backend_pid()"
            ).fetchall()
        assert len(killed) >= 1
        results = await defer.gatherResults(
            [storage.add_message(message(stream, n), []) for n in range(9, 18)])
        assert sorted(results) == list(range(10, 19))
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_that_cannot_be_reached_is_one_clear_line(postgres_dsn):
    port = free_port()
    dsn = conninfo.make_conninfo(postgres_dsn, port=str(port), password="hunter2")
    storage = PostgresStorage(reactor, dsn)
    storage.retry_delays = (0.05,)
    with pytest.raises(StorageUnavailable) as caught:
        await storage.open()
    text = str(caught.value)
    assert text.startswith(f"cannot open postgresql storage at host=127.0.0.1 port={port} ")
    assert "Connection refused" in text
    assert "\n" not in text and "hunter2" not in text


# SQLite: full disk, bad files -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sqlite_full_disk_refuses_the_write_and_keeps_what_was_committed(tmp_path):
    # A small "disk": SQLite's max_page_count caps the file's size exactly
    # as a full file system would (SQLITE_FULL), without needing root.
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    await storage.open()
    try:
        stream = await conversation(storage)
        pages = await storage._write(lambda tx: tx.value("PRAGMA page_count"))
        await storage._write(lambda tx: tx.execute(f"PRAGMA max_page_count = {pages + 8}"))
        committed = []
        with pytest.raises(StorageError) as caught:
            for n in range(1000):
                m = message(stream, n, text=f"{n} " + "x" * 3000)
                await storage.add_message(m, ["primary", "backup"])
                committed.append(m.id)
        text = str(caught.value)
        assert text == (f"sqlite storage at {tmp_path / 'db.sqlite'}: cannot write: "
                        "database or disk is full")
        assert 0 < len(committed) < 1000

        stored = await storage.messages_for_guid("1", limit=2000)
        assert [m.id for m in stored] == committed
        assert all(m.text.startswith(f"{m.sequence - 1} ") and len(m.text) > 3000 for m in stored)
        outbox = await storage._read(lambda tx: tx.value("SELECT COUNT(*) FROM outbox"))
        assert outbox == 2 * len(committed)

        # Space again: writing resumes where it stopped.
        await storage._write(lambda tx: tx.execute("PRAGMA max_page_count = 1073741823"))
        assert await storage.add_message(message(stream, 5000), ["primary"]) == len(committed) + 1
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_that_cannot_be_opened_is_one_clear_line(tmp_path):
    (tmp_path / "is-a-directory").mkdir()
    storage = SqliteStorage(reactor, tmp_path / "is-a-directory")
    with pytest.raises(StorageError) as caught:
        await storage.open()
    assert str(caught.value) == (
        f"cannot open sqlite storage at {tmp_path / 'is-a-directory'}: unable to open database file"
    )

    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
    storage = SqliteStorage(reactor, tmp_path / "garbage.sqlite")
    with pytest.raises(StorageError) as caught:
        await storage.open()
    assert str(caught.value) == (
        f"cannot open sqlite storage at {tmp_path / 'garbage.sqlite'}: file is not a database"
    )


@pytest_twisted.ensureDeferred
async def test_a_schema_newer_than_this_release_is_refused(tmp_path):
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    await storage.open()
    await storage._write(lambda tx: tx.execute(
        "INSERT INTO schema_version (version, name, applied_ms) VALUES (99, 'future', 0)"))
    await storage.close()
    again = SqliteStorage(reactor, tmp_path / "db.sqlite")
    with pytest.raises(StorageError) as caught:
        await again.open()
    assert "schema is at version 99, newer than this siprecd knows" in str(caught.value)
