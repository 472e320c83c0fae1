"""Waiting in a test for state that no event reports: :func:`until`."""

import time

from twisted.internet import reactor, task

__all__ = ["until"]


async def until(condition, timeout, what="the condition", step=0.05):
    """Wait for *condition()* to hold, looking every *step* seconds on the
    running reactor, at most *timeout* seconds (then AssertionError naming
    *what*)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        await task.deferLater(reactor, step, lambda: None)
