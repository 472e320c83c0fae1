"""The daemon's root service: ordered start, readiness, drain on SIGTERM.

Start order is the order children are added (storage, then ASR, then the
listeners); each child's ``startService`` Deferred is awaited before the next
starts. Sockets are bound earlier, in ``privilegedStartService``, so that a
port conflict stops the daemon at once with one clear line instead of after
a model has loaded; until every stage has started, the SIP and API layers
see ``readiness.ready`` false and answer 503.

Stop order is the reverse, preceded by a drain: every IDrainable child stops
accepting new work, then in-flight work gets up to ``node.shutdown_grace``
seconds to finish.

Under systemd (``Type=notify``, see ``siprecd.systemd``) start-up is over,
and ``READY=1`` sent, once the node is ready or once what it still waits
for has failed and needs the operator (a model that cannot be had): the
daemon is up and says why it is not ready, and systemd must not kill it
for that. While it waits for a model being fetched or loaded, after every
stage has started, the start timeout is extended. ``WATCHDOG=1`` comes
from a timer on the reactor; ``STOPPING=1`` when the stop begins.

Signals: SIGTERM stops (as above), SIGUSR1 drains (``siprecd drain``),
SIGHUP reopens the log file (logrotate).
"""

import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import IDrainable, IReadiness
from siprecd.systemd import Notifier

__all__ = ["StartupError", "Readiness", "ListeningPort", "SiprecdService"]


class StartupError(Exception):
    """The daemon cannot start; ``str()`` is one line for the operator."""


@implementer(IReadiness)
class Readiness:
    """Component name -> reason it is not ready; ready when empty.

    A reason may be a string or a function returning one (asked each time
    it is shown, for reasons that change: a model being fetched). A
    pending item marked with :meth:`fail` will not clear by itself (a
    missing model), and one waited for with ``external=True`` waits on
    something outside the node (ASR servers not up yet): the node is
    *settled* once it is ready or everything still pending is one of
    those, which is when ``systemd`` is told start-up is over. Parts add
    sections to /v1/health with :meth:`add_details`.
    """

    def __init__(self):
        self._pending = {}
        self._failed = set()        # failed, or waiting on something outside
        self._watchers = []
        self._settled_watchers = []
        self._details = {}

    def wait_for(self, name, reason, external=False):
        self._pending[name] = reason
        if external:
            self._failed.add(name)
            self._tell_settled()
        else:
            self._failed.discard(name)

    def fail(self, name, reason):
        """*name* is not ready and will not be without the operator."""
        self._pending[name] = reason
        self._failed.add(name)
        self._tell_settled()

    def done(self, name):
        self._failed.discard(name)
        if self._pending.pop(name, None) is not None and not self._pending:
            for watcher in list(self._watchers):
                watcher()
        self._tell_settled()

    def when_ready(self, callback):
        """Call *callback* each time the last pending item is done."""
        self._watchers.append(callback)

    def when_settled(self, callback):
        """Call *callback* once, when the node is ready or every pending
        item has failed (at once if that is so already)."""
        self._settled_watchers.append(callback)
        self._tell_settled()

    @property
    def settled(self):
        return set(self._pending) <= self._failed

    def _tell_settled(self):
        if self._settled_watchers and self.settled:
            watchers, self._settled_watchers = self._settled_watchers, []
            for watcher in watchers:
                watcher()

    @property
    def ready(self):
        return not self._pending

    def pending(self):
        return {name: reason() if callable(reason) else reason
                for name, reason in self._pending.items()}

    def add_details(self, name, report):
        """/v1/health gets a section *name* with what *report()* returns."""
        self._details[name] = report

    def details(self):
        return {name: report() for name, report in self._details.items()}


class ListeningPort(service.Service):
    """One listening socket, bound in privilegedStartService.

    *listen* is a zero-argument callable returning an IListeningPort
    (e.g. ``lambda: reactor.listenUDP(...)``); *config_key* names the
    config section, for error messages.
    """

    log = Logger()

    def __init__(self, label, host, port, listen, config_key, close_on_drain=True):
        self.name = label
        # SIP sockets stay open while draining: calls in progress still
        # need them for their BYE. Others stop taking connections at once.
        self.close_on_drain = close_on_drain
        self.label = label
        self.host = host
        self.requested_port = port
        self._listen = listen
        self.config_key = config_key
        self.port = None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        try:
            self.port = self._listen()
        except error.CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise StartupError(
                f"{self.config_key}: cannot listen for {self.label} on "
                f"{self.host}:{self.requested_port}: {reason}"
            ) from None
        address = self.port.getHost()
        self.log.info(
            "listening for {label} on {address}",
            label=self.label,
            address=f"{address.host}:{address.port}",
        )

    @property
    def address(self):
        return self.port.getHost() if self.port is not None else None

    def stop_accepting(self):
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()

    def stopService(self):
        service.Service.stopService(self)
        return self.stop_accepting()


class SiprecdService(service.MultiService):
    """Root of the service tree; see the module docstring.

    Made by :meth:`for_node` from a :class:`siprecd.node.Node` (its
    ``node``), with the node's parts as children in start order; tests
    also make bare ones (``SiprecdService(config, reactor)``) and add
    children of their own.
    """

    log = Logger()
    # While start-up waits for a model, systemd's start timeout is pushed
    # this far ahead every STARTUP_NOTICE seconds.
    STARTUP_NOTICE, STARTUP_EXTENSION = 10.0, 30.0

    def __init__(self, config, reactor, log_observer=None, readiness=None, node=None,
                 notifier=None):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.node = node
        if readiness is None:
            readiness = Readiness()
            readiness.wait_for("startup", "starting")
        self.readiness = readiness
        self.exit_code = 0
        self.started = None
        self._log_observer = log_observer
        self.notifier = notifier if notifier is not None else Notifier.from_environment()
        self._watchdog = None
        self._waiting_notice = None

    @classmethod
    def for_node(cls, node, log_observer=None, notifier=None):
        root = cls(node.config, node.reactor, log_observer=log_observer,
                   readiness=node.readiness, node=node, notifier=notifier)
        for child in node.services:
            child.setServiceParent(root)
        return root

    def setServiceParent(self, parent):
        # twistd asks the application for an ILogObserver before it falls
        # back to its own; this is how the YAML's logging section takes
        # effect under plain `twistd -n siprecd`.
        if self._log_observer is not None:
            from twisted.logger import ILogObserver
            from twisted.python.components import Componentized

            if (isinstance(parent, Componentized)
                    and parent.getComponent(ILogObserver, None) is None):
                parent.setComponent(ILogObserver, self._log_observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except StartupError as e:
            self._unbind()
            raise SystemExit(f"siprecd: {e}") from None

    def _unbind(self):
        for child in self:
            if isinstance(child, ListeningPort):
                child.stop_accepting()

    def _install_signals(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        handlers = {signal.SIGHUP: self.reopen_logs}
        if self.node is not None:
            handlers[signal.SIGUSR1] = self.node.drain.start
        for number, handler in handlers.items():
            try:
                signal.signal(number, lambda *_, h=handler: self.reactor.callFromThread(h))
            except (ValueError, OSError):
                pass

    def reopen_logs(self):
        """SIGHUP: open the log file again by its name (after logrotate)."""
        # _log_observer: a siprecd.logs.ConfiguredObserver, or None when
        # twistd was told where to log (it keeps its own file then).
        try:
            reopened = self._log_observer is not None and self._log_observer.reopen()
        except OSError as e:
            self.log.error("cannot reopen the log file: {error}", error=e.strerror or e)
            return
        if reopened:
            self.log.info("log file reopened")
        else:
            self.log.info("SIGHUP: no log file to reopen (logging.file is standard output)")

    def startService(self):
        service.Service.startService(self)
        self._install_signals()
        if self.notifier.watchdog_interval:
            self._watchdog = task.LoopingCall(self.notifier.watchdog)
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.notifier.watchdog_interval / 2, now=True)
        self.readiness.when_settled(self._settled)
        # twistd calls this before the reactor runs and installs its signal
        # handlers; starting stages from inside the running reactor means a
        # SIGTERM that arrives once we say "ready" is always a clean stop.
        self.started = defer.Deferred()
        self.reactor.callWhenRunning(
            lambda: defer.ensureDeferred(self._start_in_order()).chainDeferred(self.started)
        )
        return self.started

    async def _start_in_order(self):
        for child in list(self):
            name = child.name or type(child).__name__
            try:
                await defer.maybeDeferred(child.startService)
            except Exception as e:
                self.fatal(f"{name} could not start: {e}")
                return
        self.readiness.when_ready(self._ready)
        self.readiness.done("startup")
        if not self.readiness.ready:
            self.log.info("started; waiting for: {pending}", pending=self._waiting_for())
        if not self.readiness.settled and self.notifier.enabled:
            self._waiting_notice = task.LoopingCall(self._still_starting)
            self._waiting_notice.clock = self.reactor
            self._waiting_notice.start(self.STARTUP_NOTICE, now=True)

    def _waiting_for(self):
        return "; ".join(self.readiness.pending().values())

    def _still_starting(self):
        self.notifier.extend_timeout(self.STARTUP_EXTENSION,
                                     f"waiting for: {self._waiting_for()}")

    def _settled(self):
        if self._waiting_notice is not None and self._waiting_notice.running:
            self._waiting_notice.stop()
        self._waiting_notice = None
        if self.readiness.ready:
            self.notifier.ready("ready")
        else:
            self.notifier.ready(f"not ready: {self._waiting_for()}")

    def _ready(self):
        # Logged when the node can take calls: every stage has started and
        # nothing (an ASR model still loading) holds it back.
        self.log.info("siprecd is ready (node {node})", node=self.config.node.name)
        self.notifier.status("ready")

    def fatal(self, message):
        """Stop the daemon with exit status 1 after a failure past start-up."""
        self.log.critical("{message}", message=message)
        self.exit_code = 1
        self.reactor.addSystemEventTrigger("after", "shutdown", self._exit_now)
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def _exit_now(self):
        # twistd has no way to return a non-zero status; flush and leave.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code)

    def stopService(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        service.Service.stopService(self)
        self.notifier.stopping()
        if self._waiting_notice is not None and self._waiting_notice.running:
            self._waiting_notice.stop()
        if self.node is not None:
            self.node.drain.stop_watching()
        grace = self.config.node.shutdown_grace
        drainables = [c for c in self if IDrainable.providedBy(c)]
        self.log.info(
            "stopping: refusing new work, waiting up to {grace}s for work in flight",
            grace=grace,
        )
        self.readiness.wait_for("shutdown", "stopping")
        for child in self:
            if IDrainable.providedBy(child) or (
                isinstance(child, ListeningPort) and child.close_on_drain
            ):
                await self._quietly(child.stop_accepting, child)
        if drainables:
            everything = defer.DeferredList(
                [defer.maybeDeferred(c.drain) for c in drainables], consumeErrors=True
            )
            everything.addTimeout(grace, self.reactor)
            try:
                await everything
            except defer.TimeoutError:
                self.log.warn(
                    "shutdown grace period ({grace}s) is over; stopping with work in flight",
                    grace=grace,
                )
        for child in reversed(list(self)):
            await self._quietly(child.stopService, child)
        self.log.info("stopped")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self.notifier.close()
        # twistd re-raises the signal that stopped the reactor once it has
        # shut down, so the process would end "killed by SIGTERM". A drain
        # that ran to the end is a clean, successful stop: exit status 0.
        if getattr(self.reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
            self.reactor._exitSignal = None

    async def _quietly(self, call, child):
        try:
            await defer.maybeDeferred(call)
        except Exception:
            self.log.failure(
                "error while stopping {name}", name=getattr(child, "name", repr(child))
            )
