"""The one way parts of a node tell others what happened: :class:`Hook`.

A part declares each event it reports as a ``Hook`` attribute made in its
constructor from the listeners it was given there (``on_stored=...``), so
what listens to a part is visible where the node is built
(:mod:`siprecd.node`). Tests and tools may add a listener later with
:meth:`Hook.add`; nothing patches attributes.

A listener's exception, or the failure of a Deferred it returns, is
logged and never reaches the part that reported the event, nor stops the
next listener: an observer (metrics, a test) must not be able to break the
path it observes.
"""

from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["Hook"]


class Hook:
    """Listeners of one event, called in the order they were added."""

    log = Logger()

    def __init__(self, name, *listeners):
        self.name = name
        self._listeners = [listener for listener in listeners if listener is not None]

    def add(self, listener):
        self._listeners.append(listener)
        return listener

    def remove(self, listener):
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __bool__(self):
        return bool(self._listeners)

    def __len__(self):
        return len(self._listeners)

    def __call__(self, *args, **context):
        """Tell every listener ``listener(*args)``; *context* are log keys
        (``guid``, ``stream_id``...) for the line logged when one fails."""
        for listener in list(self._listeners):
            # maybeDeferred: a listener may raise, return a Deferred, or be
            # a coroutine function; each failure is logged the same way.
            d = defer.maybeDeferred(listener, *args)
            d.addErrback(self._failed, context)

    def _failed(self, failure, context):
        self.log.failure("a listener of {hook} failed", failure, hook=self.name, **context)
