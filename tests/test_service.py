"""The root service: ordered start, fatal failures, drain within the grace period."""

import pytest
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from siprecd import config
from siprecd.interfaces import IDrainable
from siprecd.service import ListeningPort, SiprecdService


class RecordingStage(service.Service):
    """Test double for a start-up stage whose start finishes when told to."""

    def __init__(self, name, journal):
        self.name = name
        self.journal = journal
        self.ready = defer.Deferred()

    def startService(self):
        service.Service.startService(self)
        self.journal.append(f"start {self.name}")
        return self.ready

    def stopService(self):
        service.Service.stopService(self)
        self.journal.append(f"stop {self.name}")


@implementer(IDrainable)
class DrainableStage(RecordingStage):
    """Test double for a service with work in flight."""

    def __init__(self, name, journal):
        super().__init__(name, journal)
        self.ready = defer.succeed(None)
        self.drained = defer.Deferred()

    def stop_accepting(self):
        self.journal.append(f"stop accepting {self.name}")

    def drain(self):
        self.journal.append(f"drain {self.name}")
        return self.drained


def make_root(grace=10):
    reactor = MemoryReactorClock()
    reactor.running = True
    cfg = config.from_dict({"node": {"shutdown_grace": grace, "id": "test-node"}})
    return SiprecdService(cfg, reactor), reactor


def test_stages_start_one_after_another():
    root, _ = make_root()
    journal = []
    storage, asr, sip = (RecordingStage(n, journal) for n in ("storage", "asr", "sip"))
    for s in (storage, asr, sip):
        s.setServiceParent(root)
    root.startService()
    assert journal == ["start storage"]
    assert not root.readiness.ready
    storage.ready.callback(None)
    assert journal == ["start storage", "start asr"]
    asr.ready.callback(None)
    assert journal == ["start storage", "start asr", "start sip"]
    assert not root.readiness.ready
    sip.ready.callback(None)
    assert root.readiness.ready
    assert root.started.called


def test_a_failing_stage_stops_the_daemon_with_status_1():
    root, reactor = make_root()
    journal = []
    storage, asr = RecordingStage("storage", journal), RecordingStage("asr", journal)
    storage.setServiceParent(root)
    asr.setServiceParent(root)
    root.startService()
    storage.ready.errback(RuntimeError("database is locked"))
    assert journal == ["start storage"]  # asr never starts
    assert root.exit_code == 1
    assert not root.readiness.ready
    assert reactor.hasStopped
    triggers = reactor.triggers["after"]["shutdown"]
    assert any(t[0] == root._exit_now for t in triggers)


def test_drain_waits_for_work_in_flight_then_stops_in_reverse_order():
    root, reactor = make_root(grace=10)
    journal = []
    first, second = DrainableStage("storage", journal), DrainableStage("pipeline", journal)
    first.setServiceParent(root)
    second.setServiceParent(root)
    root.startService()
    journal.clear()
    stopped = root.stopService()
    assert journal == ["stop accepting storage", "stop accepting pipeline",
                       "drain storage", "drain pipeline"]
    reactor.advance(5)
    first.drained.callback(None)
    assert not stopped.called
    second.drained.callback(None)
    assert stopped.called
    assert journal[-2:] == ["stop pipeline", "stop storage"]
    assert root.readiness.pending() == {"shutdown": "stopping"}


def test_drain_gives_up_after_the_grace_period():
    root, reactor = make_root(grace=3)
    journal = []
    stuck = DrainableStage("webhooks", journal)
    stuck.setServiceParent(root)
    root.startService()
    stopped = root.stopService()
    reactor.advance(2.9)
    assert not stopped.called
    reactor.advance(0.2)
    assert stopped.called
    assert journal[-1] == "stop webhooks"
    assert stuck.drained.called  # cancelled
    stuck.drained.addErrback(lambda f: f.trap(defer.CancelledError))


def test_a_port_that_cannot_be_bound_exits_with_one_line():
    root, _ = make_root()

    def refuse():
        raise error.CannotListenError("127.0.0.1", 5070, OSError(98, "Address already in use"))

    ListeningPort("SIP/TCP", "127.0.0.1", 5070, refuse, "sip.tcp").setServiceParent(root)
    with pytest.raises(SystemExit) as e:
        root.privilegedStartService()
    assert str(e.value) == (
        "siprecd: sip.tcp: cannot listen for SIP/TCP on 127.0.0.1:5070: Address already in use"
    )


def test_listening_ports_stop_accepting_first():
    root, reactor = make_root()
    port = ListeningPort(
        "SIP/TCP", "127.0.0.1", 5070, lambda: reactor.listenTCP(5070, None), "sip.tcp"
    )
    port.setServiceParent(root)
    root.privilegedStartService()
    root.startService()
    assert port.address.port == 5070
    root.stopService()
    assert port.address is None
