"""The daily export service on a task.Clock: when it builds, which node
builds, catching up, retrying, stopping. Storage and files are real
(SQLite, the reactor's threads); only time is driven by the test."""

import datetime

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from siprecd import config as configmod
from siprecd.export.build import Exporter
from siprecd.export.catalogue import Catalogue
from siprecd.export.samples import seed_day
from siprecd.export.service import LEASE, ExportService, next_build_time
from siprecd.interfaces import StorageUnavailable
from siprecd.storage.sqlite import SqliteStorage


def ts(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.async_yield_fixture
async def storage(tmp_path):
    s = SqliteStorage(reactor, tmp_path / "state" / "siprecd.sqlite")
    await s.open()
    yield s
    await s.close()


def clock_at(text):
    clock = Clock()
    clock.advance(ts(text))
    return clock


class Services:
    """Export services made by a test, stopped at its end."""

    def __init__(self, exports):
        self.exports = exports
        self.made = []

    def make(self, storage, node, clock, **kw):
        exporter = Exporter(storage, self.exports, node, reactor=reactor, clock=clock)
        service = ExportService(exporter, clock, **kw)
        self.made.append(service)
        return service


@pytest_twisted.async_yield_fixture
async def services(tmp_path):
    made = Services(tmp_path / "exports")
    yield made
    for service in made.made:
        if service.running:
            await service.stopService()


def done_runs(runs):
    return [(r.day, r.node) for r in runs if r.state == "done"]


def test_the_next_build_is_the_next_time_of_day_in_utc():
    assert next_build_time(ts("2022-06-28T01:59:59Z"), "02:00") == ts("2022-06-28T02:00:00Z")
    assert next_build_time(ts("2022-06-28T02:00:00Z"), "02:00") == ts("2022-06-29T02:00:00Z")
    assert next_build_time(ts("2022-06-28T23:30:00Z"), "02:00") == ts("2022-06-29T02:00:00Z")
    assert next_build_time(ts("2022-12-31T23:59:00Z"), "23:59") == ts("2023-01-01T23:59:00Z")
    assert next_build_time(ts("2022-06-28T00:00:00Z"), "00:00") == ts("2022-06-29T00:00:00Z")


@pytest_twisted.ensureDeferred
async def test_one_of_two_nodes_builds_the_previous_day_at_two_utc(storage, services, logged):
    await seed_day(storage, "2022-06-27", calls=6, utterances=10, hours=[0, 12, 23])
    await seed_day(storage, "2022-06-28", calls=2, utterances=4, hours=[0], prefix="today")
    clock = clock_at("2022-06-28T01:59:00Z")
    a = services.make(storage, "node-a", clock)
    b = services.make(storage, "node-b", clock)
    a.startService()
    b.startService()
    await a.when_idle()
    await b.when_idle()
    assert a.next_build == b.next_build == ts("2022-06-28T02:00:00Z")

    clock.advance(59)
    await a.when_idle()
    assert await storage.export_runs() == []

    clock.advance(1)
    results = await defer.gatherResults([a.when_idle(), b.when_idle()])
    assert results == [None, None]
    runs = await storage.export_runs()
    assert [(r.day, r.state, r.rows) for r in runs] == [("2022-06-27", "done", 60)]
    builder = runs[0].node
    assert builder in ("node-a", "node-b")
    # Only the lease holder built; the other one holds nothing.
    other = "node-b" if builder == "node-a" else "node-a"
    assert await storage.try_lease(LEASE, other, 1000, now=int(clock.seconds() * 1000)) is False
    catalogue = Catalogue(services.exports)
    assert catalogue.dates("utterances", "1", "jsonl") == ["2022-06-27"]
    assert catalogue.intervals("utterances", "1", "csv", "2022-06-27") == \
        ["hr=00", "hr=12", "hr=23"]
    assert a.next_build == ts("2022-06-29T02:00:00Z")

    # One line for the run, with its figures under stable keys.
    lines = [e for e in logged if e.get("log_namespace", "").endswith("ExportService")
             and "rows" in e]
    assert len(lines) == 1
    assert (lines[0]["day"], lines[0]["rows"], lines[0]["files"]) == ("2022-06-27", 60, 6)
    assert lines[0]["seconds"] >= 0 and lines[0]["log_level"] == LogLevel.info

    # The next day, the next day is built (by one node again).
    clock.advance(86400)
    await defer.gatherResults([a.when_idle(), b.when_idle()])
    assert sorted(done_runs(await storage.export_runs()))[1][0] == "2022-06-28"
    assert len(done_runs(await storage.export_runs(day="2022-06-28"))) == 1


@pytest_twisted.ensureDeferred
async def test_a_node_without_the_lease_builds_nothing(storage, services):
    await seed_day(storage, "2022-06-27", calls=2, utterances=2, hours=[3])
    clock = clock_at("2022-06-28T01:00:00Z")
    assert await storage.try_lease(LEASE, "node-b", 3 * 3600_000,
                                   now=int(clock.seconds() * 1000))
    a = services.make(storage, "node-a", clock)
    a.startService()
    clock.advance(3600)
    await a.when_idle()
    assert await storage.export_runs() == []
    assert not services.exports.exists()
    # node-b's lease runs out (it died): node-a builds the next day.
    clock.advance(86400)
    await a.when_idle()
    assert done_runs(await storage.export_runs()) == [("2022-06-28", "node-a")]


@pytest_twisted.ensureDeferred
async def test_a_node_started_after_two_catches_up_once(storage, services, logged):
    await seed_day(storage, "2022-06-27", calls=3, utterances=2, hours=[5])
    early = services.make(storage, "node-a", clock_at("2022-06-28T01:30:00Z"))
    early.startService()
    await early.when_idle()
    assert await storage.export_runs() == []
    await early.stopService()

    clock = clock_at("2022-06-28T05:00:00Z")
    late = services.make(storage, "node-a", clock)
    late.startService()
    await late.when_idle()
    assert done_runs(await storage.export_runs()) == [("2022-06-27", "node-a")]
    assert any("has not been built" in e.get("log_format", "") for e in logged)
    await late.stopService()

    # Restarted later the same day: yesterday is done, nothing is rebuilt.
    again = services.make(storage, "node-a", clock)
    again.startService()
    await again.when_idle()
    assert len(await storage.export_runs()) == 1
    assert again.next_build == ts("2022-06-29T02:00:00Z")


class Flaky:
    """Storage whose messages_for_day fails the first *failures* times."""

    def __init__(self, storage, failures, error=StorageUnavailable("database went away")):
        self._storage = storage
        self.failures = failures
        self.error = error

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def messages_for_day(self, *args, **kw):
        if self.failures:
            self.failures -= 1
            if isinstance(self.error, StorageUnavailable):
                return defer.fail(self.error)
            raise self.error
        return self._storage.messages_for_day(*args, **kw)


@pytest_twisted.ensureDeferred
async def test_a_failed_build_is_logged_and_tried_again_later(storage, services, logged):
    await seed_day(storage, "2022-06-27", calls=2, utterances=3, hours=[1])
    clock = clock_at("2022-06-28T01:59:00Z")
    a = services.make(Flaky(storage, 1), "node-a", clock, retry_delay=600)
    a.startService()
    clock.advance(60)
    await a.when_idle()
    (failed,) = await storage.export_runs()
    assert failed.state == "failed" and "database went away" in failed.error
    errors = [e for e in logged if e.get("log_level") == LogLevel.error
              and e.get("day") == "2022-06-27"]
    assert len(errors) == 1 and errors[0]["attempt"] == 1
    assert "database went away" in errors[0]["error"]
    assert "trying again in 600s" in errors[0]["then"]

    clock.advance(599)
    await a.when_idle()
    assert len(await storage.export_runs()) == 1
    clock.advance(1)
    await a.when_idle()
    assert [r.state for r in await storage.export_runs()] == ["done", "failed"]


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_never_escapes_and_retries_are_bounded(storage, services,
                                                                         logged):
    await seed_day(storage, "2022-06-27", calls=1, utterances=1, hours=[1])
    clock = clock_at("2022-06-28T01:59:00Z")
    a = services.make(Flaky(storage, 99, error=RuntimeError("bug")), "node-a", clock,
                      retry_delay=60, retries=2)
    a.startService()
    for _ in range(5):
        clock.advance(60)
        await a.when_idle()
    runs = await storage.export_runs()
    assert [r.state for r in runs] == ["failed"] * 3  # first attempt and two retries
    failures = [e for e in logged if "log_failure" in e and e.get("day") == "2022-06-27"]
    assert len(failures) == 3
    assert failures[-1]["then"] == "giving up until tomorrow"
    assert failures[0]["log_failure"].check(RuntimeError)
    # The daily timer is still there for tomorrow.
    assert a.next_build == ts("2022-06-29T02:00:00Z")


@pytest_twisted.ensureDeferred
async def test_stopping_during_a_build_publishes_nothing_and_waits_for_it(storage, services):
    await seed_day(storage, "2022-06-27", calls=3, utterances=4, hours=[8])
    clock = clock_at("2022-06-28T01:59:59Z")
    a = services.make(storage, "node-a", clock)
    a.startService()
    clock.advance(1)
    stopped = a.stopService()
    await stopped
    assert not a._pending
    (run,) = await storage.export_runs()
    assert run.state == "failed" and "stopped" in run.error
    assert Catalogue(services.exports).dates("utterances", "1", "jsonl") == []
    clock.advance(86400)
    assert await storage.export_runs() == [run]


@pytest_twisted.ensureDeferred
async def test_a_disabled_service_schedules_nothing(storage, services):
    await seed_day(storage, "2022-06-27", calls=1, utterances=1, hours=[1])
    clock = clock_at("2022-06-28T05:00:00Z")
    a = services.make(storage, "node-a", clock, enabled=False)
    a.startService()
    assert a.next_build is None and clock.getDelayedCalls() == []
    await a.when_idle()
    assert await storage.export_runs() == []


def test_from_config(tmp_path):
    config = configmod.from_dict({
        "state_dir": str(tmp_path / "state"), "node": {"id": "node-z"},
        "export": {"at": "03:30", "directory": "feeds", "formats": ["csv"], "enabled": False},
    })
    clock = Clock()
    service = ExportService.from_config(config, object(), clock)
    assert (service.at, service.enabled, service.node, service.clock) == (
        "03:30", False, "node-z", clock)
    assert service.exporter.directory == tmp_path / "state" / "feeds"
    assert service.exporter.formats == ("csv",)
    assert service.name == "export"
