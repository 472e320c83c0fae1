"""Admission of new SIP work: answers under overload instead of falling over.

:class:`Admission` decides, before any transaction or session state is
made, whether a new (out-of-dialog) INVITE or OPTIONS is taken:

- a token bucket per source address (``sip.rate_limit``; the API's
  :class:`~siprecd.ratelimit.RateLimiter`, its table bounded here
  against floods from many addresses), skipped for ``sip.trusted_sources``
  (the SBCs);
- for INVITEs, ``sip.max_calls`` calls and ``media.max_streams`` streams in
  progress (the stream count of the offer itself is checked once its SDP is
  read, see :meth:`over_streams`).

A refusal is a 503 with ``Retry-After`` and a ``Warning`` saying which
limit, sent without a transaction (RFC 3261 §8.2.7: a stateless answer
costs no memory and is never retransmitted; a retransmitted request is
answered again). Requests inside dialogs (ACK, BYE, re-INVITE, UPDATE...),
CANCEL and responses never come here: calls in progress are unaffected.

Refusals are counted (``counters``, for metrics and ``stats()``) and
logged once per burst: the first refusal at once, then one summary when
refusals have stopped for ``quiet`` seconds. Time comes from the injected
clock.

:class:`ConnectionLimits` does the same one level down, for SIP over TCP
and TLS: how many connections one source address may hold
(``sip.connections.per_source``, trusted sources exempt) and how many the
process holds in all (``sip.connections.max``, kept below the file
limit). A connection over a limit is closed as soon as it is accepted,
before anything is read from it.
"""

import collections
import ipaddress

from twisted.logger import Logger

from siprecd.ratelimit import RateLimiter
from siprecd.sip.message import make_response, new_tag

__all__ = ["Admission", "BurstLog", "ConnectionLimits", "SourceRateLimiter", "TrustedSources"]

# Seconds a well-behaved SBC is asked to wait when the node is full.
FULL_RETRY_AFTER = 30
_MAX_SOURCES = 50_000


class SourceRateLimiter(RateLimiter):
    """Token buckets per source address, with a bounded table: a flood
    from many (possibly spoofed) addresses forgets the oldest buckets
    rather than growing without end."""

    def _forget_full(self, now):
        super()._forget_full(now)
        if len(self._buckets) > self.max_keys:
            oldest = sorted(self._buckets.items(), key=lambda item: item[1][1])
            for key, _ in oldest[:len(oldest) - self.max_keys // 2]:
                del self._buckets[key]


class TrustedSources:
    """``sip.trusted_sources``: addresses and CIDR networks (the SBCs) that
    no per-source limit applies to. ``host in trusted`` answers."""

    def __init__(self, networks=()):
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in networks)
        self._cache = {}

    def __contains__(self, host):
        if not self.networks:
            return False
        found = self._cache.get(host)
        if found is None:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
                found = any(address in net for net in self.networks)
            except ValueError:
                found = False
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[host] = found
        return found


class BurstLog:
    """One warning when refusals start, one summary when they stop.

    *what* names the limit; *subject* what is refused (new SIP requests,
    SIP connections...), for the two lines."""

    def __init__(self, clock, log, what, quiet=10.0, subject="new SIP requests",
                 answer=" with 503", kind="overload"):
        self.kind = kind
        self.clock = clock
        self.log = log
        self.what = what
        self.quiet = quiet
        self.subject = subject
        self.answer = answer
        self._count = 0
        self._started = self._last = None
        self._sources = collections.Counter()
        self._timer = None

    @property
    def in_burst(self):
        return self._count > 0

    def refused(self, source=None, detail=""):
        now = self.clock.seconds()
        if self._count == 0:
            self._started = now
            self.log.warn(
                self.kind + ": refusing {subject}{answer} ({what}{detail}); more "
                "refusals are counted and summed up when they stop",
                subject=self.subject, answer=self.answer, what=self.what,
                detail=f": {detail}" if detail else "", source=source,
            )
            self._timer = self.clock.callLater(self.quiet, self._check)
        self._count += 1
        self._last = now
        if source is not None and (source in self._sources or len(self._sources) < 10_000):
            self._sources[source] += 1

    def _check(self):
        self._timer = None
        idle = self.clock.seconds() - self._last
        if idle < self.quiet:
            self._timer = self.clock.callLater(self.quiet - idle, self._check)
            return
        self.flush()

    def flush(self):
        """Log the summary of the burst in progress, if any."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._count:
            return
        top = ", ".join(f"{s} ({n})" for s, n in self._sources.most_common(3))
        self.log.warn(
            self.kind + " over: {count} {subject} refused{answer} ({what}) in "
            "{seconds:.1f}s{sources}",
            count=self._count, subject=self.subject, answer=self.answer, what=self.what,
            seconds=self._last - self._started,
            sources=f" from {len(self._sources)} source(s): {top}" if top else "",
        )
        self._count = 0
        self._sources.clear()


class Admission:
    """See the module docstring. *rate* and *burst* None: no rate limit."""

    log = Logger()

    def __init__(self, clock, *, max_calls, max_streams, rate=None, burst=None, trusted=(),
                 quiet=10.0):
        self.clock = clock
        self.max_calls = max_calls
        self.max_streams = max_streams
        self.limiter = (SourceRateLimiter(clock, rate, burst, max_keys=_MAX_SOURCES)
                        if rate is not None else None)
        self.trusted = TrustedSources(trusted)
        self.counters = collections.Counter(rate_limited=0, max_calls=0, max_streams=0)
        self._logs = {
            "rate_limited": BurstLog(clock, self.log, "sip.rate_limit per source", quiet),
            "max_calls": BurstLog(clock, self.log, f"sip.max_calls {max_calls}", quiet),
            "max_streams": BurstLog(clock, self.log, f"media.max_streams {max_streams}", quiet),
        }

    @classmethod
    def from_config(cls, config, clock):
        limit = config.sip.rate_limit
        return cls(clock, max_calls=config.sip.max_calls, max_streams=config.media.max_streams,
                   rate=limit.requests_per_second if limit else None,
                   burst=limit.burst if limit else None, trusted=config.sip.trusted_sources)

    def is_trusted(self, host):
        return host in self.trusted

    def check(self, request, host, calls, streams):
        """A 503 for a new INVITE/OPTIONS from *host* that must be refused,
        else None. *calls* and *streams*: how many are in progress."""
        if self.limiter is not None and not self.is_trusted(host):
            wait = self.limiter.take(host)
            if wait:
                return self._refuse(request, "rate_limited", "Rate Limited",
                                    RateLimiter.retry_after(wait), host,
                                    "too many new requests from this address")
        if request.method != "INVITE":
            return None
        if calls >= self.max_calls:
            return self._refuse(request, "max_calls", "Too Many Calls", FULL_RETRY_AFTER, host,
                                f"at the limit of {self.max_calls} calls")
        if streams >= self.max_streams:
            return self._refuse(request, "max_streams", "Too Many Streams", FULL_RETRY_AFTER,
                                host, f"at the limit of {self.max_streams} streams")
        return None

    def over_streams(self, request, host, streams, offered):
        """A 503 when *offered* more streams would pass ``media.max_streams``."""
        if streams + offered > self.max_streams:
            return self._refuse(request, "max_streams", "Too Many Streams", FULL_RETRY_AFTER,
                                host, f"{offered} more would pass the limit of "
                                      f"{self.max_streams} streams")
        return None

    def _refuse(self, request, counter, reason, retry_after, host, warning):
        self.counters[counter] += 1
        self._logs[counter].refused(host)
        return make_response(request, 503, reason, to_tag=new_tag(), headers=[
            ("Retry-After", str(retry_after)), ("Warning", f'399 siprecd "{warning}"')])

    def flush(self):
        """Log the summaries of bursts in progress (at shutdown)."""
        for burst in self._logs.values():
            burst.flush()


class ConnectionLimits:
    """Which new SIP stream connections (TCP, TLS) are taken; see the
    module docstring.

    *max_connections* caps every connection of the process; connections
    from untrusted sources are refused already at *max_connections* less
    a tenth (at least one), so that the SBCs (*trusted*) still get in while
    a flood holds the rest. *per_source* caps the connections of one
    untrusted address (None: no cap)."""

    log = Logger()

    def __init__(self, clock, *, max_connections, per_source=None, trusted=(), quiet=10.0):
        self.clock = clock
        self.max_connections = max_connections
        self.per_source = per_source
        self.untrusted_max = max(1, max_connections - max(1, max_connections // 10))
        self.trusted = trusted if isinstance(trusted, TrustedSources) else TrustedSources(trusted)
        self.open = 0
        self._by_source = collections.Counter()
        self.counters = collections.Counter(
            connections_refused_per_source=0, connections_refused_total=0,
            message_timeouts=0, idle_timeouts=0)
        self._logs = {
            "per_source": BurstLog(clock, self.log, f"sip.connections.per_source {per_source}",
                                   quiet, subject="SIP connections", answer=""),
            "total": BurstLog(clock, self.log, f"sip.connections.max {max_connections}", quiet,
                              subject="SIP connections", answer=""),
        }

    def admit(self, host):
        """True when a connection from *host* may be kept (it is then
        counted until :meth:`closed`); False when it must be closed."""
        trusted = host in self.trusted
        if self.open >= (self.max_connections if trusted else self.untrusted_max):
            self.counters["connections_refused_total"] += 1
            self._logs["total"].refused(host, f"{self.open} open")
            return False
        if (not trusted and self.per_source is not None
                and self._by_source[host] >= self.per_source):
            self.counters["connections_refused_per_source"] += 1
            self._logs["per_source"].refused(host)
            return False
        self.open += 1
        self._by_source[host] += 1
        return True

    def closed(self, host):
        """A connection :meth:`admit` took is closed."""
        self.open -= 1
        left = self._by_source[host] - 1
        if left > 0:
            self._by_source[host] = left
        else:
            del self._by_source[host]

    def by_source(self, host):
        return self._by_source.get(host, 0)

    def flush(self):
        for burst in self._logs.values():
            burst.flush()
