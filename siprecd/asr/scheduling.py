"""Which recogniser call runs next when many streams share a few threads.

Every stream's pipeline gives its recogniser one call at a time, each with
a *deadline*: when its answer is wanted, on the reactor's clock (a chunk
of audio: when it arrived plus the lag a result may have; a finish, which
a listener is waiting for: when it was decided). :class:`DeadlineQueue`
runs the call with the earliest deadline first; equal deadlines go in the
order they came.

Why not first come, first served (a plain thread pool's queue): a call
that takes long (Vosk decodes in bursts; a new recogniser is slow for its
first seconds; see ``siprecd.asr.vosk``) puts its stream behind, and with
one call in flight per stream each of that stream's queued chunks then
waits for a whole round of every other stream's calls, so the stream
catches up slowly and, near full load, not at all. Oldest audio first
lets a stream that fell behind catch up on the next free threads, before
other streams' newer chunks; and a finish, which ends an utterance
somebody is waiting for, goes before chunks that can still wait.

The queue only orders; the calls run on a thread pool
(:class:`ScheduledPool`): one ``callInThread`` per call put in, each of
which runs whichever call is due first when a thread takes it up, so
every call runs exactly once. Tests drive the same queue with workers on a
``task.Clock`` (``siprecd.testing.asr.ClockWorkers``).
"""

import heapq
import itertools
import threading

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["DeadlineQueue", "ScheduledPool"]


class DeadlineQueue:
    """Jobs by deadline (earliest first; the order they came for equal
    deadlines). Safe to use from several threads."""

    def __init__(self):
        self._heap = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def put(self, deadline, job):
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), job))

    def pop(self):
        """The job due first (IndexError when there is none)."""
        with self._lock:
            return heapq.heappop(self._heap)[2]

    def __len__(self):
        return len(self._heap)

    def earliest(self):
        """The earliest deadline waiting, or None."""
        with self._lock:
            return self._heap[0][0] if self._heap else None


class ScheduledPool:
    """Calls on a Twisted ThreadPool, earliest deadline first.

    *reactor* gets the results back on its thread; *pool* is a started
    ``twisted.python.threadpool.ThreadPool``.
    """

    def __init__(self, reactor, pool):
        self._reactor = reactor
        self._pool = pool
        self.queue = DeadlineQueue()

    def submit(self, deadline, function, *args):
        """*function(*args)* on a pool thread once it is the call due
        first; a Deferred with its result (on the reactor thread)."""
        d = defer.Deferred()
        self.queue.put(deadline, (d, function, args))
        self._pool.callInThread(self._run_next)
        return d

    def _run_next(self):
        # One of these per call submitted: the call run is whichever is
        # due first now, not necessarily the one that queued this.
        d, function, args = self.queue.pop()
        try:
            result = function(*args)
        except BaseException:
            result = Failure()
        if isinstance(result, Failure):
            self._reactor.callFromThread(d.errback, result)
        else:
            self._reactor.callFromThread(d.callback, result)
