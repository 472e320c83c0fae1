"""Speech recognition as a stage of the daemon.

Loading a model takes seconds (and longer on a slow disk), and a remote
farm may not be up yet, so start-up does not wait for the backend: the
stage registers ``asr`` as pending on the root's Readiness (SIP OPTIONS
and INVITE get 503, /v1/health says why) and the next stages start at
once. When the backend's ``start()`` fires, ``asr`` is done: with a
backend whose languages come up one by one (``ILanguageStates``, the
Vosk backend), that is once one language is served, and /v1/health shows
each language's state under ``languages``. When it fails (no language
can be served), the reason is logged as one critical line and stays in
the readiness report; the daemon keeps running so the operator can see it
there, fix the cause and restart.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from siprecd.asr.backends import create_backend
from siprecd.interfaces import ILanguageStates

__all__ = ["AsrService", "READINESS_KEY"]

READINESS_KEY = "asr"


class AsrService(service.Service):
    """Starts and stops one IASRBackend; see the module doc.

    *backend* is an IASRBackend not yet started; *readiness* the root
    service's ``Readiness`` (``wait_for``, ``fail``, ``done``, ``add_details``).
    """

    log = Logger()
    name = "asr"

    def __init__(self, backend, readiness):
        self.backend = backend
        self.readiness = readiness
        self.starting = None
        self.error = None

    @classmethod
    def from_config(cls, config, reactor, readiness):
        """Raises ConfigError (``asr.backend`` or the backend's own keys)."""
        return cls(create_backend(config, reactor), readiness)

    def startService(self):
        service.Service.startService(self)
        self.error = None
        describe = getattr(self.backend, "describe", None)
        reason = describe if describe is not None else f"starting ASR backend {self.backend.name}"
        # A backend with per-language states (Vosk) loads or fetches: work
        # that ends. Others may wait on servers that are not up yet, which
        # is no reason for systemd to think start-up is still going on.
        finite = ILanguageStates.providedBy(self.backend)
        self.readiness.wait_for(READINESS_KEY, reason, external=not finite)
        if finite:
            self.readiness.add_details("languages", self.backend.language_states)
        self.starting = defer.maybeDeferred(self.backend.start)
        # After start(): what it is doing now (loading, or fetching first).
        if not self.starting.called:
            self.log.info("asr: {reason}", reason=reason() if callable(reason) else reason)
        self.starting.addCallbacks(self._started, self._failed)
        # Nothing returned on purpose: the next stages start meanwhile.

    def _started(self, _):
        if not self.running:
            return
        self.readiness.done(READINESS_KEY)
        self.log.info(
            "asr: {backend} backend ready for {languages}",
            backend=self.backend.name, languages=", ".join(self.backend.languages()),
        )

    def _failed(self, failure):
        if not self.running:
            return  # stopped while starting: not an error
        self.error = failure.getErrorMessage() or failure.type.__name__
        self.readiness.fail(READINESS_KEY, f"speech recognition unavailable: {self.error}")
        self.log.critical(
            "asr: the {backend} backend could not start: {error} -- this node refuses "
            "calls (503) until that is fixed and siprecd restarted",
            backend=self.backend.name, error=self.error,
        )
        self.log.debug("asr: start failure in detail", log_failure=failure)

    def stopService(self):
        service.Service.stopService(self)
        return defer.maybeDeferred(self.backend.stop)
