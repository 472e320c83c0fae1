"""The webhook stage of the daemon: delivering the durable outbox.

Every stored utterance has one outbox row per webhook target, written in
the same transaction as the message (so nothing is delivered that was not
stored, and nothing stored is forgotten). :class:`WebhookService` turns
those rows into POSTs:

- **What is sent when.** Rows are taken with ``IStorage.claim_due``, which
  hands out at most the oldest open row of each (stream, target): the next
  message of a stream is not even claimable until the one before it is
  delivered or dead-lettered, so order per stream is kept by storage, and
  across nodes. Different streams go in parallel, at most ``concurrency``
  at once; only as many rows are claimed as there are free slots, so a
  claimed row starts at once and its lease only has to cover one attempt.
- **When to look.** ``notify()`` (called by the transcription service for
  each stored utterance) looks at once; each finished delivery looks again
  (its stream's next row may be due); a retry sets a timer for its own due
  time; and a poll every ``poll_interval`` catches the rest (rows of nodes
  that died, rows replayed from the CLI). Looks coalesce: one claim is in
  flight at a time.
- **Leases.** A claim holds a row for ``lease_ms``, longer than the worst
  case of one attempt (token fetch, POST, token refresh after a 401, POST
  again), so a row is never claimed twice while in flight; if this node
  dies its rows become claimable again when the lease runs out. On start
  (and on stop) the node releases its own claims so a restart resumes at
  once.
- **Failures.** See :mod:`siprecd.webhooks.sender` for how an answer is
  classified. Temporary failures wait with exponential backoff and full
  jitter (``backoff_initial`` .. ``backoff_max``) or what Retry-After asks;
  after ``max_attempts`` attempts, or at once for a permanent failure, the
  row is dead-lettered (kept, listed and replayable from the CLI). A
  target answering 410 Gone is disabled (see :mod:`siprecd.webhooks.state`):
  its rows are parked, nothing is lost, until an operator re-enables it.
- **Shutdown.** ``stop_accepting`` stops claiming; ``drain`` fires when the
  deliveries in flight are done (the root gives them
  ``node.shutdown_grace``); ``stopService`` aborts what is left, and
  releases this node's claims so the rows are due again.

Nothing here blocks the reactor (the state file is written on a thread)
and no error escapes: every Deferred ends in an errback that logs.
"""

import collections
import heapq
import json
import random as randommod

import attrs
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.hooks import Hook
from siprecd.interfaces import IDrainable
from siprecd.messages import webhook_payload
from siprecd.webhooks.sender import DELIVERED, GONE, PERMANENT, TargetSender
from siprecd.webhooks.state import StateFileError, TargetStates

__all__ = ["WebhookService", "encode_payload", "LEASE_MARGIN", "CLAIM_BATCH"]

# Added to the worst case of one attempt for the claim lease: the storage
# writes after the POST, and a busy reactor.
LEASE_MARGIN = 30.0
# Looks for due rows asked for within this many seconds share one claim.
CLAIM_BATCH = 0.005
# How long stopService waits for storage writes of finished attempts.
STOP_WAIT = 10.0
_MIN_LEASE = 60.0


def encode_payload(message):
    """The exact bytes POSTed for *message*: serialised once, then signed
    and sent as they are."""
    return json.dumps(webhook_payload(message), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


@attrs.define
class _Disabled:
    since_ms: int
    reason: str
    # True once the state file says so too; a reload of the file may only
    # re-enable a target whose disabling had reached the file.
    persisted: bool = False


@implementer(IDrainable)
class WebhookService(service.Service):
    """Delivers the webhook outbox; see the module docstring.

    *senders*: target name -> :class:`~siprecd.webhooks.sender.TargetSender`;
    *reactor*: for network I/O and threads; *clock*: an ``IReactorTime``
    for every timer and every time written to storage (defaults to the
    reactor; tests pass a ``task.Clock``).

    ``stats`` counts what happened (``delivered``, ``attempts``,
    ``retries``, ``timeouts``, ``possible_duplicates``, ``dead``,
    ``parked``...); ``on_outcome`` listeners are called with ``(item, outcome)``
    once the outcome of an attempt is stored, and with ``(item, None)``
    when a row is parked or dead-lettered without an attempt.
    """

    name = "webhooks"
    log = Logger()

    def __init__(self, storage, senders, node, states, reactor, clock=None, *, concurrency=20,
                 max_attempts=50, backoff_initial=1.0, backoff_max=300.0, poll_interval=2.0,
                 disabled_recheck=3600.0, random=None, on_outcome=()):
        self.storage = storage
        self.senders = dict(senders)
        self.node = node
        self.states = states
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self.poll_interval = poll_interval
        self.disabled_recheck = disabled_recheck
        self.random = random or randommod.Random()
        worst = max((s.worst_case for s in self.senders.values()), default=0.0)
        self.lease_ms = int(max(_MIN_LEASE, worst + LEASE_MARGIN) * 1000)
        self.stats = collections.Counter()
        self.on_outcome = Hook("on_outcome", *on_outcome)
        self._accepting = False
        self._loop = None
        self._claiming = None
        self._pump_call = None
        self._again = False
        self._inflight = {}       # outbox id -> Deferred of its delivery
        self._sending = {}        # outbox id -> Deferred of its HTTP attempt
        self._background = set()  # parking, releasing, disabling
        self._idle_waiters = []
        self._wakeups = []
        self._wakeup = None
        self._wakeup_at = None
        self._disabled = {}
        self._state_mtime = None
        self._file_lock = defer.DeferredLock()
        self._unknown_logged = set()
        self._claim_error_logged = False

    @classmethod
    def from_config(cls, config, storage, reactor, clock=None, on_outcome=()):
        """Build from the ``webhooks`` section; raises ConfigError naming
        the key when a target's TLS files do not load."""
        w = config.webhooks
        clock = clock if clock is not None else reactor
        senders = {
            name: TargetSender.from_config(name, target, reactor, clock, w.concurrency)
            for name, target in w.targets.items()
        }
        return cls(storage, senders, config.node.name, TargetStates.for_config(config), reactor,
                   clock, concurrency=w.concurrency, max_attempts=w.max_attempts,
                   backoff_initial=w.backoff_initial, backoff_max=w.backoff_max,
                   poll_interval=w.poll_interval, disabled_recheck=w.disabled_recheck,
                   on_outcome=on_outcome)

    def _now_ms(self):
        return int(self.clock.seconds() * 1000)

    @property
    def disabled_targets(self):
        return dict(self._disabled)

    @property
    def in_flight(self):
        return len(self._inflight)

    def status(self):
        """A summary for health endpoints and logs (no secrets)."""
        return {
            "inFlight": len(self._inflight),
            "disabledTargets": sorted(self._disabled),
            "delivered": self.stats["delivered"],
            "retries": self.stats["retries"],
            "deadLettered": self.stats["dead"],
            "possibleDuplicates": self.stats["possible_duplicates"],
        }

    # Life cycle ------------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self._accepting = True
        d = defer.ensureDeferred(self._start())
        d.addErrback(lambda f: self.log.failure("webhooks: start-up step failed", f))
        return d

    async def _start(self):
        await self._reload_states(initial=True)
        try:
            released = await self.storage.release_claims(self.node, now=self._now_ms())
        except Exception as e:
            self.log.error("webhooks: cannot release this node's earlier claims ({error}); "
                           "they are retried when their lease runs out", error=str(e))
        else:
            if released:
                self.log.info("webhooks: {count} deliveries this node had in flight before it "
                              "stopped are due again", count=released)
        await self._release_parked()
        if not self._accepting:
            return
        targets = ", ".join(f"{n} ({s.log_url})" for n, s in sorted(self.senders.items()))
        self.log.info("webhooks: delivering to {targets}", targets=targets or "no targets")
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=True).addErrback(
            lambda f: self.log.failure("webhooks: the outbox poll stopped", f))

    def call_event(self, event):
        """A CallEvent (``on_call_event``): when streaming starts, the
        connection to the leg's target is opened ahead of its first
        utterance (see :meth:`TargetSender.open_ahead`); ``stats["opened_ahead"]``
        counts the starts that asked (an idle connection may have been there)."""
        if event.kind != "streaming-started" or not self._accepting:
            return
        sender = self.senders.get(event.webhook_target)
        if sender is not None and event.webhook_target not in self._disabled:
            self.stats["opened_ahead"] += 1
            sender.open_ahead()

    def notify(self, message=None):
        """A message was stored: look at the outbox now instead of at the
        next poll. Cheap and safe to call for every utterance (looks
        coalesce); *message* is not needed, its outbox rows are."""
        self._pump()

    def stop_accepting(self):
        self._accepting = False
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None

    def drain(self):
        if self._idle():
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._idle_waiters.remove(d)
                           if d in self._idle_waiters else None)
        self._idle_waiters.append(d)
        return d

    def stopService(self):
        service.Service.stopService(self)
        d = defer.ensureDeferred(self._stop())
        d.addErrback(lambda f: self.log.failure("webhooks: error while stopping", f))
        return d

    async def _stop(self):
        self.stop_accepting()
        interrupted = len(self._sending)
        for sending in list(self._sending.values()):
            sending.cancel()
        # What is left are storage writes (and state-file writes); a
        # database that does not answer must not hold the daemon's stop.
        idle = self.drain()
        idle.addTimeout(STOP_WAIT, self.reactor)
        try:
            await idle
        except defer.TimeoutError:
            self.log.warn("webhooks: stopping without waiting any longer for {count} storage "
                          "writes", count=len(self._inflight) + len(self._background))
        if interrupted:
            self.log.warn("webhooks: {count} deliveries were cut short by the shutdown; they "
                          "will be sent again", count=interrupted)
        try:
            released = await self.storage.release_claims(self.node, now=self._now_ms())
        except Exception as e:
            self.log.error("webhooks: cannot release this node's claims ({error}); they are "
                           "retried when their lease runs out", error=str(e))
        else:
            if released:
                self.log.info("webhooks: released {count} claimed deliveries", count=released)
        for sender in self.senders.values():
            try:
                await sender.close()
            except Exception:
                self.log.failure("webhooks: closing connections of {target}", target=sender.name)

    def _idle(self):
        return not self._inflight and not self._background and self._claiming is None

    def _check_idle(self):
        if self._idle():
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _track(self, coroutine, what):
        """Run a background job that drain() waits for; log its failure."""
        d = defer.ensureDeferred(coroutine)
        self._background.add(d)

        def done(result):
            self._background.discard(d)
            self._check_idle()
            return result

        d.addErrback(lambda f: self.log.failure("webhooks: {what} failed", f, what=what))
        d.addBoth(done)
        return d

    # Finding work --------------------------------------------------------------------

    def _tick(self):
        d = defer.ensureDeferred(self._poll())
        d.addErrback(lambda f: self.log.failure("webhooks: poll failed", f))
        return d

    async def _poll(self):
        if self.states.mtime() != self._state_mtime:
            await self._reload_states()
            await self._release_parked()
        self._pump()

    def _pump(self):
        """Look for due rows soon: within CLAIM_BATCH seconds, so that a
        burst of notifies and finished deliveries costs one claim
        transaction (a write, with its fsync) rather than one each."""
        if not self._accepting or not self.running or self._pump_call is not None:
            return
        self._pump_call = self.reactor.callLater(CLAIM_BATCH, self._claim)

    def _claim(self):
        """Claim as many due rows as there are free slots (one claim at a
        time; a look asked for meanwhile runs when it is back)."""
        self._pump_call = None
        if not self._accepting or not self.running:
            return
        if self._claiming is not None:
            self._again = True
            return
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            self._again = True  # a finishing delivery looks again
            return
        self._again = False
        d = self._claiming = self.storage.claim_due(self.node, free, now=self._now_ms(),
                                                    lease=self.lease_ms)
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(free,))
        d.addErrback(lambda f: self.log.failure("webhooks: handling claimed rows failed", f))
        d.addBoth(self._claim_finished)

    def _claimed(self, items, asked):
        self._claim_error_logged = False
        if not self._accepting:
            # Stopping: the rows stay claimed and stopService releases them.
            return
        parked, unknown = collections.defaultdict(list), collections.defaultdict(list)
        for item in items:
            if item.target not in self.senders:
                unknown[item.target].append(item)
            elif item.target in self._disabled:
                parked[item.target].append(item)
            else:
                self._start_delivery(item)
        for name, group in parked.items():
            self._track(self._park(name, group), f"parking deliveries of {name}")
        for name, group in unknown.items():
            self._track(self._dead_unknown(name, group), f"dead-lettering rows of {name}")
        if len(items) >= asked:
            self._again = True  # there may be more due

    def _claim_failed(self, f):
        self._again = False
        if not self._claim_error_logged:
            # Once per outage: the poll keeps trying without filling the log.
            self._claim_error_logged = True
            self.log.error("webhooks: cannot claim due deliveries: {error}; trying again at "
                           "the next poll", error=f.getErrorMessage())

    def _claim_finished(self, _):
        self._claiming = None
        if self._again:
            self._pump()
        self._check_idle()

    def _wake_at(self, at_ms):
        heapq.heappush(self._wakeups, at_ms)
        self._arm()

    def _arm(self):
        if not self._wakeups or not self._accepting:
            return
        first = self._wakeups[0]
        if self._wakeup is not None and self._wakeup.active():
            if self._wakeup_at <= first:
                return
            self._wakeup.cancel()
        # 2 ms late on purpose: storage compares whole milliseconds.
        delay = max(0.0, (first - self.clock.seconds() * 1000) / 1000) + 0.002
        self._wakeup_at = first
        self._wakeup = self.clock.callLater(delay, self._woken)

    def _woken(self):
        self._wakeup = None
        now = self._now_ms()
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        self._pump()
        self._arm()

    # Delivering -------------------------------------------------------------------------

    def backoff(self, attempts):
        """Seconds before the next attempt after *attempts* failed ones:
        exponential with full jitter, never below backoff_initial nor
        above backoff_max (jitter spreads out the retries of many streams
        that failed together, so a recovering receiver is not stormed)."""
        cap = min(self.backoff_max, self.backoff_initial * (2 ** min(attempts, 40)))
        return self.random.uniform(self.backoff_initial, max(cap, self.backoff_initial))

    def _start_delivery(self, item):
        d = defer.ensureDeferred(self._deliver(item, self.senders[item.target]))
        self._inflight[item.id] = d
        d.addErrback(lambda f: self.log.failure(
            "webhooks: delivery of outbox row {outbox_id} to {target} failed unexpectedly", f,
            outbox_id=item.id, target=item.target))
        d.addBoth(self._finished, item.id)

    def _finished(self, _, outbox_id):
        self._inflight.pop(outbox_id, None)
        self._pump()
        self._check_idle()

    async def _deliver(self, item, sender):
        message = item.message
        keys = dict(target=item.target, outbox_id=item.id, message_id=message.id,
                    stream_id=message.stream_id, guid=message.guid, sequence=message.sequence,
                    attempt=item.attempts)
        sending = self._sending[item.id] = sender.send(encode_payload(message), message.id)
        try:
            outcome = await sending
        except defer.CancelledError:
            # Shutdown: the row stays claimed; stopService releases it.
            self.stats["interrupted"] += 1
            return
        finally:
            self._sending.pop(item.id, None)
        self.stats["attempts"] += 1
        try:
            await self._record(item, sender, outcome, keys)
        except Exception as e:
            self.log.error(
                "webhooks: the outcome of delivering {message_id} to {target} ({outcome}) "
                "could not be stored: {error}; the row is tried again when its lease runs "
                "out", outcome=outcome.kind, error=str(e), **keys)
        self._observe(item, outcome)

    def _observe(self, item, outcome):
        """Tell the listeners (after storage has the outcome)."""
        self.on_outcome(item, outcome)

    async def _record(self, item, sender, outcome, keys):
        now = self._now_ms()
        if outcome.kind == DELIVERED:
            await self.storage.mark_delivered(item.id, now=now)
            self.stats["delivered"] += 1
            self.log.debug("webhooks: delivered {message_id} (sequence {sequence} of stream "
                           "{stream_id}) to {target} in {elapsed:.3f}s",
                           elapsed=outcome.elapsed, **keys)
            return
        if outcome.timed_out:
            self.stats["timeouts"] += 1
        if outcome.kind == GONE:
            await self._disable(item.target, sender, outcome, now)
            await self._park(item.target, [item])
            return
        if outcome.kind == PERMANENT:
            await self.storage.mark_failed(item.id, now, outcome.error, dead=True)
            self.stats["dead"] += 1
            self.stats["permanent"] += 1
            self.log.error("webhooks: {target} refused {message_id} ({error}); it is "
                           "dead-lettered (replay it with `siprecd webhooks replay`)",
                           error=outcome.error, **keys)
            return
        if item.attempts >= self.max_attempts:
            await self.storage.mark_failed(item.id, now, outcome.error, dead=True)
            self.stats["dead"] += 1
            self.log.error("webhooks: giving up on {message_id} to {target} after {attempt} "
                           "attempts ({error}); it is dead-lettered", error=outcome.error, **keys)
            return
        delay = outcome.retry_after if outcome.retry_after is not None \
            else self.backoff(item.attempts)
        at = now + int(delay * 1000)
        await self.storage.mark_failed(item.id, at, outcome.error)
        self.stats["retries"] += 1
        if outcome.timed_out:
            # The receiver may have it: the retry may be a duplicate.
            self.stats["possible_duplicates"] += 1
        self._wake_at(at)
        self.log.warn("webhooks: delivering {message_id} to {target} failed ({error}); "
                      "attempt {attempt} of {max_attempts}, next in {delay:.2f}s",
                      error=outcome.error, max_attempts=self.max_attempts, delay=delay, **keys)

    async def _dead_unknown(self, name, items):
        if name not in self._unknown_logged:
            self._unknown_logged.add(name)
            self.log.error("webhooks: outbox rows name target {target}, which is not in "
                           "webhooks.targets; they are dead-lettered (add the target back and "
                           "replay them with `siprecd webhooks replay --target {target}`)",
                           target=name)
        now = self._now_ms()
        for item in items:
            await self.storage.mark_failed(item.id, now, f"no webhook target {name!r} configured",
                                           dead=True)
            self.stats["dead"] += 1
            self._observe(item, None)

    # Disabled targets (410 Gone) ------------------------------------------------------------

    def _in_thread(self, function, *args):
        """Run a blocking state-file function on a thread, one at a time."""
        return self._file_lock.run(
            threads.deferToThreadPool, self.reactor, self.reactor.getThreadPool(), function,
            *args)

    async def _disable(self, name, sender, outcome, now):
        if name in self._disabled:
            return
        reason = f"HTTP 410 Gone from {sender.log_url}"
        entry = self._disabled[name] = _Disabled(now, reason)
        self.stats["disabled"] += 1
        self.log.error("webhooks: target {target} answered 410 Gone ({url}): delivery to it is "
                       "disabled; its messages are kept until an operator runs `siprecd webhooks "
                       "enable -c CONFIG {target}`", target=name, url=sender.log_url)
        try:
            await self._in_thread(self.states.disable, name, now, reason)
            entry.persisted = True
        except StateFileError as e:
            self.log.error("webhooks: cannot record that {target} is disabled: {error}; it is "
                           "disabled until siprecd restarts", target=name, error=str(e))
        try:
            await self.storage.record_audit(
                "webhook.target_disabled",
                detail={"target": name, "status": 410, "url": sender.log_url, "node": self.node},
                now=now)
        except Exception as e:
            self.log.error("webhooks: cannot write the audit entry for disabling {target}: "
                           "{error}", target=name, error=str(e))

    async def _park(self, name, items):
        ids = [item.id for item in items]
        until = self._now_ms() + int(self.disabled_recheck * 1000)
        try:
            await self._in_thread(self.states.park, name, ids)
        except StateFileError as e:
            self.log.error("webhooks: cannot record parked deliveries of {target}: {error}; "
                           "they come back after {recheck:g}s", target=name, error=str(e),
                           recheck=self.disabled_recheck)
        error = f"target {name} is disabled (HTTP 410 Gone); waiting to be re-enabled"
        for item in items:
            await self.storage.mark_failed(item.id, until, error)
            self.stats["parked"] += 1
            self._observe(item, None)
        self.log.debug("webhooks: parked {count} deliveries to disabled target {target}",
                       count=len(ids), target=name)

    async def _reload_states(self, initial=False):
        mtime = self.states.mtime()
        try:
            stored = await self._in_thread(self.states.disabled)
        except StateFileError as e:
            self._state_mtime = mtime
            self.log.error("webhooks: {error}; targets are taken as enabled", error=str(e))
            return
        self._state_mtime = mtime
        for name, entry in stored.items():
            known = self._disabled.get(name)
            if known is not None:
                known.persisted = True
                continue
            self._disabled[name] = _Disabled(int(entry.get("since_ms") or 0),
                                             str(entry.get("reason") or "disabled"), True)
            if name in self.senders:
                self.log.warn("webhooks: target {target} is disabled ({reason}); its messages "
                              "wait. Re-enable it with `siprecd webhooks enable -c CONFIG "
                              "{target}`", target=name, reason=entry.get("reason"))
        for name in list(self._disabled):
            if name not in stored and self._disabled[name].persisted:
                del self._disabled[name]
                if not initial:
                    self.log.info("webhooks: target {target} was re-enabled; delivering to it "
                                  "again", target=name)

    async def _release_parked(self):
        try:
            taken = await self._in_thread(self.states.take_parked)
        except StateFileError as e:
            self.log.error("webhooks: {error}; parked deliveries come back after {recheck:g}s",
                           error=str(e), recheck=self.disabled_recheck)
            return
        now = self._now_ms()
        for name, ids in taken.items():
            for outbox_id in ids:
                if outbox_id not in self._inflight:
                    await self.storage.mark_failed(outbox_id, now, f"target {name} re-enabled")
            self.log.info("webhooks: {count} parked deliveries to {target} are due again",
                          count=len(ids), target=name)
        if taken:
            self._pump()
