"""What the ASR backends share: language tags, errors, and the one-call-in-
flight rule every recogniser enforces."""

from twisted.internet import defer

from siprecd.structure import ConfigError

__all__ = [
    "normalise_language", "languages_of", "RecognizerBusy", "RecognizerClosed",
    "AsrNotReady", "LanguageUnavailable", "OneCallAtATime", "Waiters",
]


def normalise_language(tag):
    """``"en-US"``, ``" en_us "`` -> ``"en-us"`` (tags compare case-insensitively)."""
    return str(tag).strip().replace("_", "-").lower()


def languages_of(models, key="asr.models"):
    """``asr.models`` as {normalised tag: (tag as written, value)}.

    Raises ConfigError when two keys name the same language.
    """
    found = {}
    for written, value in models.items():
        tag = normalise_language(written)
        if tag in found:
            raise ConfigError(
                f"{found[tag][0]!r} and {written!r} name the same language; keep one",
                f"{key}.{written}",
            )
        found[tag] = (written, value)
    return found


class RecognizerBusy(RuntimeError):
    """accept() or finish() was called before the previous call's Deferred
    fired. Recognisers do not queue: order is the caller's to keep (one
    call in flight per stream), and a queue would hide a caller that
    breaks that rule while its memory grows."""


class RecognizerClosed(RuntimeError):
    """The recogniser was closed; make a new one."""


class AsrNotReady(RuntimeError):
    """new_recognizer() before the backend's start() has fired."""


class LanguageUnavailable(AsrNotReady):
    """new_recognizer() for a configured language whose model is not
    loaded (still loading or fetching, or missing); ``str()`` says why.
    Other languages of the same backend may be working."""


class OneCallAtATime:
    """Mixin for recognisers: ``_call`` runs one operation at a time and
    closes for real only once the operation in flight has finished."""

    _busy = False
    _closed = False

    def _call(self, operation, *args):
        if self._closed:
            raise RecognizerClosed(f"{self!r} is closed; ask the backend for a new recogniser")
        if self._busy:
            raise RecognizerBusy(
                f"{self!r} already has a call in flight; wait for its Deferred "
                "before the next accept() or finish()"
            )
        self._busy = True
        d = defer.maybeDeferred(operation, *args)
        d.addBoth(self._idle)
        return d

    def _idle(self, result):
        self._busy = False
        if self._closed:
            self._release()
        return result

    def close(self):
        if self._closed:
            return
        self._closed = True
        if not self._busy:
            self._release()

    def _release(self):
        """Free what the recogniser holds (called once, when idle)."""


class Waiters:
    """Counts operations in flight and tells waiters when none are left."""

    def __init__(self):
        self.count = 0
        self._waiting = []

    def track(self, d):
        self.count += 1
        d.addBoth(self._one_done)
        return d

    def _one_done(self, result):
        self.count -= 1
        if not self.count:
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.callback(None)
        return result

    def idle(self):
        """A Deferred that fires once nothing is in flight."""
        if not self.count:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d
