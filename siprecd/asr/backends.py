"""Finding a speech recogniser backend by name: Python entry points.

The same mechanism as the storage backends (``siprecd.storage.backends``):
an ASR backend is an entry point in the group ``siprecd.asr`` whose name is
what ``asr.backend`` says and whose object is a callable
``factory(config, reactor)`` returning an IASRBackend that has not been
started. The built-in ones, in siprecd's setup.cfg::

    [options.entry_points]
    siprecd.asr =
        vosk = siprecd.asr.vosk:VoskBackend.from_config
        remote = siprecd.asr.remote:RemoteBackend.from_config

A third-party package declares its own the same way (see
``contrib/example-asr-backend``) and is found once it is installed in the
same environment as siprecd. What the factory returns is checked with
``zope.interface.verify.verifyObject(IASRBackend, ...)``.
"""

from importlib import metadata

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from siprecd.interfaces import IASRBackend
from siprecd.structure import ConfigError

__all__ = ["GROUP", "available", "check_name", "create_backend"]

GROUP = "siprecd.asr"
_KEY = "asr.backend"


def _entry_points():
    found = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def available():
    """Names of the installed ASR backends, sorted."""
    return sorted(_entry_points())


def check_name(config):
    """ConfigError (key ``asr.backend``) unless the name is installed."""
    name = config.asr.backend
    names = available()
    if name not in names:
        listed = ", ".join(names) or "none (is siprecd installed?)"
        raise ConfigError(f"unknown ASR backend {name!r}; available: {listed}", _KEY)


def create_backend(config, reactor):
    """The IASRBackend that ``config.asr.backend`` names, not yet started.

    Raises ConfigError (key ``asr.backend``) for an unknown name, a backend
    that cannot be loaded, or one that does not implement IASRBackend; the
    factory itself may raise ConfigError for its own keys.
    """
    check_name(config)
    name = config.asr.backend
    try:
        factory = _entry_points()[name].load()
    except Exception as e:
        raise ConfigError(f"cannot load ASR backend {name!r}: {e}", _KEY) from None
    backend = factory(config, reactor)
    try:
        verifyObject(IASRBackend, backend)
    except Invalid as e:
        problem = " ".join(str(e).split())
        raise ConfigError(
            f"ASR backend {name!r} does not implement IASRBackend: {problem}", _KEY
        ) from None
    return backend
