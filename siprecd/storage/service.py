"""Storage as the first stage of the daemon: open, migrate, purge, close.

``startService`` opens the backend and applies pending migrations; its
Deferred fails with one clear line when that is impossible, which the
root service turns into a fatal error (exit status 1) before anything
listens. Retention then runs every ``retention.purge_interval`` on the
injected clock, in batches of ``retention.batch_size``, by one node at a
time (a lease in the database).

On SIGTERM, storage keeps taking writes while the other stages drain
(their last utterances must still be stored); only the purge timer stops.
Storage is stopped last, and closing waits for every write in flight.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import implementer

from siprecd.interfaces import IDrainable
from siprecd.storage.backends import create_storage

__all__ = ["StorageService"]

_LEASE = "retention"


@implementer(IDrainable)
class StorageService(service.Service):
    log = Logger()
    name = "storage"

    def __init__(self, storage, clock, node, retention=7 * 86400.0, purge_interval=600.0,
                 batch_size=500, local_purges=()):
        self.storage = storage
        self.clock = clock
        self.node = node
        self.retention = retention
        self.purge_interval = purge_interval
        self.batch_size = batch_size
        self._loop = None
        self._purging = None
        # More purges run on every tick on EVERY node (files kept beside
        # the database, e.g. recordings): ``purge(now, retention)`` -> Deferred.
        self.local_purges = tuple(local_purges)
        self._stopping = False

    @classmethod
    def from_config(cls, config, reactor, local_purges=()):
        """Raises ConfigError (``storage.backend``) for an unknown backend."""
        r = config.retention
        return cls(create_storage(config, reactor), reactor, config.node.name,
                   r.transcripts, r.purge_interval, r.batch_size, local_purges=local_purges)

    def startService(self):
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    async def _start(self):
        version = await self.storage.open()
        self.log.info(
            "storage: {backend} at {location}, schema version {version}",
            backend=self.storage.name, location=self.storage.location, version=version,
        )
        self._say_encryption()
        if self._stopping:
            return
        self._loop = task.LoopingCall(self.purge)
        self._loop.clock = self.clock
        self._loop.start(self.purge_interval, now=True)

    def _say_encryption(self):
        keyring = getattr(self.storage, "keyring", None)
        if keyring is None:
            self.log.warn(
                "storage: no encryption key (storage.encryption): the unredacted text of "
                "calls that ask for it (redactionOutput unredacted or "
                "redacted_and_unredacted) and consented recordings are stored in plain form")
        else:
            self.log.info(
                "storage: unredacted text and recordings are encrypted at rest with key "
                "{key_id} ({count} key(s) configured)", key_id=keyring.primary_id,
                count=len(keyring.ids))

    def purge(self):
        """Purge everything expired, batch after batch; fires with the
        number of messages purged. Failures are logged, never raised: the
        next tick tries again."""
        running = self._purging
        if running is None:
            running = self._purging = defer.ensureDeferred(self._purge())
            running.addBoth(self._purged)
        return _share(running)

    def _purged(self, result):
        self._purging = None
        return result

    async def _purge(self):
        for purge in self.local_purges:
            try:
                await purge(self.clock.seconds(), self.retention)
            except Exception:
                self.log.failure("retention: purging local files failed")
        messages, calls = 0, 0
        try:
            ttl = int(self.purge_interval * 2000)
            if not await self.storage.try_lease(_LEASE, self.node, ttl):
                return 0
            while not self._stopping:
                now = int(self.clock.seconds() * 1000)
                result = await self.storage.purge_expired(
                    now, int(self.retention * 1000), self.batch_size
                )
                if not result:
                    break
                messages += result.messages
                calls += len(result.guids)
        except Exception:
            self.log.failure(
                "retention: purge failed; trying again in {interval}s",
                interval=self.purge_interval,
            )
        if messages or calls:
            self.log.info(
                "retention: purged {calls} calls and {messages} messages that ended more "
                "than {retention}s ago",
                calls=calls, messages=messages, retention=self.retention,
            )
        return messages

    # IDrainable ---------------------------------------------------------------

    def stop_accepting(self):
        # Writes are still accepted: draining stages store their last work.
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def drain(self):
        pending = [self.storage.drain()]
        if self._purging is not None:
            pending.append(_share(self._purging))
        return defer.DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def stopService(self):
        service.Service.stopService(self)
        self.stop_accepting()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self._purging is not None:
            await _share(self._purging)
        await self.storage.close()
        self.log.info("storage: closed")


def _share(d):
    """A Deferred with *d*'s result, leaving *d*'s own result alone (the
    LoopingCall and other waiters see it too)."""
    shared = defer.Deferred()

    def tell(result):
        if isinstance(result, failure.Failure):
            shared.errback(result)
        else:
            shared.callback(result)
        return result

    d.addBoth(tell)
    return shared
