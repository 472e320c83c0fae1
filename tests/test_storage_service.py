"""Storage in the daemon: backends found by name through entry points, the
storage stage of the root service (start, retention timer, drain, stop),
and the migrations shipped in the wheel."""

import shutil
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest
import pytest_twisted

from siprecd.storage import migrate
from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface.verify import verifyObject

from siprecd import config as configmod
from siprecd.interfaces import IDrainable, IStorage
from siprecd.service import SiprecdService
from siprecd.storage import StorageService, available, backends, create_storage
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import Call, Message, Stream
from siprecd.storage.sqlite import SqliteStorage
from siprecd.structure import ConfigError
from siprecd.config import EXIT_CONFIG
from siprecd.tap import makeService

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400_000


def make_config(tmp_path, **storage):
    return configmod.from_dict({"state_dir": str(tmp_path / "state"), "storage": storage,
                                "node": {"id": "node-a"}})


class Options:
    def __init__(self, config):
        self.config = config


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# Backends by name ----------------------------------------------------------------


def test_the_built_in_backends_are_found_through_entry_points(tmp_path):
    assert {"sqlite", "postgresql"} <= set(available())
    sqlite = create_storage(make_config(tmp_path), reactor)
    assert isinstance(sqlite, SqliteStorage)
    assert sqlite.location == str(tmp_path / "state" / "siprecd.sqlite")
    postgresql = create_storage(
        make_config(tmp_path, backend="postgresql",
                    postgresql={"dsn": "host=db.example dbname=x password=s3cret", "pool_max": 3}),
        reactor,
    )
    assert isinstance(postgresql, PostgresStorage)
    assert (postgresql.location, postgresql.pool_max) == ("host=db.example dbname=x", 3)
    for storage in (sqlite, postgresql):
        verifyObject(IStorage, storage)


def test_an_unknown_backend_is_a_config_error_naming_the_key_and_the_choices(tmp_path):
    with pytest.raises(ConfigError) as caught:
        create_storage(make_config(tmp_path, backend="mongodb"), reactor)
    assert caught.value.key_path == "storage.backend"
    assert str(caught.value) == (
        "storage.backend: unknown storage backend 'mongodb'; available: "
        + ", ".join(available())
    )


def test_the_daemon_refuses_an_unknown_backend_with_exit_status_78(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        makeService(Options(make_config(tmp_path, backend="mongodb")), MemoryReactorClock())
    assert caught.value.code == EXIT_CONFIG
    assert capsys.readouterr().err.strip() == (
        "siprecd: storage.backend: unknown storage backend 'mongodb'; available: "
        + ", ".join(available())
    )


def test_a_third_party_backend_is_found_once_installed(tmp_path, monkeypatch):
    # What `pip install siprecd-mystore` would leave on sys.path.
    site = tmp_path / "site"
    (site / "mystore-1.0.dist-info").mkdir(parents=True)
    (site / "mystore-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mystore\nVersion: 1.0\n")
    (site / "mystore-1.0.dist-info" / "entry_points.txt").write_text(
        "[siprecd.storage]\nmystore = mystore:factory\nbroken = mystore:not_storage\n")
    (site / "mystore.py").write_text(textwrap.dedent("""
        from siprecd.storage.sqlite import SqliteStorage

        class MyStore(SqliteStorage):
            name = "mystore"

        def factory(config, reactor):
            return MyStore(reactor, config.in_state_dir("my.db"))

        def not_storage(config, reactor):
            return object()
    """))
    monkeypatch.syspath_prepend(str(site))
    assert {"mystore", "broken"} <= set(available())
    storage = create_storage(make_config(tmp_path, backend="mystore"), reactor)
    assert type(storage).__name__ == "MyStore"
    with pytest.raises(ConfigError, match=r"^storage.backend: storage backend 'broken' does "
                                          r"not implement IStorage"):
        create_storage(make_config(tmp_path, backend="broken"), reactor)


def test_entry_points_group_is_documented():
    assert backends.GROUP == "siprecd.storage"
    assert "siprecd.storage =" in (REPO / "setup.cfg").read_text()


def test_storage_is_the_first_stage_of_the_daemon(tmp_path):
    config = configmod.from_dict({
        "state_dir": str(tmp_path / "state"),
        "sip": {"udp": {"host": "127.0.0.1"}, "tcp": {"host": "127.0.0.1"}},
        "api": {"host": "127.0.0.1"},
    })
    root = makeService(Options(config), MemoryReactorClock())
    first = list(root)[0]
    assert isinstance(first, StorageService) and first.name == "storage"
    assert root.node.storage is first.storage
    verifyObject(IStorage, root.node.storage)


# The storage stage -----------------------------------------------------------------


async def old_conversation(storage, guid, ended_ms, messages=3):
    await storage.upsert_call(Call(guid, "cid", "node-a", ended_ms - 1000), now=ended_ms - 1000)
    leg = await storage.start_leg(guid, "c", "a", now=ended_ms - 1000)
    stream = Stream(str(uuid.uuid4()), guid, leg.id, "customer", "c", ended_ms - 1000)
    await storage.upsert_stream(stream)
    for n in range(messages):
        await storage.add_message(
            Message(str(uuid.uuid4()), stream.id, f"m{n}", n, n + 1, ended_ms - 500), ["t"])
    await storage.end_call(guid, "bye", now=ended_ms)


@pytest_twisted.ensureDeferred
async def test_starts_migrates_and_purges_on_a_timer(tmp_path, logged):
    clock = task.Clock()
    clock.advance(1_800_000_000)  # the retention timer's idea of now
    now_ms = 1_800_000_000_000
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    service = StorageService(storage, clock, "node-a", retention=7 * 86400.0,
                             purge_interval=600.0, batch_size=2)
    verifyObject(IDrainable, service)
    await service.startService()
    texts = [e.get("log_format", "") for e in logged]
    assert "storage: {backend} at {location}, schema version {version}" in texts
    started = next(e for e in logged if e.get("backend") == "sqlite")
    assert (started["location"], started["version"]) == (str(tmp_path / "db.sqlite"),
                                                          len(migrate.load("sqlite")))

    await old_conversation(storage, "expired", now_ms - 8 * DAY)
    await old_conversation(storage, "kept", now_ms - 6 * DAY)
    clock.advance(600)  # the timer fires: a purge, batch after batch
    assert service._purging is not None
    assert await service.purge() == 3  # the purge the timer started
    assert await storage.get_call_by_guid("expired") is None
    assert len(await storage.messages_for_guid("kept")) == 3
    assert any(e.get("log_format", "").startswith("retention: purged") and e["calls"] == 1
               for e in logged)

    # Another node sharing the database leaves retention to the lease holder.
    other = StorageService(SqliteStorage(reactor, tmp_path / "db.sqlite"), clock, "node-b",
                           purge_interval=600.0)
    await old_conversation(storage, "expired-too", now_ms - 8 * DAY)
    await other.startService()
    assert await other.purge() == 0
    assert await storage.get_call_by_guid("expired-too") is not None
    await other.stopService()

    await service.stopService()
    assert not service._loop.running


@pytest_twisted.ensureDeferred
async def test_draining_waits_for_writes_and_still_takes_new_ones(tmp_path):
    storage = SqliteStorage(reactor, tmp_path / "db.sqlite")
    service = StorageService(storage, task.Clock(), "node-a")
    await service.startService()
    await storage.upsert_call(Call("g", "cid", "node-a", 0))
    leg = await storage.start_leg("g", "c", "a")
    stream = Stream("s", "g", leg.id, "customer", "c", 0)
    await storage.upsert_stream(stream)
    writes = [storage.add_message(Message(f"m{n}", "s", "t", 0, 1, 0), ["t"]) for n in range(30)]
    service.stop_accepting()
    assert not service._loop.running
    late = storage.add_message(Message("late", "s", "t", 0, 1, 0), ["t"])
    await service.drain()
    assert all(w.called for w in writes)
    await service.stopService()
    assert await late == 31
    assert sorted(await defer.gatherResults(writes)) == list(range(1, 31))


@pytest_twisted.ensureDeferred
async def test_a_storage_that_cannot_open_stops_the_daemon_with_one_line(tmp_path, logged):
    (tmp_path / "dir.sqlite").mkdir()
    memory = MemoryReactorClock()
    memory.running = True
    root = SiprecdService(make_config(tmp_path), memory)
    StorageService(SqliteStorage(reactor, tmp_path / "dir.sqlite"), memory, "node-a") \
        .setServiceParent(root)
    root.startService()
    await root.started
    assert root.exit_code == 1
    (fatal,) = [e for e in logged if e.get("log_level") == LogLevel.critical]
    assert fatal["message"] == (
        f"storage could not start: cannot open sqlite storage at {tmp_path / 'dir.sqlite'}: "
        "unable to open database file"
    )


# Packaging -------------------------------------------------------------------------


def test_the_wheel_ships_the_migrations_of_both_dialects(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "dist"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("siprecd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for dialect in ("sqlite", "postgresql"):
        assert f"siprecd/storage/migrations/{dialect}/0001_initial.sql" in names
    assert "sqlite = siprecd.storage.sqlite:SqliteStorage.from_config" in entry_points
    assert "postgresql = siprecd.storage.postgresql:PostgresStorage.from_config" in entry_points
