"""A database outage is logged once, then summed up, not once per failed
operation: storage (siprecd.outage.OutageLog), the cluster's heartbeats,
and INVITEs refused for it (a warning per burst, never a traceback)."""

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger

from siprecd.interfaces import StorageUnavailable
from siprecd.outage import OutageLog
from siprecd.storage.sqlite import SqliteStorage
from siprecd.testing.doubles import HeldCallListener
from test_siprec_server import Harness


def test_one_warning_then_a_summary_then_one_line_when_back():
    clock = Clock()
    events = []
    outage = OutageLog(clock, Logger(observer=events.append), "postgresql storage", every=30)
    for i in range(100):
        outage.failed(f"connection refused #{i}", retry_in=0.5)
        clock.advance(0.5)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2        # the first failure, one summary at 30 s
    assert "retrying in 0.5s" in warnings[0]["log_format"].format(**warnings[0]) \
        or warnings[0]["retry"] == "; retrying in 0.5s"
    assert warnings[1]["count"] >= 60
    outage.succeeded()
    assert events[-1]["log_level"] == LogLevel.info and events[-1]["count"] == 100
    clock.advance(120)
    assert len(events) == 3
    outage.failed("again")
    assert len(events) == 4 and outage.outages == 2


@pytest_twisted.ensureDeferred
async def test_storage_logs_an_outage_once_not_per_operation(tmp_path, monkeypatch):
    storage = SqliteStorage(reactor, tmp_path / "siprecd.sqlite")
    await storage.open()
    events = []
    storage.outage.log = Logger(observer=events.append)
    try:
        real = storage._writer.runInteraction

        def down(*args, **kw):
            return defer.fail(StorageUnavailable("sqlite storage at /x: database is locked"))

        monkeypatch.setattr(storage._writer, "runInteraction", down)
        for i in range(40):
            try:
                await storage.end_call(f"g{i}", "test")
            except StorageUnavailable:
                pass
        assert [e["log_level"] for e in events] == [LogLevel.warn]
        monkeypatch.setattr(storage._writer, "runInteraction", real)
        await storage.end_call("g-back", "test")
        assert [e["log_level"] for e in events] == [LogLevel.warn, LogLevel.info]
        assert events[1]["count"] == 40
    finally:
        await storage.close()


class FailingStore(HeldCallListener):
    """TEST DOUBLE listener whose storage is down: every offered call fails."""

    def call_offered(self, session):
        return defer.fail(StorageUnavailable("postgresql storage at host=db port=5432: down"))


def test_invites_refused_for_an_outage_are_a_warning_per_burst_no_traceback(monkeypatch):
    from siprecd.siprec.server import RecordingServer

    events = []
    monkeypatch.setattr(RecordingServer, "log", Logger(observer=events.append))
    h = Harness(listener=FailingStore())
    h.server._cannot_record.log = RecordingServer.log
    statuses = []
    for i in range(30):
        statuses.append(h.invite(call_key=f"out{i}")[1][-1].status)
        h.clock.advance(1.0)   # less than the burst's quiet time
    assert statuses == [503] * 30
    levels = [e["log_level"] for e in events]
    assert LogLevel.critical not in levels and LogLevel.error not in levels
    assert not [e for e in events if e.get("log_failure") is not None]
    assert levels.count(LogLevel.warn) == 1, [e["log_format"] for e in events]
    h.clock.advance(60)
    assert [e["log_level"] for e in events].count(LogLevel.warn) == 2
