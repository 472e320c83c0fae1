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

Background work (the start-up cost probe, warming spare recognisers) is
not due at any time: :meth:`ScheduledPool.background` runs it, in the
order given, only when no stream's call waits and a thread would still
be free for the next one (with one thread: when it is idle), so a
stream's call never waits behind more than the one background call that
may have just started.
"""

import collections
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
        self._background = collections.deque()
        self._lock = threading.Lock()
        self._busy = 0               # calls running (streams' and background)

    def submit(self, deadline, function, *args):
        """*function(*args)* on a pool thread once it is the call due
        first; a Deferred with its result (on the reactor thread)."""
        d = defer.Deferred()
        self.queue.put(deadline, (d, function, args))
        self._pool.callInThread(self._run_next)
        return d

    def background(self, function, *args):
        """*function(*args)* on a pool thread when no stream's call waits
        and another thread stays free (see the module doc); a Deferred
        with its result (on the reactor thread)."""
        d = defer.Deferred()
        with self._lock:
            self._background.append((d, function, args))
        self._kick()
        return d

    def _kick(self):
        """Start the next background call if the pool can spare a thread."""
        with self._lock:
            spare = max(1, self._pool.max - 1)
            if not self._background or len(self.queue) or self._busy >= spare:
                return
            job = self._background.popleft()
            self._busy += 1
        self._pool.callInThread(self._run, job)

    def _run_next(self):
        # One of these per call submitted: the call run is whichever is
        # due first now, not necessarily the one that queued this.
        job = self.queue.pop()
        with self._lock:
            self._busy += 1
        self._run(job)

    def _run(self, job):
        d, function, args = job
        try:
            result = function(*args)
        except BaseException:
            result = Failure()
        with self._lock:
            self._busy -= 1
        if isinstance(result, Failure):
            self._reactor.callFromThread(d.errback, result)
        else:
            self._reactor.callFromThread(d.callback, result)
        self._kick()
