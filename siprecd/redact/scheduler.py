"""A :class:`~siprecd.redact.call.CallRedactor` driven by a reactor's clock.

The one Twisted piece of redaction: it reads ``clock.seconds()`` for the
redactor and keeps a single ``callLater`` at the redactor's next
deadline, so held utterances go out when their hold-back runs out even if
nothing else is said. Tests drive it with ``twisted.internet.task.Clock``.
"""

from twisted.logger import Logger

__all__ = ["ReleaseTimer"]


class ReleaseTimer:
    """Feed *redactor* with *clock*'s time; hand every released utterance
    to ``deliver(released)``, in order per stream."""

    log = Logger()

    def __init__(self, redactor, clock, deliver):
        self.redactor = redactor
        self.clock = clock
        self.deliver = deliver
        self._call = None

    def feed(self, stream, role, tokens, ref=None):
        self._hand_on(self.redactor.feed(stream, role, tokens, self.clock.seconds(), ref))

    def flush(self, stream):
        self._hand_on(self.redactor.flush(stream, self.clock.seconds()))

    def flush_all(self):
        self._hand_on(self.redactor.flush_all(self.clock.seconds()))

    def stop(self):
        """Release everything and cancel the timer (the call ended)."""
        self.flush_all()
        self._cancel()

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _hand_on(self, released):
        for item in released:
            try:
                self.deliver(item)
            except Exception:  # noqa: BLE001 - one failure must not stop the others
                self.log.failure("delivering a redacted utterance failed")
        self._schedule()

    def _schedule(self):
        deadline = self.redactor.next_deadline()
        if self._call is not None and self._call.active():
            if deadline is not None and self._call.getTime() == deadline:
                return
            self._call.cancel()
        self._call = None
        if deadline is not None:
            delay = max(0.0, deadline - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._fire)

    def _fire(self):
        self._call = None
        self._hand_on(self.redactor.due(self.clock.seconds()))
