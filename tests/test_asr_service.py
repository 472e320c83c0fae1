"""The ASR stage of the daemon: it never holds start-up up, reports
readiness while the backend starts, says why when it cannot, and stops
the backend."""

import pytest
from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from siprecd import config as configmod
from siprecd.asr import AsrService
from siprecd.asr.vosk import VoskBackend
from siprecd.service import Readiness, SiprecdService
from siprecd.structure import ConfigError
from siprecd.testing.asr import FakeAsrBackend


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def critical_lines(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.critical]


def test_start_returns_at_once_and_readiness_waits_for_the_backend():
    readiness = Readiness()
    backend = FakeAsrBackend(hold_start=True)
    asr = AsrService(backend, readiness)
    assert asr.startService() is None
    assert backend.started
    assert readiness.pending() == {"asr": "starting the fake ASR backend"}
    backend.starting.callback(None)
    assert readiness.ready and backend.ready


def test_a_backend_that_cannot_start_keeps_the_node_unready_and_says_why(logged):
    readiness = Readiness()
    backend = FakeAsrBackend(start_error=ConfigError("no Vosk model at /m", "asr.models.en-us"))
    asr = AsrService(backend, readiness)
    asr.startService()
    assert asr.running
    assert readiness.pending() == {
        "asr": "speech recognition unavailable: asr.models.en-us: no Vosk model at /m"}
    [line] = critical_lines(logged)
    assert line.startswith(
        "asr: the fake backend could not start: asr.models.en-us: no Vosk model at /m")
    assert asr.error == "asr.models.en-us: no Vosk model at /m"


def test_stopping_stops_the_backend_and_a_start_cut_short_is_not_an_error(logged):
    readiness = Readiness()
    backend = FakeAsrBackend(hold_start=True)
    asr = AsrService(backend, readiness)
    asr.startService()
    d = asr.stopService()
    assert d.called and backend.stopped
    backend.starting.errback(RuntimeError("stopped while loading"))
    assert critical_lines(logged) == []


def test_from_config_makes_the_configured_backend():
    config = configmod.from_dict({"asr": {"models_dir": "/srv/vosk"}})
    asr = AsrService.from_config(config, MemoryReactorClock(), Readiness())
    assert isinstance(asr.backend, VoskBackend) and asr.name == "asr"
    with pytest.raises(ConfigError, match="^asr.backend: unknown ASR backend 'nope'"):
        AsrService.from_config(configmod.from_dict({"asr": {"backend": "nope"}}),
                               MemoryReactorClock(), Readiness())


class Stage(service.Service):
    def __init__(self, name, journal):
        self.name = name
        self.journal = journal

    def startService(self):
        service.Service.startService(self)
        self.journal.append(self.name)
        return defer.succeed(None)


def test_in_the_daemon_the_next_stages_start_while_the_model_loads():
    reactor = MemoryReactorClock()
    reactor.running = True
    root = SiprecdService(configmod.from_dict({}), reactor)
    journal = []
    backend = FakeAsrBackend(hold_start=True)
    Stage("storage", journal).setServiceParent(root)
    AsrService(backend, root.readiness).setServiceParent(root)
    Stage("sip", journal).setServiceParent(root)
    root.startService()
    assert journal == ["storage", "sip"]
    assert root.started.called
    assert root.readiness.pending() == {"asr": "starting the fake ASR backend"}
    backend.starting.callback(None)
    assert root.readiness.ready
