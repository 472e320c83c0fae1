"""The call registry and the listener fan-out."""

from twisted.internet import defer
from zope.interface.verify import verifyObject

from siprecd.calls import CallListeners, CallRegistry
from siprecd.interfaces import ICallListener
from siprecd.testing.doubles import HeldCallListener


class Broken(CallRegistry):
    """Test double: a listener whose every call raises."""

    def call_offered(self, session):
        raise RuntimeError("storage is down")

    def call_updated(self, session):
        raise RuntimeError("boom")


class Session:
    """Test double for a RecordingSession: just what the registry reads."""

    class guid:
        value = "00002542391662063156"

    call_id = "c1"


def test_fan_out_waits_for_every_listener():
    first, second = HeldCallListener(), HeldCallListener()
    both = CallListeners(first, second)
    verifyObject(ICallListener, both)
    d = both.call_offered(Session)
    first.held[0].callback(None)
    assert not d.called
    second.held[0].callback(None)
    assert d.called


def test_a_failing_listener_fails_the_offer_with_its_own_error():
    results = []
    CallListeners(CallRegistry(), Broken()).call_offered(Session).addErrback(results.append)
    assert results and results[0].check(RuntimeError)
    assert "storage is down" in str(results[0].value)


def test_notifications_go_on_after_an_error():
    registry = CallRegistry()
    registry.call_offered(Session)
    fan = CallListeners(Broken(), registry)
    fan.call_updated(Session)
    fan.call_ended(Session, "bye")
    assert len(registry) == 0 and registry.ended == 1
