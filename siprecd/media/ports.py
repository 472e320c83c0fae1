"""RTP port allocation from the configured range.

RTP ports are even and RTCP takes the next odd port (RFC 3550 §11). A
released port rests in quarantine for a while before it is handed out
again, so late packets of an ended call never land in a new one. Free
ports are handed out in turn (first in, first out), so a port that was
just in use is the last to be used again.

Across a restart: with a :class:`PortJournal` (a small file in the state
directory), the ports in use or resting are written down as they change.
After a crash (kill -9, a power cut of the process) an SBC that was not
told may still stream to them; at the next start they rest for
``restart_quarantine`` seconds, and then go to the end of the line, so no
new call gets a port a stale stream may still reach. The journal was
chosen over picking ports at random: a random pick only makes a collision
unlikely (one in ten with a tenth of the range in use), the journal rules
it out for the quarantine, at the cost of a few bytes written per call.
"""

import collections
import os
import socket

from twisted.application import service
from twisted.logger import Logger
from zope.interface import implementer

from siprecd.interfaces import IMediaPortAllocator, PortsExhausted
from siprecd.resources import EXHAUSTION_ERRNOS

__all__ = ["RangePortAllocator", "PortJournal", "PortJournalService"]

log = Logger()


class PortJournal:
    """The RTP ports a node holds, in a file that survives the process.

    One line per change, appended (``+20000`` taken, ``-20000`` free
    again); rewritten from scratch when it has grown to several times
    what it describes. Appends go to the page cache, so a killed process
    loses none; a machine that loses power may lose the last ones. A
    write that fails is logged once and the journal is given up: calls
    never fail for it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._fd = None
        self._lines = 0
        self._ports = set()
        self.broken = False

    def load(self):
        """The ports the journal says were held when it was last written."""
        held = set()
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                for line in f:
                    line = line.strip()
                    if len(line) > 1 and line[1:].isdigit():
                        (held.add if line[0] == "+" else held.discard)(int(line[1:]))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot read the RTP port journal {path}: {error}", path=self.path,
                     error=str(e))
        return held

    def start(self, held):
        """Begin a new journal holding *held*."""
        self._ports = set(held)
        self._rewrite()

    def taken(self, port):
        if port not in self._ports:
            self._ports.add(port)
            self._append(f"+{port}\n")

    def freed(self, port):
        if port in self._ports:
            self._ports.discard(port)
            self._append(f"-{port}\n")

    def _append(self, text):
        if self.broken or self._fd is None:
            return
        try:
            os.write(self._fd, text.encode("ascii"))
        except OSError as e:
            self._give_up(e)
            return
        self._lines += 1
        if self._lines > max(1000, 4 * len(self._ports)):
            self._rewrite()

    def _rewrite(self):
        if self.broken:
            return
        temporary = f"{self.path}.new"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, "".join(f"+{p}\n" for p in sorted(self._ports)).encode("ascii"))
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            self._give_up(e)
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd = new
        self._lines = len(self._ports)

    def _give_up(self, error):
        self.broken = True
        log.warn("cannot write the RTP port journal {path} ({error}); after a crash the "
                 "ports in use then are not held back", path=self.path, error=str(error))

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@implementer(IMediaPortAllocator)
class RangePortAllocator:
    """See the module docstring. *journal* (a PortJournal) keeps the ports
    held across restarts; those held at the last stop rest for
    *restart_quarantine* seconds first."""

    def __init__(self, clock, port_min, port_max, quarantine=5.0, probe_host=None,
                 attempts=256, journal=None, restart_quarantine=300.0):
        first = port_min + (port_min % 2)
        self.clock = clock
        self.quarantine = quarantine
        # With probe_host, a port pair another program holds is skipped at
        # allocation time, so the SDP answer never names it.
        self.probe_host = probe_host
        self.attempts = attempts
        # RTP needs port and port + 1 inside the range.
        self._free = collections.deque(range(first, port_max, 2))
        self._resting = collections.deque()  # (free again at, port), in order
        self._after_restart = collections.deque()  # the same, for ports of the last run
        self._in_use = set()
        self.capacity = len(self._free)
        self.journal = journal
        self.held_at_start = ()
        if journal is not None:
            self._hold_back(journal, restart_quarantine)

    def _hold_back(self, journal, restart_quarantine):
        in_range = set(self._free)
        held = sorted(p for p in journal.load() if p in in_range)
        until = self.clock.seconds() + restart_quarantine
        if held:
            wanted = set(held)
            self._free = collections.deque(p for p in self._free if p not in wanted)
            self._after_restart.extend((until, p) for p in held)
            log.warn("{count} RTP port(s) were in use when this node last stopped without "
                     "hanging up; none is handed out for {seconds:g}s (media."
                     "restart_quarantine)", count=len(held), seconds=restart_quarantine)
        self.held_at_start = tuple(held)
        journal.start(held)

    def _wake(self):
        now = self.clock.seconds()
        for resting in (self._after_restart, self._resting):
            while resting and resting[0][0] <= now:
                port = resting.popleft()[1]
                self._free.append(port)
                if self.journal is not None:
                    self.journal.freed(port)

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
                if self.journal is not None:
                    self.journal.taken(port)
                return port
            # Taken by someone else: try it again after a quarantine.
            self._resting.append((self.clock.seconds() + self.quarantine, port))
        raise PortsExhausted(f"no free RTP port pair among {self.capacity} in the range")

    def release(self, port):
        if port in self._in_use:
            self._in_use.discard(port)
            self._resting.append((self.clock.seconds() + self.quarantine, port))

    def close(self):
        """The node stops cleanly: calls were hung up, so only ports still
        in use stay in the journal (none, normally)."""
        if self.journal is not None:
            self.journal.start(self._in_use)
            self.journal.close()

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


class PortJournalService(service.Service):
    """Closes the allocator's journal when the node stops (after the media
    plane has closed its streams), leaving in it only ports still held."""

    name = "RTP port journal"

    def __init__(self, allocator):
        self.allocator = allocator

    def stopService(self):
        super().stopService()
        self.allocator.close()
