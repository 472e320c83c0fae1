"""The process's budget of file descriptors.

Every SIP stream connection, every media stream (two UDP sockets), every
database connection and every API client holds a descriptor, and the
process may hold only ``RLIMIT_NOFILE`` of them. At start the soft limit
is raised to the hard one where the system allows (:func:`raise_file_limit`),
and the SIP connection cap is kept far enough below it
(:func:`connection_cap`) that a flood of connections cannot take the
descriptors new calls need for their media.

What cannot be prevented is answered: :func:`is_exhaustion` tells the
errors that mean "out of descriptors or buffers" (EMFILE, ENFILE,
ENOBUFS, ENOMEM) from others, so that they become a 503 with
Retry-After, never a 500.
"""

import errno

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None

__all__ = ["raise_file_limit", "file_limit", "connection_cap", "is_exhaustion",
           "RESERVED_DESCRIPTORS", "EXHAUSTION_ERRNOS"]

# Descriptors kept for everything that is not a SIP connection or a media
# socket: listeners, database connections, log and state files, API
# clients, webhook deliveries, the ASR model's files.
RESERVED_DESCRIPTORS = 256
# The smallest connection cap there is, however tight the budget.
MIN_CONNECTIONS = 64
# A hard limit of "unlimited" is never what the kernel takes (nr_open).
_CEILING = 1 << 20

EXHAUSTION_ERRNOS = frozenset(
    e for e in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) if e is not None)


def file_limit():
    """(soft, hard) RLIMIT_NOFILE of this process; (None, None) where unknown."""
    if resource is None:
        return None, None
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_file_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one where allowed.

    Returns (soft before, soft now, hard); never raises."""
    if resource is None:
        return None, None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        for target in (wanted, _CEILING, 65536):
            if target <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, now, hard


def connection_cap(configured, soft_limit, max_streams):
    """The SIP connection cap: *configured* (``sip.connections.max``, None
    for "derive it") but never above what the file limit leaves once
    every media stream (two sockets each) and the reserve are counted.

    Returns (cap, budget): *budget* is what the file limit leaves, None
    when the limit is unknown or unlimited."""
    if soft_limit is None or (resource is not None and soft_limit == resource.RLIM_INFINITY):
        return (configured or 10_000), None
    budget = max(MIN_CONNECTIONS, soft_limit - 2 * max_streams - RESERVED_DESCRIPTORS)
    return (budget if configured is None else min(configured, budget)), budget


def is_exhaustion(error):
    """True when *error* (an exception, possibly wrapping a socket error
    the way Twisted's CannotListenError does) means the process or the
    system ran out of descriptors or buffers."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OSError) and error.errno in EXHAUSTION_ERRNOS:
            return True
        inner = getattr(error, "socketError", None)
        error = inner if inner is not None else (error.__cause__ or error.__context__)
        seen += 1
    return False
