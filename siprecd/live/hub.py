"""Who sees which live events: :class:`LiveHub`.

The hub is told what happens on this node's calls (it listens to the
transcription service: ``call_event``, ``partial``, ``final``), makes
each event once (:mod:`siprecd.live.events`) and hands it to every
subscription that may see it, synchronously and in the order it was told,
so a final always follows the partials of its utterance.

A subscription is to one call (``guid``) or to every call of its app
(``guid`` None). App isolation (``api.app_isolation``): a call belongs to
the app whose start-streaming is in force; an app-wide subscription sees
only its app's calls, from their ``streaming-started`` on; a subscription
to one call that another app starts is cut off (close code 4403). Without
isolation an app-wide subscription sees every call of the node.

``wants(guid, app_id)`` says whether any subscription would get the
partials of a call now, so that the recogniser is asked for them only
then.
"""

import collections

import attrs
from twisted.logger import Logger

from siprecd.live import events as ev

__all__ = ["LiveHub", "Subscription", "FORBIDDEN_CLOSE"]

# WebSocket close code (private use, 4000-4999) for a subscription to a
# call that another app took over.
FORBIDDEN_CLOSE = 4403


class Subscription:
    """What the hub knows of a subscriber: its call (or None) and app, and
    where its events go: ``deliver(LiveEvent)``; ``revoke(code, reason)``
    when it may no longer see its call."""

    def __init__(self, app_id, guid, deliver, revoke):
        self.app_id = app_id
        self.guid = guid
        self.deliver = deliver
        self.revoke = revoke


class LiveHub:
    log = Logger()

    def __init__(self, clock, *, isolation=True):
        self.clock = clock
        self.isolation = isolation
        self._by_guid = collections.defaultdict(set)
        self._app_wide = collections.defaultdict(set)   # app id -> subscriptions
        # guid -> the last call-started or streaming-started CallEvent of a
        # call in progress (who owns it, and what a new subscriber is told).
        self._calls = {}
        self.stats = collections.Counter()

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(self, subscription):
        if subscription.guid is not None:
            self._by_guid[subscription.guid].add(subscription)
        else:
            self._app_wide[subscription.app_id].add(subscription)
        self.stats["subscribed"] += 1

    def unsubscribe(self, subscription):
        group, key = ((self._by_guid, subscription.guid) if subscription.guid is not None
                      else (self._app_wide, subscription.app_id))
        members = group.get(key)
        if members is not None:
            members.discard(subscription)
            if not members:
                del group[key]

    def __len__(self):
        return (sum(len(s) for s in self._by_guid.values())
                + sum(len(s) for s in self._app_wide.values()))

    def count(self, app_id):
        """Subscriptions of *app_id*."""
        return (len(self._app_wide.get(app_id, ()))
                + sum(1 for subs in self._by_guid.values() for s in subs if s.app_id == app_id))

    def calls_for(self, subscription):
        """The CallEvents of the calls in progress *subscription* may see."""
        if subscription.guid is not None:
            known = self._calls.get(subscription.guid)
            return [known] if known is not None else []
        return [c for c in self._calls.values()
                if self._app_sees(subscription.app_id, c.app_id)]

    def wants(self, guid, app_id):
        """Whether a subscription would get the partials of *guid* now."""
        if self._by_guid.get(guid):
            return True
        if not self.isolation:
            return any(self._app_wide.values())
        return bool(app_id is not None and self._app_wide.get(app_id))

    def _app_sees(self, subscriber_app, owner):
        return not self.isolation or (owner is not None and owner == subscriber_app)

    # -- what happens (listeners of the transcription service) ---------------------

    def call_event(self, event):
        """A siprecd.transcribe.events.CallEvent."""
        if event.kind == "streaming-started" and self.isolation and event.app_id is not None:
            self._revoke_others(event.guid, event.app_id)
        if event.kind in ("call-started", "streaming-started"):
            self._calls[event.guid] = event
        elif event.kind == "streaming-stopped":
            known = self._calls.get(event.guid)
            if known is not None:
                # Still the app's call (it may start again); not streaming.
                self._calls[event.guid] = _as_started(known)
        self._publish(ev.call_event(event))
        if event.kind == "call-ended":
            self._calls.pop(event.guid, None)

    def partial(self, partial):
        """A siprecd.transcribe.partials.LivePartial."""
        if self.wants(partial.guid, partial.app_id):
            self._publish(ev.partial_event(partial))

    def final(self, message):
        """A stored Message (an ``on_utterance`` listener)."""
        params = message.stream_params or {}
        if self.wants(message.guid, params.get("appId")):
            self._publish(ev.final_event(message))

    # -- delivery -------------------------------------------------------------------

    def _publish(self, event):
        self.stats[event.kind] += 1
        targets = list(self._by_guid.get(event.guid, ()))
        if not self.isolation:
            for members in self._app_wide.values():
                targets.extend(members)
        elif event.app_id is not None:
            targets.extend(self._app_wide.get(event.app_id, ()))
        for subscription in targets:
            try:
                subscription.deliver(event)
            except Exception:  # one subscriber must not stop the others
                self.log.failure("delivering a live event to a subscriber failed")

    def _revoke_others(self, guid, owner):
        for subscription in list(self._by_guid.get(guid, ())):
            if subscription.app_id != owner:
                self.unsubscribe(subscription)
                self.stats["revoked"] += 1
                subscription.revoke(FORBIDDEN_CLOSE,
                                    "the conversation was started by another app")


def _as_started(event):
    return attrs.evolve(event, kind="call-started")
