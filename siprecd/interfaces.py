"""The plug points between siprecd's parts, as zope.interface interfaces.

Implementations are checked with ``zope.interface.verify.verifyObject`` where
they are plugged in, and the test doubles in ``siprecd.testing`` are verified
against the same interfaces.
"""

from zope.interface import Attribute, Interface

__all__ = [
    "IDrainable", "IReadiness", "ICallListener", "IMediaPortAllocator", "PortsExhausted",
    "IStreamConsumer",
]


class IDrainable(Interface):
    """A service with work in flight that SIGTERM should let finish.

    On shutdown the root service first calls ``stop_accepting`` on every
    drainable child, then waits for all their ``drain`` Deferreds for at most
    ``node.shutdown_grace`` seconds, then stops the children.
    """

    def stop_accepting():
        """Refuse new work from now on (may return a Deferred)."""

    def drain():
        """Return a Deferred that fires when in-flight work has finished.

        It may be cancelled when the grace period runs out.
        """


class IReadiness(Interface):
    """Whether the node can take new calls, and if not, why."""

    ready = Attribute("True when nothing is pending.")

    def pending():
        """A dict of component name -> reason it is not ready yet."""


class PortsExhausted(Exception):
    """No media port is free; the INVITE gets 503."""


class IMediaPortAllocator(Interface):
    """Hands out even RTP ports (RTCP on +1) from the configured range."""

    def allocate():
        """Return a free RTP port, or raise PortsExhausted."""

    def release(port):
        """Give a port back (it may rest a while before reuse)."""


class ICallListener(Interface):
    """What the layers above the SIP session learn of recording sessions.

    ``session`` is a ``siprecd.siprec.session.RecordingSession``: guid and
    every identifier seen, participants, and the recorded streams with
    their labels, codecs, local RTP ports, remote addresses and hold state.
    """

    def call_offered(session):
        """A new recording session is about to be answered.

        May return a Deferred; the 200 OK is sent when it fires. A failure
        refuses the call (503), so nothing is accepted that cannot be kept.
        """

    def call_updated(session):
        """Streams, hold state or metadata changed (re-INVITE, UPDATE)."""

    def call_ended(session, reason):
        """The session is over: BYE either way, CANCEL, timeout, shutdown."""


class IStreamConsumer(Interface):
    """What the media plane hands upward for each recorded stream.

    Positions are in samples at 8 kHz from the start of that stream's
    timeline (the first RTP packet of the stream is position 0; holds,
    pauses and losses keep their length), so ``position / 8`` is ms.
    Calls come in stream order from the reactor thread.
    """

    def pcm(stream, position, samples):
        """*samples*: int16 numpy array that starts at *position*."""

    def event(stream, kind, position, detail):
        """kind: "dtmf" (detail: digit and duration in samples), "hold",
        "resume", "ssrc" (a new SSRC took over), or "end"."""
