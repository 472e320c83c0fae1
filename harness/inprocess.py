"""A real siprecd service tree in the test's own process and reactor.

For tests that must reach inside the daemon (swap the layer above the
media plane for a recording double, hold a call unanswered); sockets,
threads and storage are all real. Everything else runs the daemon as a
subprocess (harness.daemon).
"""

import attrs

from harness.daemon import write_config
from siprecd import config as configmod

__all__ = ["start_service_tree", "CallWatcher"]


@attrs.frozen
class _Options:
    config: object


async def start_service_tree(directory, reactor, **sections):
    """Start the daemon's service tree on loopback ports; returns (root,
    dict of the config written). Stop it with ``await root.stopService()``."""
    from siprecd.tap import makeService

    path, written = write_config(directory, **sections)
    root = makeService(_Options(configmod.load(path)), reactor)
    root.privilegedStartService()
    root.startService()
    await root.started
    if not root.readiness.ready:  # the ASR model is still loading
        from twisted.internet import defer

        ready = defer.Deferred()
        root.readiness.when_ready(lambda: ready.called or ready.callback(None))
        ready.addTimeout(60, reactor)
        await ready
    return root, written


class CallWatcher:
    """Tells a test when calls are offered to and ended at a service tree:
    ``offered`` and ``ended`` are DeferredQueues of sessions. It observes
    the tree's call registry (its methods run first, then the registry's)."""

    def __init__(self, root):
        from twisted.internet import defer

        self.offered = defer.DeferredQueue()
        self.ended = defer.DeferredQueue()
        calls = root.node.calls
        offered, ended = calls.call_offered, calls.call_ended

        def call_offered(session):
            result = offered(session)
            self.offered.put(session)
            return result

        def call_ended(session, reason):
            result = ended(session, reason)
            self.ended.put(session)
            return result

        calls.call_offered, calls.call_ended = call_offered, call_ended
