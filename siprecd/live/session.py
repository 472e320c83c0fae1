"""One client's stream of live events, sans-IO: :class:`LiveSession`.

Exactly once across a reconnection
    A client that reconnects says where it stopped: the last ``sequence``
    it got of each stream (``after=STREAM:SEQ,...``), or ``replay=true``
    for everything. The session is subscribed first, holding what the hub
    hands it, then given the call's stored finals (:meth:`replayed`): it
    sends those past the client's positions, then what it held. A final
    is sent only if its sequence is above the last one sent of its stream,
    so one that was both stored before the replay was read and published
    after it goes once; none is missed, as the subscription was in place
    before storage was read. Partials held meanwhile whose final was
    replayed are dropped (a partial never follows its final). The replay
    goes out at the pace the client reads it (it is already in memory,
    at most the API's 1,000 messages, and is not counted in the queue).
Back-pressure
    Events are written at once while the connection takes them. When its
    transport says stop (the client is not reading and the kernel's and
    Twisted's buffers are full: ``pause``), they wait in a queue of at
    most ``max_events`` events and ``max_bytes`` bytes; past either the
    client is cut off (close code :data:`TOO_SLOW`, with the reason) and
    the queue dropped, so a slow client never grows the node's memory.
    ``peak_bytes`` says how full the queue ever got.

The session writes with ``send(payload)`` and closes with ``close(code,
reason)``; the WebSocket adapter gives both (:mod:`siprecd.live.websocket`).
"""

from collections import deque

from siprecd.live.events import FINAL, PARTIAL, final_event

__all__ = ["LiveSession", "TOO_SLOW"]

# WebSocket close code (private use) for a client that does not keep up.
TOO_SLOW = 4008


class LiveSession:
    def __init__(self, send, close, *, max_events=1000, max_bytes=1 << 20, positions=None,
                 replay=False):
        self.send = send
        self.close = close
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.positions = dict(positions or {})
        # Live events are held until the stored finals have been sent.
        self.replaying = True
        self.wants_replay = bool(replay or self.positions)
        self.closed = False
        self.paused = False
        self.peak_bytes = 0
        self.sent_events = 0
        self.dropped_duplicates = 0
        self.replayed_count = 0
        self._held = deque()
        self._queue = deque()
        self._queued = 0          # bytes held or queued
        self._replay = None       # LiveEvents of the replay still to send
        self._replayed_ids = set()
        # stream id -> (guid, last final sequence sent, or the client had)
        self._sent = {stream: (None, n) for stream, n in self.positions.items()}

    # -- from the hub ------------------------------------------------------------------

    def deliver(self, event):
        if self.closed:
            return
        if self.replaying:
            self._enqueue(event, held=True)
        else:
            self._offer(event)

    def replayed(self, messages, then=()):
        """Storage was read: *messages* are the call's stored Messages in
        order (empty when no replay was asked for). Sends those the client
        did not have, then *then* (LiveEvents, e.g. ``subscribed``), then
        what was held meanwhile, at the pace the client reads."""
        events = []
        for message in messages:
            if message.sequence is None or message.sequence <= self.positions.get(
                    message.stream_id, 0):
                continue
            self._replayed_ids.add(message.id)
            events.append(final_event(message))
        self.replayed_count = len(events)
        self._replay = deque(events + list(then))
        self._pump()

    # -- from the transport --------------------------------------------------------------

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False
        while self._queue and not self.paused and not self.closed:
            event = self._queue.popleft()
            self._queued -= len(event.payload)
            self._write(event.payload)
        self._pump()

    def lost(self):
        """The connection is gone: drop everything."""
        self.closed = True
        self._queue.clear()
        self._held.clear()
        self._replay = None
        self._queued = 0

    # -- the work -----------------------------------------------------------------------

    def _pump(self):
        """Go on with the replay, then with what was held, while the client reads."""
        if not self.replaying or self._replay is None:
            return
        while self._replay and not self.paused and not self.closed:
            self._offer(self._replay.popleft())
        if self._replay or self.closed:
            return
        self.replaying = False
        self._replay = None
        held, self._held = self._held, deque()
        for event in held:
            self._queued -= len(event.payload)
        for event in held:
            if event.kind == PARTIAL and event.utterance_id in self._replayed_ids:
                continue
            self._offer(event)
        self._replayed_ids = set()

    def _offer(self, event):
        """Send or queue *event*, unless it is a final already sent."""
        if event.kind == FINAL:
            last = self._sent.get(event.stream_id, (None, 0))[1]
            if event.sequence is not None and event.sequence <= last:
                self.dropped_duplicates += 1
                return
            self._sent[event.stream_id] = (event.guid, event.sequence or last)
        elif event.kind == "call-ended":
            # The call's streams will send nothing more.
            self._sent = {k: v for k, v in self._sent.items() if v[0] != event.guid}
        if not self.paused and not self._queue:
            self._write(event.payload)
        else:
            self._enqueue(event)

    def _enqueue(self, event, held=False):
        size = len(event.payload)
        if (len(self._queue) + len(self._held) >= self.max_events
                or self._queued + size > self.max_bytes):
            self._too_slow()
            return
        (self._held if held else self._queue).append(event)
        self._queued += size
        self.peak_bytes = max(self.peak_bytes, self._queued)

    def _write(self, payload):
        self.sent_events += 1
        self.send(payload)

    def _too_slow(self):
        waiting = len(self._queue) + len(self._held)
        queued = self._queued
        self.lost()
        self.close(TOO_SLOW, f"client too slow: {waiting} events ({queued} bytes) were waiting "
                             f"for it to read; reconnect with after= to get the finals missed")
