"""The daily build of the utterances feed, as a Twisted service.

Every day at ``export.at`` (UTC) the previous UTC day is built. When
several nodes share one database, only the node that holds the ``export``
lease builds (the lease is taken or renewed at each build and lasts
:data:`LEASE_TTL`: if its holder dies, another node takes over the next
day); the run record in storage (``start_export_run``) keeps two builds
of one day from overlapping in any case.

At start, if the time of today's build has passed and yesterday has no
successful run, it is built at once (a node that was down at 02:00 catches
up), once. A failed build is tried again after :data:`RETRY_DELAY`, at
most :data:`RETRIES` times, then waits for the next day (or the CLI).
Nothing here ever raises into the reactor: failures are logged.

One log line per run: ``export: utterances 2022-06-27: 10000 rows, 48
files in 1.2s`` with the stable keys ``feed``, ``day``, ``rows``,
``files``, ``seconds`` (and ``error``, ``attempt`` on failure).

Time comes from the injected clock (``task.Clock`` in tests); file work
runs on the reactor's thread pool (see :mod:`siprecd.export.build`).
"""

import datetime

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from siprecd.export.build import BuildStopped, ExportBusy, Exporter
from siprecd.export.feed import FEED
from siprecd.interfaces import StorageError

__all__ = ["ExportService", "next_build_time", "LEASE", "LEASE_TTL", "RETRY_DELAY", "RETRIES"]

LEASE = "export"
# Longer than nodes' clocks disagree and shorter than a day.
LEASE_TTL = 3600.0
RETRY_DELAY = 900.0
RETRIES = 3
_DAY = datetime.timedelta(days=1)


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _at_on(day, at):
    """UNIX seconds of "HH:MM" UTC on *day*."""
    hours, minutes = (int(x) for x in at.split(":"))
    return datetime.datetime.combine(
        day, datetime.time(hours, minutes), datetime.UTC).timestamp()


def next_build_time(now, at):
    """The first ``at`` ("HH:MM" UTC) strictly after *now* (UNIX seconds),
    in UNIX seconds."""
    today = _at_on(_utc(now).date(), at)
    return today if today > now else today + _DAY.total_seconds()


class ExportService(service.Service):
    log = Logger()
    name = "export"

    def __init__(self, exporter, clock, at="02:00", enabled=True, retry_delay=RETRY_DELAY,
                 retries=RETRIES, lease_ttl=LEASE_TTL):
        self.exporter = exporter
        self.storage = exporter.storage
        self.node = exporter.node
        self.clock = clock
        self.at = at
        self.enabled = enabled
        self.retry_delay = retry_delay
        self.retries = retries
        self.lease_ttl = lease_ttl
        self._daily = None
        self._retries = {}      # day -> IDelayedCall
        self._building = None   # Deferred of the build in progress
        self._pending = set()   # builds and catch-ups not finished yet
        self._stopping = False

    @classmethod
    def from_config(cls, config, storage, reactor):
        exporter = Exporter.from_config(config, storage, reactor)
        e = config.export
        return cls(exporter, reactor, at=e.at, enabled=e.enabled)

    # Life cycle -----------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self._stopping = False
        if not self.enabled:
            self.log.info("export: daily build disabled (export.enabled is false)")
            return
        self._schedule()
        # In the background: start-up does not wait for a catch-up build.
        self.catch_up()

    def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        for call in [self._daily, *self._retries.values()]:
            if call is not None and call.active():
                call.cancel()
        self._daily = None
        self._retries.clear()
        return self.when_idle()

    def when_idle(self):
        """A Deferred that fires (with None) once no build or catch-up is
        in progress (including builds queued behind them)."""
        return defer.ensureDeferred(self._idle())

    async def _idle(self):
        while self._pending:
            await defer.DeferredList(list(self._pending), consumeErrors=True)

    def _track(self, d):
        self._pending.add(d)

        def untrack(result):
            self._pending.discard(d)
            return result

        d.addBoth(untrack)
        return d

    @property
    def next_build(self):
        """When the next daily build is due (UNIX seconds), or None."""
        return self._daily.getTime() if self._daily is not None and self._daily.active() else None

    # Scheduling -------------------------------------------------------------------

    def _schedule(self):
        due = next_build_time(self.clock.seconds(), self.at)
        self._daily = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick, due)

    def _tick(self, due):
        self._daily = None
        if self._stopping:
            return
        self._schedule()
        self.build((_utc(due).date() - _DAY).isoformat())

    def catch_up(self):
        """Build yesterday now if today's build time has passed and
        yesterday has no successful run. Fires when done (never fails)."""
        return self._track(defer.ensureDeferred(self._catch_up()))

    async def _catch_up(self):
        now = self.clock.seconds()
        today = _utc(now).date()
        if now < _at_on(today, self.at):
            return None
        day = (today - _DAY).isoformat()
        try:
            runs = await self.storage.export_runs(feed=FEED, day=day, limit=20)
        except Exception as e:
            self.log.error("export: cannot tell whether {feed} {day} was built: {error}",
                           feed=FEED, day=day, error=str(e) or type(e).__name__)
            return None
        if any(r.state == "done" for r in runs):
            return None
        self.log.info("export: {feed} {day} has not been built; building it now",
                      feed=FEED, day=day)
        return await self.build(day)

    # Building ---------------------------------------------------------------------

    def build(self, day, attempt=1):
        """Build *day* if this node holds the lease; fires with the
        BuildResult, or None when another node builds, a run is already
        going, or it failed (which is logged, and retried later)."""
        if self._building is not None:
            # One build at a time; this one's turn comes after.
            queued = defer.Deferred()
            self._building.addBoth(lambda result: (queued.callback(None), result)[1])
            return self._track(queued.addCallback(lambda _: self.build(day, attempt)))
        d = self._building = self._track(defer.ensureDeferred(self._build(day, attempt)))

        def done(result):
            if self._building is d:
                self._building = None
            return result

        return d.addBoth(done)

    async def _build(self, day, attempt):
        if self._stopping:
            return None
        retry = self._retries.pop(day, None)
        if retry is not None and retry.active():
            retry.cancel()  # this build is that retry's job
        now_ms = int(self.clock.seconds() * 1000)
        try:
            if not await self.storage.try_lease(LEASE, self.node, int(self.lease_ttl * 1000),
                                                now=now_ms):
                self.log.debug("export: {feed} {day}: another node holds the export lease",
                               feed=FEED, day=day)
                return None
            result = await self.exporter.export(day, should_stop=lambda: self._stopping)
        except ExportBusy as e:
            self.log.info("export: {feed} {day}: skipped: {reason}", feed=FEED, day=day,
                          reason=str(e))
            return None
        except BuildStopped:
            self.log.info("export: {feed} {day}: stopped by shutdown; nothing published",
                          feed=FEED, day=day)
            return None
        except Exception as e:
            self._failed(day, attempt, e)
            return None
        self.log.info(
            "export: {feed} {day}: {rows} rows, {files} files in {seconds:.1f}s",
            feed=FEED, day=day, rows=result.rows, files=len(result.files),
            seconds=result.seconds, removed=len(result.removed), node=self.node,
        )
        return result

    def _failed(self, day, attempt, error):
        again = attempt <= self.retries and not self._stopping
        what = f"trying again in {self.retry_delay:g}s" if again else "giving up until tomorrow"
        if isinstance(error, (StorageError, OSError)):
            self.log.error(
                "export: {feed} {day} failed (attempt {attempt}): {error}; {then}",
                feed=FEED, day=day, attempt=attempt, error=str(error) or type(error).__name__,
                then=what,
            )
        else:
            self.log.failure(
                "export: {feed} {day} failed (attempt {attempt}); {then}",
                feed=FEED, day=day, attempt=attempt, then=what,
            )
        if again:
            self._retries[day] = self.clock.callLater(
                self.retry_delay, self.build, day, attempt + 1)
