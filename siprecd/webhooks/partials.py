"""Interim results on webhooks (``type: transcript-partial``), for targets
that ask for them (``webhooks.targets.NAME.partials: true``; off by default).

Partials are never stored, so they cannot go through the durable outbox:
:class:`PartialWebhooks` POSTs them best effort, beside it.

- **Latest wins, rate-bounded.** Per (target, stream) at most one POST is
  in flight and one starts at most every ``partial_interval`` seconds; a
  partial that comes meanwhile replaces the one waiting, so a slow target
  gets fewer, fresher partials and memory holds at most one per stream.
- **Never after its final.** A partial still waiting when the final of its
  utterance is stored is dropped. (A POST already in flight may still
  arrive after the final's POST, which goes through the outbox on its own
  connections: receivers order by ``utteranceId``/``revision`` and drop a
  partial whose ``utteranceId`` is a ``messageId`` they already have.)
- **No retries.** A failed POST is counted (and logged once per target
  until one succeeds); the next partial is the retry.
- Targets disabled by 410 Gone get no partials either; the same senders
  (TLS, credentials, signatures) as the transcript webhooks are used,
  with ``webhook-id`` ``<utteranceId>.<revision>``.
"""

import collections
import json

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from siprecd.hooks import Hook
from siprecd.messages import partial_payload
from siprecd.webhooks.sender import DELIVERED

__all__ = ["PartialWebhooks"]


@attrs.define(eq=False)
class _Stream:
    guid: str
    waiting: object = None        # the LivePartial to send next
    sending: object = None        # Deferred of the POST in flight
    last: float = float("-inf")   # when the last POST started
    timer: object = None
    ended: bool = False           # its call ended: forgotten once idle


class PartialWebhooks(service.Service):
    """See the module docstring. *senders*: target name -> TargetSender of
    the targets that want partials; *intervals*: target name -> seconds;
    *disabled(name)*: whether a target is disabled (410 Gone);
    *on_outcome(partial, outcome)* listeners are told how each POST went."""

    name = "webhook-partials"
    log = Logger()

    def __init__(self, senders, intervals, clock, disabled=lambda name: False, on_outcome=()):
        self.senders = dict(senders)
        self.on_outcome = Hook("on_outcome", *on_outcome)
        self.intervals = dict(intervals)
        self.clock = clock
        self.disabled = disabled
        self.stats = collections.Counter()
        self._streams = {}
        self._failing = set()

    @classmethod
    def from_config(cls, config, webhooks, clock):
        """For the targets of *config* with ``partials: true``, sharing the
        senders of *webhooks* (a WebhookService)."""
        targets = {name: t for name, t in config.webhooks.targets.items() if t.partials}
        return cls({name: webhooks.senders[name] for name in targets},
                   {name: t.partial_interval for name, t in targets.items()}, clock,
                   disabled=lambda name: name in webhooks.disabled_targets)

    def wants(self, target):
        """Whether *target* takes partials (and is not disabled)."""
        return target in self.senders and self.running and not self.disabled(target)

    # -- listeners of the transcription service ---------------------------------------

    def partial(self, partial):
        """A LivePartial (``on_partial``)."""
        target = partial.webhook_target
        if not self.wants(target):
            return
        key = (target, partial.stream_id)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = _Stream(partial.guid)
        if state.waiting is not None:
            self.stats["replaced"] += 1
        state.waiting = partial
        self._next(key, state)

    def final(self, message):
        """A stored Message (``on_utterance``): its partial waiting goes."""
        for target in self.senders:
            state = self._streams.get((target, message.stream_id))
            if (state is not None and state.waiting is not None
                    and state.waiting.utterance_id == message.id):
                state.waiting = None
                self.stats["superseded"] += 1

    def call_event(self, event):
        """A CallEvent (``on_call_event``): forget the streams of an ended call."""
        if event.kind != "call-ended":
            return
        for key, state in list(self._streams.items()):
            if state.guid == event.guid:
                state.waiting = None
                state.ended = True
                self._cancel_timer(state)
                if state.sending is None:
                    del self._streams[key]

    # -- sending ----------------------------------------------------------------------

    def _next(self, key, state):
        if state.sending is not None or state.waiting is None or state.timer is not None:
            return
        wait = state.last + self.intervals[key[0]] - self.clock.seconds()
        if wait > 0:
            state.timer = self.clock.callLater(wait, self._timer_fired, key, state)
            return
        self._send(key, state)

    def _timer_fired(self, key, state):
        state.timer = None
        self._next(key, state)

    def _send(self, key, state):
        target = key[0]
        partial, state.waiting = state.waiting, None
        if not self.wants(target):
            return
        body = json.dumps(partial_payload(partial), ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        state.last = self.clock.seconds()
        self.stats["sent"] += 1
        d = state.sending = self.senders[target].send(
            body, f"{partial.utterance_id}.{partial.revision}")
        d.addCallbacks(lambda outcome: self._done(key, state, partial, outcome),
                       lambda f: self._failed(key, state, f))

    def _done(self, key, state, partial, outcome):
        state.sending = None
        target = key[0]
        if outcome.kind == DELIVERED:
            self.stats["delivered"] += 1
            if target in self._failing:
                self._failing.discard(target)
                self.log.info("webhook target {target}: partials are delivered again",
                              target=target)
        else:
            self.stats["failed"] += 1
            if target not in self._failing:
                self._failing.add(target)
                self.log.warn("webhook target {target}: a partial was not delivered ({error}); "
                              "partials are not retried, further failures are counted",
                              target=target, error=outcome.error)
        self.on_outcome(partial, outcome)
        self._after(key, state)

    def _failed(self, key, state, failure):
        state.sending = None
        if not failure.check(defer.CancelledError):
            self.stats["failed"] += 1
            self.log.failure("webhook target {target}: sending a partial failed", failure,
                             target=key[0])
        self._after(key, state)

    def _after(self, key, state):
        if self._streams.get(key) is not state:
            return
        if state.ended:
            del self._streams[key]
            return
        self._next(key, state)

    def _cancel_timer(self, state):
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    def stopService(self):
        service.Service.stopService(self)
        sending = []
        for state in self._streams.values():
            state.waiting = None
            self._cancel_timer(state)
            if state.sending is not None:
                sending.append(state.sending)
        for d in sending:
            d.cancel()
        self._streams.clear()
