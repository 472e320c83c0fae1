"""Checks of a loaded configuration that need the installation or the
filesystem, beyond the schema of :mod:`siprecd.config`.

:func:`check_files` is what the daemon (``siprecd.tap``) and every
subcommand that opens storage (``siprecd.clitools``) run before they
start: plug-ins exist and load (with the packaging extras they need), TLS
material and webhook CA bundles load and keys match their certificates,
the encryption keys are usable. It raises the first
:class:`~siprecd.config.ConfigError`, naming the key path.

:func:`find_problems` is ``siprecd check-config``: the same checks, each
on its own so that every mistake is told (one line each), and what only
matters once the node runs, checked without starting it or changing
anything on disk: the state directory can be written (or made), each
Vosk model folder is there and complete (or will be fetched), G.729 can
be offered when ``media.codecs`` lists it. Errors stop a start or make
the node useless; warnings and notes do not (the daemon copes, and says
so when it starts).
"""

import os
import pwd
from pathlib import Path

import attrs

from siprecd import config as configmod
from siprecd import extras, tls
from siprecd.asr.backends import check_name as check_asr
from siprecd.crypto import keyring_for
from siprecd.storage.backends import check_name as check_storage
from siprecd.webhooks import check_targets

__all__ = ["check_files", "prepare_state_dir", "find_problems", "Problem"]

ERROR, WARNING, NOTE = "error", "warning", "note"


@attrs.frozen
class Problem:
    key: str
    message: str
    severity: str = ERROR

    def __str__(self):
        return f"{self.key}: {self.message}" if self.key else self.message


def _file_checks(config):
    """Each check of check_files, as a zero-argument callable."""
    yield lambda: check_storage(config)
    yield lambda: check_asr(config)
    for name in config.webhooks.targets:
        yield lambda name=name: check_targets(config, only=name)
    yield lambda: keyring_for(config)
    if config.api.enabled and config.api.certificate is not None:
        yield lambda: tls.server_options(config.api.certificate, config.api.private_key,
                                         config.api.min_tls_version, where="api")
    if config.sip.tls.enabled:
        yield lambda: tls.listener_options(config.sip.tls, where="sip.tls")
    if config.metrics.enabled:
        yield lambda: extras.require("metrics", "metrics.enabled")
        if config.metrics.certificate is not None:
            yield lambda: tls.server_options(
                config.metrics.certificate, config.metrics.private_key,
                config.metrics.min_tls_version, where="metrics")


def check_files(config):
    """Every check that must pass before the node starts; raises the
    first ConfigError. Changes nothing on disk."""
    for check in _file_checks(config):
        check()


def prepare_state_dir(config):
    """Make ``state_dir`` (private to siprecd) when it does not exist."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise configmod.ConfigError(
            f"cannot create {config.state_dir}: {e.strerror or e}", "state_dir"
        ) from None


def find_problems(config, g729_available=None):
    """Every problem check-config finds (a list of :class:`Problem`),
    without starting anything or changing anything on disk."""
    problems = []
    for check in _file_checks(config):
        try:
            check()
        except configmod.ConfigError as e:
            problems.append(Problem(e.key_path, e.message))
    problems += _state_dir(config)
    if config.asr.backend == "vosk":
        problems += _models(config)
    problems += _codecs(config, g729_available)
    return problems


def _user():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _writable(path):
    return os.access(path, os.W_OK | os.X_OK)


def _existing_ancestor(path):
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path("/")


def _folder(path, key, purpose):
    """A folder siprecd writes in: there and writable, or creatable."""
    if path.exists():
        if not path.is_dir():
            return [Problem(key, f"{path} is not a folder")]
        if not _writable(path):
            return [Problem(key, f"{path} is not writable by this user ({_user()}); "
                                 f"{purpose}")]
        return []
    parent = _existing_ancestor(path)
    if not parent.is_dir() or not _writable(parent):
        return [Problem(key, f"{path} does not exist and cannot be created: {parent} is not "
                             f"writable by this user ({_user()}); {purpose}")]
    return [Problem(key, f"{path} does not exist yet; siprecd will create it (mode 0700) "
                         f"at start", NOTE)]


def _state_dir(config):
    return _folder(config.state_dir, "state_dir",
                   "siprecd keeps its database, certificates and exports there")


def _models(config):
    from siprecd.asr import models as modelfiles
    from siprecd.asr.common import languages_of
    from siprecd.asr.vosk import VoskBackend

    try:
        languages_of(config.asr.models)
    except configmod.ConfigError as e:
        return [Problem(e.key_path, e.message)]
    backend = VoskBackend.from_config(config, reactor=None)
    found = []
    fetching = False
    for written, value in config.asr.models.items():
        key = f"asr.models.{written}"
        path = backend.model_path(written)
        if path.is_dir():
            missing = modelfiles.missing_files(path)
            if missing:
                found.append(Problem(key, f"{path} is not a complete Vosk model (it has no "
                                          f"{', '.join(missing)}); unpack the whole model "
                                          f"there (models: {modelfiles.MODEL_LIST_PAGE})"))
        elif config.asr.download and backend.can_fetch(written):
            fetching = True
            found.append(Problem(key, (
                f"no model at {path} yet; siprecd fetches {value} from "
                f"{modelfiles.model_zip_url(value, config.asr.download_url)} at first start "
                f"(asr.download), or place the unpacked model folder there"), NOTE))
        else:
            found.append(Problem(key, backend.missing_message(written)))
    models_dir = config.in_state_dir(config.asr.models_dir)
    if fetching and not models_dir.is_relative_to(config.state_dir):
        found += [p for p in _folder(models_dir, "asr.models_dir",
                                     "models are fetched into it") if p.severity == ERROR]
    return found


def _codecs(config, g729_available):
    if "G729" not in config.media.codecs:
        return []
    from siprecd.media import codecs

    available = codecs.g729_available() if g729_available is None else g729_available
    if available:
        return []
    return [Problem("media.codecs", f"G729 is listed but cannot be offered: "
                                    f"{codecs.G729_UNAVAILABLE_REASON}", WARNING)]
