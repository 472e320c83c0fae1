"""Checks of a loaded configuration that need the installation or the
filesystem, beyond the schema of :mod:`siprecd.config`: plug-in names
exist, TLS material and webhook CA bundles load, the encryption keys are
usable, the state directory can be made.

The daemon (``siprecd.tap``), ``siprecd check-config`` and every
subcommand that opens storage (``siprecd.clitools``) run the same checks,
so a configuration that one accepts the others accept too. Each check
raises :class:`~siprecd.config.ConfigError` naming the key path.
"""

from siprecd import config as configmod
from siprecd import tls
from siprecd.asr.backends import check_name as check_asr
from siprecd.crypto import keyring_for
from siprecd.storage.backends import check_name as check_storage
from siprecd.webhooks import check_targets

__all__ = ["check_files", "prepare_state_dir"]


def check_files(config):
    """Every check that does not change anything on disk."""
    check_storage(config)
    check_asr(config)
    check_targets(config)
    keyring_for(config)
    if config.api.enabled and config.api.certificate is not None:
        tls.server_options(
            config.api.certificate, config.api.private_key, config.api.min_tls_version, where="api"
        )
    if config.sip.tls.enabled:
        tls.listener_options(config.sip.tls, where="sip.tls")
    if config.metrics.enabled and config.metrics.certificate is not None:
        tls.server_options(config.metrics.certificate, config.metrics.private_key,
                           config.metrics.min_tls_version, where="metrics")


def prepare_state_dir(config):
    """Make ``state_dir`` (private to siprecd) when it does not exist."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise configmod.ConfigError(
            f"cannot create {config.state_dir}: {e.strerror or e}", "state_dir"
        ) from None
