"""Finding a speech recogniser backend by name: Python entry points.

siprecd's one plug-in mechanism (``siprecd.plugins``), as for storage:
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

from siprecd.interfaces import IASRBackend
from siprecd.plugins import PluginKind

__all__ = ["GROUP", "available", "check_name", "create_backend"]

GROUP = "siprecd.asr"
KIND = PluginKind(GROUP, "asr.backend", "ASR backend", IASRBackend)


def available():
    """Names of the installed ASR backends, sorted."""
    return KIND.available()


def check_name(config):
    """ConfigError (key ``asr.backend``) unless the name is installed and loads
    (its optional packages are there)."""
    KIND.load(config.asr.backend)


def create_backend(config, reactor):
    """The IASRBackend that ``config.asr.backend`` names, not yet started."""
    return KIND.create(config.asr.backend, config, reactor)
