"""The monotonic clock that goes with a reactor clock.

Twisted keeps its timers on the wall clock (``time.time()``), so a step of
the system clock (NTP) makes them fire early or late. Code that must not
take a step for elapsed time measures on a monotonic clock instead: the
system's for a real reactor, the clock itself for a test's ``task.Clock``
(which has no steps unless the test makes them).
"""

import time

__all__ = ["monotonic_for"]


def monotonic_for(clock):
    from twisted.internet.interfaces import IReactorCore

    return time.monotonic if IReactorCore.providedBy(clock) else clock.seconds
