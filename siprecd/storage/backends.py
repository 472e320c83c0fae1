"""Finding a storage backend by name: Python entry points.

siprecd's one plug-in mechanism (``siprecd.plugins``; the ASR backends
use the group ``siprecd.asr`` the same way). A backend is an entry point in the group
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

from siprecd.interfaces import IStorage
from siprecd.plugins import PluginKind

__all__ = ["GROUP", "available", "check_name", "create_storage"]

GROUP = "siprecd.storage"
KIND = PluginKind(GROUP, "storage.backend", "storage backend", IStorage)


def available():
    """Names of the installed storage backends, sorted."""
    return KIND.available()


def check_name(config):
    """ConfigError (key ``storage.backend``) unless the name is installed and loads
    (its optional packages are there)."""
    KIND.load(config.storage.backend)


def create_storage(config, reactor):
    """The IStorage that ``config.storage.backend`` names, not yet opened."""
    return KIND.create(config.storage.backend, config, reactor)
