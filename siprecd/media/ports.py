"""RTP port allocation from the configured range.

RTP ports are even and RTCP takes the next odd port (RFC 3550 §11). A
released port rests in quarantine for a while before it is handed out
again, so late packets of an ended call never land in a new one.
"""

import collections
import socket

from zope.interface import implementer

from siprecd.interfaces import IMediaPortAllocator, PortsExhausted
from siprecd.resources import EXHAUSTION_ERRNOS

__all__ = ["RangePortAllocator"]


@implementer(IMediaPortAllocator)
class RangePortAllocator:
    def __init__(self, clock, port_min, port_max, quarantine=5.0, probe_host=None,
                 attempts=256):
        first = port_min + (port_min % 2)
        self.clock = clock
        self.quarantine = quarantine
        # With probe_host, a port pair another program holds is skipped at
        # allocation time, so the SDP answer never names it.
        self.probe_host = probe_host
        self.attempts = attempts
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
        for _ in range(self.attempts):
            self._wake()
            if not self._free:
                break
            port = self._free.popleft()
            try:
                usable = self.probe_host is None or _bindable(self.probe_host, port)
            except OSError as e:
                # Out of descriptors: the port is not to blame.
                self._free.appendleft(port)
                raise PortsExhausted(f"cannot open sockets to probe RTP ports: {e}") from e
            if usable:
                self._in_use.add(port)
                return port
            # Taken by someone else: try it again after a quarantine.
            self._resting.append((self.clock.seconds() + self.quarantine, port))
        raise PortsExhausted(f"no free RTP port pair among {self.capacity} in the range")

    def release(self, port):
        if port in self._in_use:
            self._in_use.discard(port)
            self._resting.append((self.clock.seconds() + self.quarantine, port))

    @property
    def in_use(self):
        return len(self._in_use)


def _bindable(host, port):
    """Whether UDP *port* and *port* + 1 can be bound on *host* right now.

    Raises OSError when the process is out of descriptors or buffers (a
    socket cannot even be made): that says nothing about the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for p in (port, port + 1):
            s = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(s)
            s.bind((host, p))
        return True
    except OSError as e:
        if e.errno in EXHAUSTION_ERRNOS:
            raise
        return False
    finally:
        for s in sockets:
            s.close()
