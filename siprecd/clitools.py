"""What the ``siprecd`` subcommands that touch the database share.

:func:`with_storage` loads the configuration, opens the configured storage
backend (migrating it like the daemon would), runs one async job with it,
closes it and turns the outcome into an exit status: 0 for success, 78
(EX_CONFIG) for a configuration error, 1 for a storage error or a
:class:`CommandError`, each told in one line on standard error.
"""

import sys

from siprecd import config as configmod

__all__ = ["CommandError", "with_storage", "fail"]

EXIT_OK, EXIT_FAILURE = 0, 1
EXIT_CONFIG = configmod.EXIT_CONFIG


class CommandError(Exception):
    """A command cannot do what it was asked; the message says why."""


def fail(message, status=EXIT_FAILURE):
    print(f"siprecd: {message}", file=sys.stderr)
    return status


def load_config(path):
    """The checked Config, or raises ConfigError."""
    from siprecd.checks import check_files, prepare_state_dir

    config = configmod.load(path)
    check_files(config)
    prepare_state_dir(config)
    return config


def with_storage(config_path, job):
    """Run ``await job(reactor, config, storage)`` with the configured
    storage open; returns the exit status (``job``'s own int result, or 0)."""
    from twisted.internet import defer, task

    from siprecd.interfaces import StorageError
    from siprecd.storage.backends import create_storage

    try:
        config = load_config(config_path)
    except configmod.ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    outcome = {}

    async def main(reactor):
        try:
            storage = create_storage(config, reactor)
        except configmod.ConfigError as e:
            outcome["status"] = fail(str(e), EXIT_CONFIG)
            return
        try:
            await storage.open()
        except StorageError as e:
            outcome["status"] = fail(str(e))
            return
        try:
            result = await defer.ensureDeferred(job(reactor, config, storage))
            outcome["status"] = result if isinstance(result, int) else EXIT_OK
        except (CommandError, StorageError) as e:
            outcome["status"] = fail(str(e))
        except configmod.ConfigError as e:
            outcome["status"] = fail(str(e), EXIT_CONFIG)
        finally:
            await storage.close()

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else EXIT_FAILURE
    return outcome.get("status", EXIT_FAILURE)
