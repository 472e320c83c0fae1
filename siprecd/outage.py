"""Logging an outage of something we depend on (the database) once, not
once per failed operation.

:class:`OutageLog` logs one warning when failures start, then a summary
every ``every`` seconds while they go on (how many failed, for how long,
the last error), and one line when the next operation succeeds. During an
outage every call, heartbeat and delivery fails; a line for each would
bury the one that matters. Time comes from the injected clock.
"""

__all__ = ["OutageLog"]


class OutageLog:
    """*what* is unavailable (*state*), still so (*ongoing*), then back;
    the three words can be changed for things that fail rather than go."""

    def __init__(self, clock, log, what, every=60.0, state="unavailable",
                 ongoing="still unavailable", back="available again"):
        self.clock = clock
        self.log = log
        self.what = what
        self.every = every
        self.state, self.ongoing, self.back = state, ongoing, back
        self.failures = 0          # since the outage started
        self.outages = 0           # outages seen so far
        self._since = None
        self._last_error = None
        self._summary = None

    @property
    def down(self):
        return self._since is not None

    def failed(self, error, retry_in=None):
        """An operation failed with *error* (text: no secrets in it)."""
        self.failures += 1
        self._last_error = error
        if self._since is not None:
            return
        self._since = self.clock.seconds()
        self.outages += 1
        self.log.warn(
            "{what} {state}: {error}{retry}; further failures are summed up every "
            "{every:g}s until it is back", what=self.what, state=self.state, error=error,
            retry=f"; retrying in {retry_in:g}s" if retry_in is not None else "",
            every=self.every)
        self._summary = self.clock.callLater(self.every, self._summarise)

    def _summarise(self):
        self._summary = None
        if self._since is None:
            return
        self.log.warn(
            "{what} {ongoing} after {seconds:.0f}s: {count} operations failed "
            "(last: {error})", what=self.what, ongoing=self.ongoing,
            seconds=self.clock.seconds() - self._since,
            count=self.failures, error=self._last_error)
        self._summary = self.clock.callLater(self.every, self._summarise)

    def succeeded(self):
        """An operation succeeded: the outage, if any, is over."""
        if self._since is None:
            return
        self.log.info(
            "{what} {back} after {seconds:.1f}s; {count} operations failed meanwhile",
            what=self.what, back=self.back, seconds=self.clock.seconds() - self._since, count=self.failures)
        self.stop()

    def stop(self):
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        self._since = None
        self.failures = 0
