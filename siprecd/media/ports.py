"""RTP port allocation from the configured range.

RTP ports are even and RTCP takes the next odd port (RFC 3550 §11). A
released port rests in quarantine for a while before it is handed out
again, so late packets of an ended call never land in a new one.
"""

import collections

from zope.interface import implementer

from siprecd.interfaces import IMediaPortAllocator, PortsExhausted

__all__ = ["RangePortAllocator"]


@implementer(IMediaPortAllocator)
class RangePortAllocator:
    def __init__(self, clock, port_min, port_max, quarantine=5.0):
        first = port_min + (port_min % 2)
        self.clock = clock
        self.quarantine = quarantine
        # RTP needs port and port + 1 inside the range.
        self._free = collections.deque(range(first, port_max, 2))
        self._resting = collections.deque()  # (free again at, port)
        self._in_use = set()
        self.capacity = len(self._free)

    def _wake(self):
        now = self.clock.seconds()
        while self._resting and self._resting[0][0] <= now:
            self._free.append(self._resting.popleft()[1])

    def allocate(self):
        self._wake()
        if not self._free:
            raise PortsExhausted(f"all {self.capacity} RTP ports are in use or resting")
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port):
        if port in self._in_use:
            self._in_use.discard(port)
            self._resting.append((self.clock.seconds() + self.quarantine, port))

    @property
    def in_use(self):
        return len(self._in_use)
