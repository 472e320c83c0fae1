"""What /v1/health knows of storage: a cheap, bounded, briefly cached check.

A health check that says SUCCESS while every message and new call is
refused for want of the database is worse than none: the load balancer
keeps sending work to a node that cannot keep it. :class:`StorageProbe`
runs ``IStorage.ping`` (one trivial query) at most every ``ttl`` seconds,
gives up on it after ``timeout`` seconds, and lets any number of health
requests share one check in flight.
"""

from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["StorageProbe"]


class StorageProbe:
    log = Logger()

    def __init__(self, storage, clock, ttl=5.0, timeout=2.0):
        self.storage = storage
        self.clock = clock
        self.ttl = ttl
        self.timeout = timeout
        self._result = None          # (ok, checked at)
        self._checking = None        # Deferred of the check in flight
        self._waiters = []

    def check(self):
        """A Deferred firing with True when storage answered lately."""
        now = self.clock.seconds()
        if self._result is not None and now - self._result[1] < self.ttl:
            return defer.succeed(self._result[0])
        d = defer.Deferred()
        self._waiters.append(d)
        if self._checking is None:
            self._checking = defer.maybeDeferred(self.storage.ping)
            self._checking.addTimeout(self.timeout, self.clock)
            self._checking.addCallbacks(lambda _: True, lambda _: False)
            self._checking.addCallback(self._checked)
        return d

    def _checked(self, ok):
        self._checking = None
        self._result = (ok, self.clock.seconds())
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)
