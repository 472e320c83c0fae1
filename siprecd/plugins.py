"""siprecd's one plug-in mechanism: Python entry points, by kind.

A plug-in kind (storage, ASR) is an entry-point group; a plug-in is an
entry point in it whose name is what the config key says and whose object
is a callable ``factory(config, reactor)`` returning a provider of the
kind's interface, checked with ``verifyObject``. Third-party packages
declare their own entry points the same way and are found once installed
in siprecd's environment.
"""

from importlib import metadata

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from siprecd.extras import extra_for_module, install_hint
from siprecd.structure import ConfigError

__all__ = ["PluginKind"]


@attrs.frozen
class PluginKind:
    group: str          # entry-point group, e.g. "siprecd.storage"
    key: str            # config key naming the plug-in, e.g. "storage.backend"
    what: str           # words for messages, e.g. "storage backend"
    interface: object   # the zope.interface it must provide

    def _entry_points(self):
        found = {}
        for ep in metadata.entry_points(group=self.group):
            found.setdefault(ep.name, ep)
        return found

    def available(self):
        """Names of the installed plug-ins of this kind, sorted."""
        return sorted(self._entry_points())

    def check_name(self, name):
        """ConfigError (at ``key``) unless *name* is installed."""
        names = self.available()
        if name not in names:
            listed = ", ".join(names) or "none (is siprecd installed?)"
            raise ConfigError(f"unknown {self.what} {name!r}; available: {listed}", self.key)

    def load(self, name):
        """The factory of plug-in *name*; ConfigError (at ``key``) for an
        unknown name or one that cannot be loaded, naming the packaging
        extra to install when that is what is missing."""
        self.check_name(name)
        try:
            return self._entry_points()[name].load()
        except ImportError as e:
            extra = extra_for_module(e.name)
            if extra is not None:
                raise ConfigError(
                    f"{self.what} {name!r} needs the {e.name} package, which is not "
                    f"installed; install it with: {install_hint(extra)}", self.key) from None
            raise ConfigError(f"cannot load {self.what} {name!r}: {e}", self.key) from None
        except Exception as e:
            raise ConfigError(f"cannot load {self.what} {name!r}: {e}", self.key) from None

    def create(self, name, config, reactor):
        """The provider *name*'s factory makes, checked against the interface.

        Raises ConfigError (at ``key``) for an unknown name, a plug-in that
        cannot be loaded, or one that does not provide the interface; the
        factory itself may raise ConfigError for its own keys.
        """
        factory = self.load(name)
        provider = factory(config, reactor)
        try:
            verifyObject(self.interface, provider)
        except Invalid as e:
            problem = " ".join(str(e).split())
            raise ConfigError(
                f"{self.what} {name!r} does not implement {self.interface.__name__}: {problem}",
                self.key,
            ) from None
        return provider
