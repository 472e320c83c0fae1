"""Telling systemd how the daemon is doing (``sd_notify``), without libsystemd.

A unit with ``Type=notify`` starts the daemon with ``NOTIFY_SOCKET`` naming
a unix datagram socket (a path, or an abstract name written with a
leading ``@``); each notification is one datagram of ``NAME=value`` lines.
siprecd sends:

- ``READY=1`` once start-up is over (see ``siprecd.service``) and
  ``STATUS=`` lines saying what the node waits for or why it is not ready;
- ``EXTEND_TIMEOUT_USEC=`` while it waits for a model being fetched or
  loaded, so a slow download is not taken for a hung start;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (the unit's ``WatchdogSec``)
  from a timer on the reactor: a reactor that stops turning stops the
  pings, and systemd restarts the service;
- ``STOPPING=1`` when it begins to stop.

The protocol is a few lines of socket code, so it is written here rather
than taken from a library. Without ``NOTIFY_SOCKET`` (not under systemd,
or ``Type=simple``) every call does nothing. A notification that cannot be
sent is logged once and otherwise ignored: systemd going away must never
stop the daemon.
"""

import os
import socket

from twisted.logger import Logger

__all__ = ["Notifier"]


class Notifier:
    """sd_notify for one process; see the module doc."""

    log = Logger()

    def __init__(self, address=None, watchdog_usec=None):
        # *address* as the socket API takes it (abstract names start with NUL).
        self.address = address
        self.watchdog_interval = (watchdog_usec / 1e6) if watchdog_usec else None
        self._socket = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ=None, pid=None):
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        name = environ.get("NOTIFY_SOCKET") or None
        address = None
        if name is not None and (name.startswith("/") or name.startswith("@")):
            address = "\0" + name[1:] if name.startswith("@") else name
        watchdog_usec = None
        watchdog_pid = environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process the watchdog is for; another
        # process that inherited the environment must not ping it.
        if watchdog_pid is None or watchdog_pid == str(pid):
            try:
                watchdog_usec = int(environ.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                watchdog_usec = None
        return cls(address, watchdog_usec if address is not None else None)

    @property
    def enabled(self):
        return self.address is not None

    def send(self, **fields):
        """One datagram of ``NAME=value`` lines (names in upper case)."""
        if self.address is None:
            return False
        message = "\n".join(f"{name.upper()}={value}" for name, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                self.log.warn("cannot notify systemd at {address}: {error}",
                              address=self.address.replace("\0", "@"), error=e.strerror or e)
            return False
        return True

    def ready(self, status):
        return self.send(ready=1, status=_one_line(status))

    def status(self, status):
        return self.send(status=_one_line(status))

    def extend_timeout(self, seconds, status):
        return self.send(extend_timeout_usec=int(seconds * 1e6), status=_one_line(status))

    def watchdog(self):
        return self.send(watchdog=1)

    def stopping(self):
        return self.send(stopping=1, status="stopping")

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text):
    return " ".join(str(text).split())[:1000]
