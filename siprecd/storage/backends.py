"""Finding a storage backend by name: Python entry points.

This is siprecd's one plug-in mechanism (the ASR backends use the group
``siprecd.asr`` the same way). A backend is an entry point in the group
``siprecd.storage`` whose name is what ``storage.backend`` says and whose
object is a callable ``factory(config, reactor)`` returning an unopened
IStorage provider. The built-in ones, in siprecd's setup.cfg::

    [options.entry_points]
    siprecd.storage =
        sqlite = siprecd.storage.sqlite:SqliteStorage.from_config
        postgresql = siprecd.storage.postgresql:PostgresStorage.from_config

A third-party package declares its own the same way, and is found once it
is installed in the same environment as siprecd. What the factory returns
is checked with ``zope.interface.verify.verifyObject(IStorage, ...)``.
"""

from importlib import metadata

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from siprecd.interfaces import IStorage
from siprecd.structure import ConfigError

__all__ = ["GROUP", "available", "create_storage"]

GROUP = "siprecd.storage"
_KEY = "storage.backend"


def _entry_points():
    found = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def available():
    """Names of the installed storage backends, sorted."""
    return sorted(_entry_points())


def check_name(config):
    """ConfigError (key ``storage.backend``) unless the name is installed."""
    name = config.storage.backend
    names = available()
    if name not in names:
        listed = ", ".join(names) or "none (is siprecd installed?)"
        raise ConfigError(f"unknown storage backend {name!r}; available: {listed}", _KEY)


def create_storage(config, reactor):
    """The IStorage that ``config.storage.backend`` names, not yet opened.

    Raises ConfigError (key ``storage.backend``) for an unknown name, a
    backend that cannot be loaded, or one that does not implement IStorage.
    """
    check_name(config)
    name = config.storage.backend
    entry_points = _entry_points()
    try:
        factory = entry_points[name].load()
    except Exception as e:
        raise ConfigError(f"cannot load storage backend {name!r}: {e}", _KEY) from None
    storage = factory(config, reactor)
    try:
        verifyObject(IStorage, storage)
    except Invalid as e:
        problem = " ".join(str(e).split())
        raise ConfigError(
            f"storage backend {name!r} does not implement IStorage: {problem}", _KEY
        ) from None
    return storage
