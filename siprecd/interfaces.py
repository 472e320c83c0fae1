"""The plug points between siprecd's parts, as zope.interface interfaces.

Implementations are checked with ``zope.interface.verify.verifyObject`` where
they are plugged in, and the test doubles in ``siprecd.testing`` are verified
against the same interfaces.
"""

from zope.interface import Attribute, Interface

__all__ = ["IDrainable"]


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
