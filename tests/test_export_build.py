"""Building a day of the utterances feed: partitions, idempotence,
atomicity, streaming, the run record; once against PostgreSQL too."""

import csv
import errno
import io
import json
import os
import threading
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from siprecd.export import build as buildmod
from siprecd.export.build import BuildStopped, ExportBusy, Exporter, build_day
from siprecd.export.catalogue import Catalogue
from siprecd.export.samples import TEXTS, day_start_ms, seed_day
from siprecd.messages import api_message
from siprecd.storage.postgresql import PostgresStorage
from siprecd.storage.records import Call, Message, Stream
from siprecd.storage.sqlite import SqliteStorage

DAY = "2022-06-27"
START = day_start_ms(DAY)
HOUR = 3_600_000
JSONL = "utterances/version=1/format=jsonl/dt=2022-06-27"
CSV = "utterances/version=1/format=csv/dt=2022-06-27"


class FixedClock:
    def __init__(self, seconds):
        self.now = seconds

    def seconds(self):
        return self.now


@pytest_twisted.async_yield_fixture
async def storage(tmp_path):
    s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def exports(tmp_path):
    return tmp_path / "exports"


def exporter(storage, exports, node="node-a", **kw):
    return Exporter(storage, exports, node, reactor=reactor,
                    clock=FixedClock(START / 1000 + 2 * 86400), **kw)


def snapshot(root):
    """{relative path: bytes} of every file under *root* (hidden ones too)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


def jsonl_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def one_stream(storage, guid, created):
    await storage.upsert_call(Call(guid, f"{guid}@sbc", "node-a", created), now=created)
    leg = await storage.start_leg(guid, "cust", "agent", {}, now=created)
    stream = Stream(f"s-{guid}", guid, leg.id, "customer", "cust", created,
                    params={"redactionOutput": "redacted"})
    await storage.upsert_stream(stream, now=created)
    return stream


async def add(storage, stream, n, created, text=None):
    await storage.add_message(Message(f"{stream.id}-{n}", stream.id, text or f"m{n}", n, n + 1,
                                      created), ())


@pytest_twisted.ensureDeferred
async def test_rows_go_to_the_file_of_their_utc_hour_and_the_day_stays_in_its_bounds(
        storage, exports):
    stream = await one_stream(storage, "g1", START - 10)
    created = {"before": START - 1, "first": START, "h2": START + 2 * HOUR + 5,
               "h2b": START + 3 * HOUR - 1, "last": START + 24 * HOUR - 1,
               "after": START + 24 * HOUR}
    for n, (name, at) in enumerate(created.items()):
        await add(storage, stream, n, at, text=name)
    result = await exporter(storage, exports).export(DAY)

    assert result.rows == 4
    assert sorted(result.files) == sorted(
        f"{base}/hr={h}/part-0000.{fmt}" for base, fmt in ((JSONL, "jsonl"), (CSV, "csv"))
        for h in ("00", "02", "23"))
    texts = {h: [r["text"] for r in jsonl_rows(exports / JSONL / f"hr={h}" / "part-0000.jsonl")]
             for h in ("00", "02", "23")}
    assert texts == {"00": ["first"], "02": ["h2", "h2b"], "23": ["last"]}
    text = (exports / CSV / "hr=02" / "part-0000.csv").read_bytes().decode("utf-8")
    assert [r["text"] for r in csv.DictReader(io.StringIO(text, newline=""))] == ["h2", "h2b"]
    # Files are private: they hold transcripts.
    assert os.stat(exports / JSONL / "hr=02" / "part-0000.jsonl").st_mode & 0o777 == 0o600


@pytest_twisted.ensureDeferred
async def test_the_feed_shows_each_message_exactly_as_the_api_does(storage, exports):
    guids = await seed_day(storage, DAY, calls=6, utterances=10, hours=[1, 9],
                           redaction_output="redacted_and_unredacted", detailed_token=True)
    result = await exporter(storage, exports).export(DAY)
    assert result.rows == 60
    rows = [r for h in ("01", "09")
            for r in jsonl_rows(exports / JSONL / f"hr={h}" / "part-0000.jsonl")]
    by_id = {r["messageId"]: r for r in rows}
    for guid in guids:
        call = await storage.get_call_by_guid(guid)
        for m in await storage.messages_for_guid(guid):
            api, r = api_message(m), by_id[m.id]
            assert (r["text"], r["unredactedText"], r["tokens"]) == (
                api["text"], api["unredactedText"], api["tokens"])
            assert (r["externalConversationId"], r["conversationId"], r["legId"],
                    r["streamId"], r["role"], r["senderExternalId"], r["sequence"]) == (
                guid, call.conversation_id, m.leg_id, m.stream_id, m.role, m.external_id,
                m.sequence)
            assert r["createdTimestamp"] == api["createdTimestamp"]
    # Rows are in creation order within each file.
    for h in ("01", "09"):
        stamps = [r["createdTimestamp"]
                  for r in jsonl_rows(exports / JSONL / f"hr={h}" / "part-0000.jsonl")]
        assert stamps == sorted(stamps)


@pytest_twisted.ensureDeferred
async def test_rebuilding_a_day_writes_the_same_bytes_and_records_each_run(storage, exports):
    await seed_day(storage, DAY, calls=20, utterances=10, hours=[0, 5, 23])
    ex = exporter(storage, exports, page_size=37)
    first = await ex.export(DAY)
    before = snapshot(exports)
    assert len(before) == 6 and first.rows == 200
    again = await ex.export(DAY)
    assert snapshot(exports) == before
    assert (again.rows, again.files, again.removed) == (first.rows, first.files, ())
    runs = await storage.export_runs(feed="utterances", day=DAY)
    assert [(r.state, r.rows, r.node) for r in runs] == [("done", 200, "node-a")] * 2
    assert runs[0].detail["files"] == 6 and runs[0].detail["formats"] == ["jsonl", "csv"]
    assert runs[0].detail["seconds"] >= 0 and runs[0].detail["bytes"] == sum(
        len(b) for b in before.values())


@pytest_twisted.ensureDeferred
async def test_hours_that_lost_their_rows_are_removed_on_rebuild(storage, exports):
    gone = await seed_day(storage, DAY, calls=2, utterances=4, hours=[3], prefix="gone")
    await seed_day(storage, DAY, calls=2, utterances=4, hours=[7], prefix="kept")
    ex = exporter(storage, exports)
    await ex.export(DAY)
    kept = {p: b for p, b in snapshot(exports).items() if "hr=07" in p}
    assert len(kept) == 2
    # The calls of hour 3 end and are purged (as retention would).
    for guid in gone:
        await storage.end_call(guid, "bye", now=START + 4 * HOUR)
    purged = await storage.purge_expired(START + 5 * HOUR, HOUR // 2, 1000)
    assert purged.messages == 8

    result = await ex.export(DAY)
    assert snapshot(exports) == kept
    assert sorted(result.removed) == [f"{CSV}/hr=03/part-0000.csv",
                                      f"{JSONL}/hr=03/part-0000.jsonl"]
    assert not (exports / JSONL / "hr=03").exists()

    # A day with no rows left has no directory at all.
    for guid in await storage.messages_for_day(DAY):
        await storage.end_call(guid.guid, "bye", now=START + 8 * HOUR)
    while await storage.purge_expired(START + 9 * HOUR, HOUR // 2, 1000):
        pass
    assert (await ex.export(DAY)).files == ()
    assert not (exports / JSONL).exists() and not (exports / CSV).exists()
    assert Catalogue(exports).dates("utterances", "1", "jsonl") == []


@pytest_twisted.ensureDeferred
async def test_a_rebuild_removes_only_part_files_of_its_own_format(storage, exports):
    await seed_day(storage, DAY, calls=1, utterances=2, hours=[4])
    ex = exporter(storage, exports)
    await ex.export(DAY)
    hour4 = exports / JSONL / "hr=04"
    hour9 = exports / JSONL / "hr=09"
    hour9.mkdir()
    for folder, name in ((hour4, "part-0001.jsonl"), (hour4, "notes.txt"),
                         (hour4, "part-0001.csv"), (hour9, "part-0000.jsonl"),
                         (hour9, "keep.me")):
        (folder / name).write_text("not from this build")
    result = await ex.export(DAY)
    assert sorted(result.removed) == [f"{JSONL}/hr=04/part-0001.jsonl",
                                      f"{JSONL}/hr=09/part-0000.jsonl"]
    assert sorted(os.listdir(hour4)) == ["notes.txt", "part-0000.jsonl", "part-0001.csv"]
    assert os.listdir(hour9) == ["keep.me"]


class FailingPages:
    """Storage whose messages_for_day fails from the *fail_at*-th call on
    (a database that goes away in the middle of a build)."""

    def __init__(self, storage, fail_at):
        self._storage = storage
        self.calls = 0
        self.fail_at = fail_at

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def messages_for_day(self, day, after=None, limit=5000):
        self.calls += 1
        if self.calls >= self.fail_at:
            from twisted.internet import defer

            from siprecd.interfaces import StorageUnavailable
            return defer.fail(StorageUnavailable("sqlite storage: connection lost"))
        return self._storage.messages_for_day(day, after=after, limit=limit)


@pytest_twisted.ensureDeferred
async def test_a_build_that_fails_half_way_leaves_the_previous_files(storage, exports):
    await seed_day(storage, DAY, calls=4, utterances=5, hours=[2])
    await exporter(storage, exports).export(DAY)
    before = snapshot(exports)
    await seed_day(storage, DAY, calls=4, utterances=5, hours=[2, 4], prefix="later")

    failing = FailingPages(storage, fail_at=3)
    ex = exporter(failing, exports, page_size=5)
    with pytest.raises(Exception, match="connection lost"):
        await ex.export(DAY)
    assert failing.calls == 3
    # Byte for byte the old day, no new hour, and no staging left behind.
    assert snapshot(exports) == before
    (run, *_) = await storage.export_runs(day=DAY)
    assert run.state == "failed" and "connection lost" in run.error


@pytest_twisted.ensureDeferred
async def test_a_disk_error_while_writing_leaves_the_previous_files(storage, exports,
                                                                    monkeypatch):
    await seed_day(storage, DAY, calls=3, utterances=4, hours=[6])
    await exporter(storage, exports).export(DAY)
    before = snapshot(exports)
    await seed_day(storage, DAY, calls=3, utterances=4, hours=[6], prefix="more")
    real_fsync = os.fsync
    synced = []

    def fsync(fd):
        synced.append(fd)
        if len(synced) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(buildmod.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        await exporter(storage, exports).export(DAY)
    monkeypatch.undo()
    assert snapshot(exports) == before
    assert (await storage.export_runs(day=DAY))[0].error.startswith("OSError")


@pytest_twisted.ensureDeferred
async def test_staging_left_by_a_crash_is_removed_and_never_listed(storage, exports):
    await seed_day(storage, DAY, calls=2, utterances=2, hours=[2])
    crashed = exports / "utterances/version=1/format=jsonl/.staging-dt=2022-06-27-0123456789ab"
    crashed.mkdir(parents=True)
    (crashed / "hr=02.part-0000.jsonl").write_text('{"half": ')
    other_day = exports / "utterances/version=1/format=jsonl/.staging-dt=2022-06-28-0123456789ab"
    other_day.mkdir()
    catalogue = Catalogue(exports)
    assert catalogue.dates("utterances", "1", "jsonl") == []

    await exporter(storage, exports).export(DAY)
    assert not crashed.exists()
    assert other_day.exists()  # another day's build may still be going
    assert catalogue.dates("utterances", "1", "jsonl") == [DAY]
    assert catalogue.files("utterances", "1", "jsonl", DAY) == ["hr=02/part-0000.jsonl"]


class CountingPages(FailingPages):
    def __init__(self, storage):
        super().__init__(storage, fail_at=10**9)
        self.limits, self.sizes = [], []

    def messages_for_day(self, day, after=None, limit=5000):
        self.limits.append(limit)
        return super().messages_for_day(day, after, limit).addCallback(self._seen)

    def _seen(self, page):
        self.sizes.append(len(page))
        return page


@pytest_twisted.ensureDeferred
async def test_a_day_is_streamed_in_pages_and_written_off_the_reactor_thread(
        storage, exports, monkeypatch):
    await seed_day(storage, DAY, calls=5, utterances=10, hours=[1, 2, 3])
    pages = CountingPages(storage)
    writer_threads = []
    real_write = buildmod._DayWriter.write

    def write(self, messages, ids):
        writer_threads.append(threading.current_thread())
        return real_write(self, messages, ids)

    monkeypatch.setattr(buildmod._DayWriter, "write", write)
    seen = []
    result = await build_day(pages, exports, DAY, ("jsonl",), reactor=reactor, page_size=7,
                             progress=seen.append)
    assert result.rows == 50
    assert pages.limits == [7] * 9 and pages.sizes == [7] * 7 + [1, 0]
    assert seen == [7] * 7 + [1]
    assert writer_threads and threading.main_thread() not in writer_threads
    assert not (exports / "utterances/version=1/format=csv").exists()


@pytest_twisted.ensureDeferred
async def test_one_run_of_a_day_at_a_time(storage, exports):
    await seed_day(storage, DAY, calls=1, utterances=2, hours=[2])
    other = await storage.start_export_run("utterances", DAY, "node-b")
    with pytest.raises(ExportBusy, match="already running.*node-b"):
        await exporter(storage, exports).export(DAY)
    assert not exports.exists() or snapshot(exports) == {}
    await storage.finish_export_run(other, 0)
    assert (await exporter(storage, exports).export(DAY)).rows == 2


@pytest_twisted.ensureDeferred
async def test_a_stopped_build_publishes_nothing(storage, exports):
    await seed_day(storage, DAY, calls=2, utterances=3, hours=[2])
    with pytest.raises(BuildStopped):
        await exporter(storage, exports).export(DAY, should_stop=lambda: True)
    assert snapshot(exports) == {}
    assert (await storage.export_runs(day=DAY))[0].state == "failed"


def test_days_and_formats_are_checked():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        buildmod.parse_day("2022-02-30")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        buildmod.parse_day("20220627")
    assert str(buildmod.parse_day("2022-06-27")) == "2022-06-27"


@pytest_twisted.ensureDeferred
async def test_an_unknown_format_is_refused_before_anything_is_written(storage, exports):
    with pytest.raises(ValueError, match="formats"):
        await build_day(storage, exports, DAY, ("parquet",), reactor=reactor)
    assert not exports.exists()


@pytest_twisted.ensureDeferred
async def test_postgresql_exports_the_same_rows_as_sqlite(storage, tmp_path, postgres_schema):
    pg = PostgresStorage(reactor, postgres_schema, pool_min=1, pool_max=4)
    await pg.open()
    try:
        for s in (storage, pg):
            await seed_day(s, DAY, calls=12, utterances=10, hours=[0, 13, 23],
                           redaction_output="redacted_and_unredacted")
        lite = await exporter(storage, tmp_path / "lite", page_size=33).export(DAY)
        post = await exporter(pg, tmp_path / "pg", page_size=33).export(DAY)
        assert lite.rows == post.rows == 120 and lite.files == post.files

        def comparable(root, name):
            # Ids storage makes up itself (conversation, leg) differ.
            text = (root / name).read_bytes().decode("utf-8")
            return [{k: v for k, v in r.items() if k not in ("conversationId", "legId")}
                    for r in csv.DictReader(io.StringIO(text, newline=""))]

        for name in post.files:
            if name.endswith(".csv"):
                assert comparable(tmp_path / "pg", name) == comparable(tmp_path / "lite", name)
        texts = {r["text"] for name in post.files if name.endswith(".csv")
                 for r in csv.DictReader(io.StringIO(
                     (tmp_path / "pg" / name).read_bytes().decode("utf-8"), newline=""))}
        assert texts == set(TEXTS)
        (run,) = await pg.export_runs(feed="utterances", day=DAY)
        assert (run.state, run.rows, run.detail["files"]) == ("done", 120, 6)
    finally:
        await pg.close()
